"""The ``aevb`` command: fetch data, train, evaluate, run the demo."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from pathlib import Path

from aevb.devices import check_device_name
from aevb.errors import AevbError, ConfigError, RunInterrupted, RunsFailed
from aevb.inference import rundir
from aevb.inference.diagnostics import RHAT_GOOD
from aevb.inference.posterior import PosteriorConfig
from aevb.registry import import_extensions
from aevb.settings import declared, describe, of
from aevb.spec import (
    DataSpec,
    EvaluationSpec,
    RunSpec,
    SVISpec,
    flat_keys,
    hidden_sizes,
    inference_specs,
)

#: ``aevb evaluate``'s options of a :class:`~aevb.inference.posterior.PosteriorConfig` setting
#: are ``--posterior-`` and its name
POSTERIOR_PREFIX = "posterior_"


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return hidden_sizes(text)
    except AevbError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _device(text: str) -> str:
    try:
        return check_device_name(text)
    except AevbError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_device(parser: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    parser.add_argument(
        "--device",
        type=_device,
        default=default,
        help="cpu (default), cuda, cuda:N or auto (CUDA when available)",
    )


def _add_track(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--track",
        default=None,
        metavar="mlflow[:URI]",
        help="log to MLflow: ./mlflow.db (SQLite), or the URI, .db file or folder given",
    )


def _add_modules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (from the current directory or PYTHONPATH): a module of "
        "your own that registers models, guides, objectives, samplers, estimators or "
        "inference methods; repeatable; recorded in the run",
    )


def import_modules(argv: list[str]) -> None:
    """Import the ``--module`` modules of a command line before its parser is made, so that
    what they register is among the parser's choices and options."""
    pre = argparse.ArgumentParser(add_help=False)
    _add_modules(pre)
    known, _ = pre.parse_known_args(argv)
    import_extensions(known.module)


def _summary(obj) -> str:
    """A registry entry's own description for a help text: its docstring's first clause
    (up to the first period, colon or parenthesis)."""
    doc = " ".join((getattr(obj, "__doc__", None) or "").split())
    return re.split(r"\. |\.$|: | \(", doc)[0]


def build_parser() -> argparse.ArgumentParser:
    """The ``aevb`` command line: subcommands data, train, run, evaluate, compare, demo; every
    name and default an option offers comes from its registry or config class."""
    p = argparse.ArgumentParser(prog="aevb", description=__doc__)
    _add_modules(p)
    sub = p.add_subparsers(dest="command", required=True)
    _data_parser(sub)
    _train_parser(sub)
    _run_parser(sub)
    _evaluate_parser(sub)
    _compare_parser(sub)
    _demo_parser(sub)
    return p


def _data_parser(sub) -> None:
    d = sub.add_parser("data", help="fetch and verify datasets")
    d.add_argument("action", choices=["fetch"])
    d.add_argument("name", nargs="?", default=DataSpec.source)
    d.set_defaults(func=cmd_data)


def _train_parser(sub) -> None:
    """``aevb train``: every option's destination is a key of the RunSpec's flat form
    (:func:`aevb.spec.flat_keys`); the data's, the schedule's and each method's options are
    made from their declarations (:func:`_setting_options`)."""
    from aevb.models import MODELS
    from aevb.models.likelihoods import LIKELIHOODS

    t = sub.add_parser("train", help="train a model")
    t.add_argument(
        "model",
        help=f"a registered model name ({', '.join(MODELS)}) or MODULE:NAME: a model class or "
        "a Pyro function model(x) in your own module, imported from the current directory or "
        "PYTHONPATH",
    )
    _setting_options(t)
    t.add_argument("--preset", default=None, help="named model configuration, e.g. tutorial-cb")
    t.add_argument("--z-dim", type=int, default=None)
    t.add_argument("--hidden", type=_hidden, default=None, help="e.g. 200,200")
    t.add_argument("--likelihood", default=None, help="|".join(LIKELIHOODS))
    _guide_options(t)
    t.add_argument("--out", default=None, help="run directory (default runs/MODEL-OBJECTIVE-...)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    _add_track(t)
    _add_device(t, None)
    t.set_defaults(func=cmd_train)


def _add_setting(
    parser, key: str, f, help_prefix: str = "", recipe: bool = True, text: str | None = None
) -> None:
    """The option ``--KEY`` of the declared setting ``f`` (:mod:`aevb.settings`): its type,
    its choices and a help text with its default (``text`` instead, where a registry says
    more); the option's default is None (not set)."""
    s = of(f)
    kwargs: dict = {"default": None, "dest": key}
    if s.kind in (int, float):
        kwargs["type"] = s.kind
    elif s.kind is not str:
        return  # tables, lists and switches are set in a spec file or grid
    choices = s.choice_list()
    if choices is not None:
        kwargs["choices"] = choices
    text = help_prefix + (text or describe(f, recipe=recipe))
    parser.add_argument("--" + key.replace("_", "-"), help=text.replace("%", "%%"), **kwargs)


def _setting_options(t: argparse.ArgumentParser) -> None:
    """The options of the data, the schedule and every inference method, one per exposed
    setting, made from the declarations (a method's in a group of its own; a setting more
    than one method has, in the first one's group, its help naming them all)."""
    from aevb.inference.loop import LoopConfig
    from aevb.inference.method import METHODS

    data = t.add_argument_group("data")
    for f in declared(DataSpec).values():
        if of(f).exposed:
            _add_setting(data, "data" if f.name == "source" else f.name, f, recipe=False)
    schedule = t.add_argument_group("schedule (every method)")
    for f in declared(LoopConfig).values():
        if of(f).exposed:
            _add_setting(schedule, f.name, f)
    default = SVISpec.method
    names = sorted(METHODS, key=lambda name: name != default)  # the default first
    summary = ", ".join(f"{name} ({METHODS[name].title})" for name in names)
    t.add_argument(
        "--inference", default=default, choices=names, help=f"{summary}; default {default}"
    )
    specs = inference_specs()
    seen: set[str] = set()
    for name in names:
        method = METHODS[name]
        group = t.add_argument_group(f"{method.title} (--inference {name})")
        config = declared(method.config)
        for key in (f.name for f in fields(specs[name])):
            if key in seen:
                continue
            seen.add(key)
            owners = [m for m, spec in specs.items() if key in {g.name for g in fields(spec)}]
            _add_setting(group, key, config[key], f"{', '.join(owners)}: ")


def _guide_options(t: argparse.ArgumentParser) -> None:
    from aevb.guides import GUIDES
    from aevb.guides.iaf import IAFEncoderConfig

    t.add_argument(
        "--guide",
        default=None,
        help=f"the approximate posterior's family: {', '.join(sorted(GUIDES))} (default: the "
        "model's), or MODULE:NAME: a guide class or a Pyro function guide(x) of your own "
        "(needed for a plain model function)",
    )
    t.add_argument(
        "--flow-steps",
        type=int,
        default=None,
        help="iaf guide: inverse autoregressive steps after the Gaussian (default "
        f"{IAFEncoderConfig.flow_steps})",
    )


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help="train and evaluate the run a RunSpec file describes")
    r.add_argument("spec", help="a .toml or .json RunSpec (docs: Runs as values)")
    r.add_argument("--out", default=None, help="run directory (default runs/MODEL-...)")
    r.add_argument("--quiet", action="store_true")
    _add_device(r, None)
    r.set_defaults(func=cmd_run)


def _evaluate_parser(sub) -> None:
    from aevb.inference.estimators import ESTIMATORS

    e = sub.add_parser("evaluate", help="estimate test log-likelihood of a run")
    e.add_argument("run_dir")
    estimators = ", ".join(f"{name} ({_summary(est)})" for name, est in ESTIMATORS.items())
    said = {
        "num_samples": "; ".join(
            f"{name}: {estimator.samples_help} (default {estimator.default_samples})"
            for name, estimator in ESTIMATORS.items()
        ),
        "estimator": f"{estimators}; default {EvaluationSpec.estimator}",
    }
    for f in declared(EvaluationSpec).values():
        _add_setting(e, f.name, f, recipe=False, text=said.get(f.name))
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument(
        "--posterior",
        action="store_true",
        help=f"instead of an estimate: sample the posterior of the first test points and save "
        f"it in RUN_DIR as {rundir.POSTERIOR} (ArviZ InferenceData; pip install "
        "'aevb[arviz]'), then print its split R-hat and bulk and tail ESS (--seed and "
        "--device apply; the options below say what is sampled)",
    )
    group = e.add_argument_group("--posterior")
    for f in declared(PosteriorConfig).values():
        _add_setting(group, POSTERIOR_PREFIX + f.name, f, recipe=False)
    e.add_argument("--quiet", action="store_true")
    _add_device(e)
    e.set_defaults(func=cmd_evaluate)


def _compare_parser(sub) -> None:
    from aevb.experiments.engines import ENGINES, LocalEngine

    c = sub.add_parser("compare", help="run a grid of experiments from a TOML config")
    c.add_argument("config", help="e.g. scripts/configs/estimators_fa.toml")
    c.add_argument("--out", default=None, help="output folder (default runs/compare-NAME)")
    c.add_argument("--quiet", action="store_true")
    c.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="every cell's epochs (over the config's); runs scored after fewer resume, "
        "train on and are scored again, the earlier scores kept in evaluations/epochN/",
    )
    c.add_argument(
        "--engine",
        default=None,
        choices=list(ENGINES),
        help="where the cells run: "
        + "; ".join(f"{name}: {_summary(engine)}" for name, engine in ENGINES.items())
        + f" (default {LocalEngine.name}); overrides the config's [engine] name",
    )
    c.add_argument(
        "--address",
        default=None,
        help="ray: 'auto' or HOST:PORT joins a running cluster; none starts a local one",
    )
    _add_track(c)
    _add_device(c, None)
    c.set_defaults(func=cmd_compare)


def _demo_parser(sub) -> None:
    m = sub.add_parser("demo", help="VAE on MNIST under trace, meanfield and iwae-5")
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--quiet", action="store_true")
    _add_device(m)
    m.set_defaults(func=cmd_demo)


def train_spec(args) -> RunSpec:
    """The :class:`~aevb.spec.RunSpec` of an ``aevb train`` command line: each option is a
    key of the spec's flat form (:func:`aevb.spec.flat_keys`), and nothing else is done
    here."""
    flat = {key: getattr(args, key, None) for key in flat_keys()}
    try:
        return RunSpec.from_flat(flat)
    except ConfigError as exc:
        raise ConfigError(option_message(str(exc))) from None


def option_message(message: str) -> str:
    """A RunSpec error as the command line's: ``schedule.epochs: ...`` -> ``--epochs: ...``."""
    options = {".".join(path): "--" + key.replace("_", "-") for key, path in flat_keys().items()}
    path, sep, rest = message.partition(": ")
    return f"{options[path]}: {rest}" if sep and path in options else message


def cmd_data(args) -> None:
    """``aevb data fetch [NAME]``: download and checksum-verify a dataset, print its folder."""
    from aevb import data

    print(data.fetch(args.name))


def cmd_train(args) -> dict:
    """``aevb train MODEL ...``: one SVI, MCEM or vi-mcmc run into ``--out``; returns its
    last row."""
    from aevb import runs

    spec = train_spec(args)
    out = Path(args.out) if args.out else runs.default_out(spec)
    args.resolved_out = out
    tracker = None
    if args.track is not None:
        from aevb.experiments.tracking import RunTracker, parse_track

        tracking = parse_track(args.track)
        assert tracking is not None
        tracker = RunTracker(tracking, spec, out.name, out)
    try:
        run = runs.train(
            spec,
            out,
            resume=args.resume,
            progress=False if args.quiet else None,
            verbose=not args.quiet,
            epoch_callback=tracker.epoch if tracker else None,
        )
    except BaseException:
        if tracker is not None:
            tracker.finish(None, {}, "FAILED")
        raise
    if tracker is not None:
        tracker.finish(out, {})
    last = run.history.iloc[-1].to_dict()
    if not args.quiet:
        parts = []
        if "test_elbo" in last:
            parts.append(f"test ELBO {last['test_elbo']:.3f}")
        if "accept_prob" in last:
            parts.append(f"acceptance {last['accept_prob']:.3f}, step size {last['step_size']:.3g}")
        summary = ", ".join(parts)
        print(f"wrote {out}: epoch {int(last['epoch'])}, {summary}")
    return last


def cmd_run(args) -> dict:
    """``aevb run SPEC``: train (or resume) the spec's run, then make each of its
    ``evaluation`` estimates not yet recorded; prints the estimates."""
    from aevb import runs
    from aevb.spec import load_spec

    spec = load_spec(args.spec)
    if args.device is not None:  # the command line's device wins over the file's
        spec = spec.replace(device=args.device)
    out = Path(args.out) if args.out else runs.default_out(spec)
    done = runs.run(spec, out, progress=False if args.quiet else None)
    if not args.quiet:
        print(f"wrote {out}")
        for key, result in done.items():
            print(f"{key:>12}: test log-likelihood {result['test_log_likelihood']:.4f}")
    return done


def cmd_evaluate(args) -> dict:
    """``aevb evaluate RUN``: IS or AIS estimates on the run's test set (DESIGN.md keys);
    with ``--posterior``, posterior draws instead (:func:`cmd_posterior`)."""
    from aevb import runs

    try:
        given = {key: getattr(args, key) for key in declared(EvaluationSpec)}
        evaluation = EvaluationSpec.from_dict(given)
    except ConfigError as exc:
        path, sep, rest = str(exc).partition(": ")
        raise ConfigError(f"--{path.replace('_', '-')}: {rest}" if sep else str(exc)) from None
    if args.posterior:
        return cmd_posterior(args, evaluation.seed)
    result = runs.evaluate(
        args.run_dir,
        evaluation,
        progress=not args.quiet and sys.stderr.isatty(),
        device=args.device,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(headline(result))
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    if result.get("flagged"):
        print(f"aevb: warning: {result['advice']}", file=sys.stderr)
    return result


def cmd_posterior(args, seed: int) -> dict:
    """``aevb evaluate RUN --posterior``: posterior draws of the run's first test points,
    saved as ``posterior.nc`` in RUN (:func:`aevb.runs.posterior`); prints where, and the
    draws' R-hat and ESS (a warning when R-hat is 1.01 or more somewhere)."""
    from aevb import runs

    given = {key: getattr(args, POSTERIOR_PREFIX + key) for key in declared(PosteriorConfig)}
    try:
        config = PosteriorConfig(**{k: v for k, v in given.items() if v is not None})
    except ConfigError as exc:
        path, sep, rest = str(exc).partition(": ")
        option = "--" + (POSTERIOR_PREFIX + path).replace("_", "-")
        raise ConfigError(f"{option}: {rest}" if sep else str(exc)) from None
    result = runs.posterior(args.run_dir, config, seed=seed, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"wrote {result['path']}: {result['points']} test points, {result['chains']} "
            f"chains x {result['draws']} draws ({result['sampler']}, {result['seconds']:.1f} s)"
        )
        print(mixing_line(result))
    if not result["rhat_max"] < RHAT_GOOD:
        print(
            f"aevb: warning: split R-hat is {RHAT_GOOD} or more on "
            f"{result['rhat_share_over_1_01']:.0%} of the coordinates: the chains have not "
            "mixed; sample longer (--posterior-warmup, --posterior-draws)",
            file=sys.stderr,
        )
    return result


def mixing_line(result: dict) -> str:
    """One line of R-hat and ESS (:func:`aevb.inference.diagnostics.summarise`'s keys)."""
    return (
        f"split R-hat max {result['rhat_max']:.3f} ({result['rhat_share_over_1_01']:.0%} of the "
        f"coordinates at or over {RHAT_GOOD}); ESS, the median over test points of the worst "
        f"latent dimension: bulk {result['ess_bulk']:.0f}, tail {result['ess_tail']:.0f}"
    )


def headline(result: dict) -> str:
    """One line of an estimate: its value, its standard errors and, for IS, its k-hat."""
    line = f"{result['estimator']}-{result['num_samples']}: {result['test_log_likelihood']:.4f}"
    if "test_log_likelihood_se" in result:
        line += f" (se {result['test_log_likelihood_se']:.3f} over {result['num_test']} points"
        line += f", Monte Carlo se {result['test_log_likelihood_mcse']:.3g})"
    if result.get("khat_threshold") is not None and "khat_share_over_threshold" in result:
        share, limit = result["khat_share_over_threshold"], result["khat_threshold"]
        line += f"; k-hat > {limit:.2f} on {share:.0%} of the points"
        line += " [FLAGGED]" if result.get("flagged") else ""
    if "bdmc_gap" in result:
        line += (
            f"; BDMC sandwich [{result['bdmc_lower']:.3f}, {result['bdmc_upper']:.3f}], gap "
            f"{result['bdmc_gap']:.3f} nats on {result['bdmc_points']} simulated points"
        )
    return line


def cmd_compare(args) -> None:
    """``aevb compare CONFIG.toml``: a grid of runs into one table and report; exits with
    status 1 (after writing every result) when any run failed."""
    from aevb.experiments.compare import run_grid

    results = run_grid(
        args.config,
        args.out,
        quiet=args.quiet,
        device=args.device,
        engine=args.engine,
        address=args.address,
        track=args.track,
        epochs=args.epochs,
    )
    if not args.quiet:
        print_rankings(results)
    failed = int((results["status"] != "ok").sum())
    if failed:
        where = Path(results.attrs.get("out", ".")) / "results.csv"
        raise RunsFailed(f"{failed} of {len(results)} runs failed; see {where}")


def print_rankings(results) -> None:
    """The grid's cells ranked per estimator, each against the next with a paired standard
    error and whether the difference is resolved (as ``report.md`` shows them)."""
    from aevb.experiments.report import blank_missing, rankings

    for estimator, table in rankings(results).items():
        if len(table) > 1:
            print(f"\nranked by {'the test ELBO' if estimator == 'elbo' else estimator}:")
            print(blank_missing(table).to_string())


def cmd_demo(args) -> None:
    """``aevb demo``: the demo grid of ``make demo`` (fetch MNIST, train, score, report)."""
    from aevb.experiments.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, quiet=args.quiet, device=args.device)


def resume_hint(args, argv: list[str]) -> str:
    """The command that continues an interrupted ``aevb`` command."""
    if args.command == "train":
        extra = [] if "--resume" in argv else ["--resume"]
        if args.out is None:
            extra += ["--out", str(getattr(args, "resolved_out", "DIR"))]
        return " ".join(["aevb", *argv, *extra])
    return " ".join(["aevb", *argv])  # run and compare resume what they find on disk


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aevb`` command; returns the exit status: 0, 2 on a clear user
    error (the message, no traceback), 130 / 143 when SIGINT / SIGTERM stopped a run after
    it wrote a checkpoint. A genuine bug still shows its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import_modules(argv)
    except AevbError as exc:
        print(f"aevb: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RunInterrupted as exc:
        print(f"aevb: {exc}\naevb: to continue: {resume_hint(args, argv)}", file=sys.stderr)
        return exc.exit_code
    except AevbError as exc:
        print(f"aevb: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside training (fetching, evaluating): nothing to keep
        print("aevb: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
