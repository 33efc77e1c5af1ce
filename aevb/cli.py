"""The ``aevb`` command: fetch data, train, evaluate, run the demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aevb.errors import AevbError, ConfigError


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The ``aevb`` command line: subcommands data, train, evaluate, compare, demo."""
    from aevb.inference.samplers import SAMPLERS

    p = argparse.ArgumentParser(prog="aevb", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="fetch and verify datasets")
    d.add_argument("action", choices=["fetch"])
    d.add_argument("name", nargs="?", default="mnist")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train a model")
    t.add_argument("model", help="registered model name (vae, fa)")
    t.add_argument(
        "--objective",
        default=None,
        help="trace|meanfield|iwae|renyi|enum|enum-meanfield (default: the model's)",
    )
    t.add_argument(
        "--particles",
        type=int,
        default=None,
        help="k particles (default: 5 for iwae, renyi; else 1)",
    )
    t.add_argument("--alpha", type=float, default=None, help="Renyi alpha (renyi objective)")
    t.add_argument("--inference", default="svi", choices=["svi", "mcem"])
    t.add_argument(
        "--sampler",
        default=None,
        choices=sorted(SAMPLERS),
        help="MCEM's E-step sampler (default batched-hmc)",
    )
    t.add_argument(
        "--proposal-epochs",
        type=int,
        default=None,
        help="MCEM: epochs fitting q(z|x) with the model frozen, for evaluation (default 10)",
    )
    t.add_argument("--data", default="mnist", help="dataset name, IDX folder or .npz/.npy")
    t.add_argument("--binarize", default=None, help="dynamic|threshold|continuous|none")
    t.add_argument("--subset", type=int, default=None, help="train on the first N datapoints")
    t.add_argument("--test-subset", type=int, default=None, help="score the first N test points")
    t.add_argument("--epochs", type=int, default=None, help="default: the model's, else 10")
    t.add_argument(
        "--max-seconds", type=float, default=None, help="stop after this much training time"
    )
    t.add_argument(
        "--batch-size", type=int, default=None, help="default: the model's (VAE: 20, Burda et al.)"
    )
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    t.add_argument(
        "--lr-schedule",
        default=None,
        choices=["constant", "burda"],
        help="SVI: burda = 3^i passes at lr * 10^(-i/7), i = 0..7 (Burda et al. 2015)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--preset", default=None, help="named model configuration, e.g. tutorial-cb")
    t.add_argument("--z-dim", type=int, default=None)
    t.add_argument("--hidden", type=_hidden, default=None, help="e.g. 200,200")
    t.add_argument("--likelihood", default=None, help="bernoulli|continuous-bernoulli")
    t.add_argument("--guide", default=None, help="gaussian|linear-gaussian (default: the model's)")
    t.add_argument("--out", default=None, help="run directory (default runs/MODEL-OBJECTIVE-...)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)
    p.train_parser = t  # type: ignore[attr-defined]  # for train_options()

    e = sub.add_parser("evaluate", help="estimate test log-likelihood of a run")
    e.add_argument("run_dir")
    e.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="IS: k proposals per datapoint (default 1000); AIS: chains per datapoint (16)",
    )
    e.add_argument("--estimator", default="is", choices=["is", "ais"])
    e.add_argument("--ais-temperatures", type=int, default=500, help="AIS: annealing steps")
    e.add_argument("--subset", type=int, default=None, help="first N test points only")
    e.add_argument("--batch-size", type=int, default=100)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="run a grid of experiments from a TOML config")
    c.add_argument("config", help="e.g. scripts/configs/estimators_fa.toml")
    c.add_argument("--out", default=None, help="output folder (default runs/compare-NAME)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

    m = sub.add_parser("demo", help="VAE on MNIST under trace, meanfield and iwae-5")
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_demo)
    return p


def train_options() -> dict[str, argparse.Action]:
    """``aevb train``'s options by destination name (``particles``, ``lr_schedule``, ...),
    for checking a grid's cell keys (:func:`aevb.experiments.compare.load_config`)."""
    train = build_parser().train_parser  # type: ignore[attr-defined]
    return {a.dest: a for a in train._actions if a.option_strings}


def cmd_data(args) -> None:
    """``aevb data fetch [NAME]``: download and checksum-verify a dataset, print its folder."""
    from aevb import data

    print(data.fetch(args.name))


def _model_and_data(args):
    """Data, model and guide for ``aevb train``: a preset, then field overrides; the data
    transform follows the likelihood unless --binarize is given (continuous Bernoulli:
    (x*255 + U)/256). The global seed is set before the weights are drawn."""
    import pyro

    from aevb import data, guides, models
    from aevb.models import likelihoods

    overrides = {"z_dim": args.z_dim, "hidden": args.hidden, "likelihood": args.likelihood}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    preset = args.preset
    presets = models.PRESETS.get(args.model, {})
    if preset is None and args.likelihood == "continuous-bernoulli" and "tutorial-cb" in presets:
        preset = "tutorial-cb"
    # a model's own default transform (VRNN, GMVAE: x > 0.5, as in the aevb-tutorial)
    binarize = args.binarize or getattr(models.MODELS[args.model], "default_binarize", None)
    likelihood = args.likelihood or getattr(presets.get(preset), "likelihood", None)
    if binarize is None and likelihood is not None and args.data in data.DATASETS:
        binarize = likelihoods.get(likelihood).default_binarize
    train, test = data.load(args.data, binarize)
    train, test = train.subset(args.subset), test.subset(args.test_subset)
    pyro.set_rng_seed(args.seed)
    overrides.update(models.MODELS[args.model].config_from_data(train))
    model = models.build(args.model, preset, **overrides)
    guide = guides.build(args.guide, model) if args.guide else guides.default_for(model)
    return train, test, model, guide


def cmd_train(args) -> dict:
    """``aevb train MODEL ...``: one SVI or MCEM run into ``--out``; returns its last row."""
    from aevb import inference, models, plots

    if args.model not in models.MODELS:
        raise ConfigError(f"unknown model {args.model!r}; expected one of {sorted(models.MODELS)}")
    if args.inference == "mcem":
        return _train_mcem(args)
    if args.sampler is not None:
        raise ConfigError("--sampler applies to --inference mcem only")
    objective = args.objective or getattr(models.MODELS[args.model], "default_objective", "trace")
    if objective not in inference.OBJECTIVES:
        raise ConfigError(
            f"unknown objective {objective!r}; expected one of {sorted(inference.OBJECTIVES)}"
        )
    k = args.particles or inference.OBJECTIVES[objective].default_particles
    train, test, model, guide = _model_and_data(args)
    out = Path(args.out or f"runs/{args.model}-{objective}{k}-seed{args.seed}")
    settings = _settings(args, model)
    settings.update(num_particles=k, alpha=args.alpha)
    if args.lr_schedule:
        settings["lr_schedule"] = args.lr_schedule
    run = inference.fit(
        model,
        guide,
        train,
        objective,
        test=test,
        out=out,
        resume=args.resume,
        progress=False if args.quiet else None,
        verbose=not args.quiet,
        meta={"data_spec": _data_spec(args, train)},
        **settings,
    )
    plots.run_figures(model, guide, test, run.history, out, objective)
    last = run.history.iloc[-1].to_dict()
    if not args.quiet:
        elbo = last.get("test_elbo", float("nan"))
        print(f"wrote {out}: epoch {int(last['epoch'])}, test ELBO {elbo:.3f}")
    return last


def _settings(args, model, recipe: str = "fit_defaults") -> dict:
    """The model's recommended recipe (e.g. FA: the tutorial's batch 32, lr 1e-2), then flags."""
    settings = dict(getattr(model, recipe, None) or getattr(model, "fit_defaults", {}))
    settings["seed"] = args.seed
    if args.max_seconds:
        settings["max_seconds"] = args.max_seconds
    if args.epochs:
        settings["epochs"] = args.epochs
    if args.batch_size:
        settings["batch_size"] = args.batch_size
    if args.lr:
        settings["lr"] = args.lr
    return settings


def _data_spec(args, train) -> dict:
    return {
        "source": args.data,
        "binarize": train.binarize,
        "subset": args.subset,
        "test_subset": args.test_subset,
    }


def _train_mcem(args) -> dict:
    from aevb import inference, plots

    if args.objective or args.particles or args.alpha is not None or args.lr_schedule:
        raise ConfigError(
            "--objective/--particles/--alpha/--lr-schedule are SVI settings; MCEM has none"
        )
    sampler = args.sampler or "batched-hmc"
    train, test, model, guide = _model_and_data(args)
    out = Path(args.out or f"runs/{args.model}-mcem-{sampler}-seed{args.seed}")
    settings = _settings(args, model, "mcem_defaults")
    if args.proposal_epochs is not None:
        settings["proposal_epochs"] = args.proposal_epochs
    run = inference.mcem_fit(
        model,
        train,
        guide=guide,
        test=test,
        out=out,
        resume=args.resume,
        progress=False if args.quiet else None,
        verbose=not args.quiet,
        meta={"data_spec": _data_spec(args, train)},
        sampler=sampler,
        **settings,
    )
    plots.run_figures(
        model, run.guide, test, run.history, out, f"mcem-{sampler}", "log p(x, z) at draws"
    )
    last = run.history.iloc[-1].to_dict()
    if not args.quiet:
        print(
            f"wrote {out}: epoch {int(last['epoch'])}, acceptance {last['accept_prob']:.3f}, "
            f"step size {last['step_size']:.3g}"
        )
    return last


def cmd_evaluate(args) -> dict:
    """``aevb evaluate RUN``: IS or AIS estimates on the run's test set (DESIGN.md keys)."""
    from aevb.inference import rundir
    from aevb.inference.rundir import evaluate_run

    k = args.num_samples or (16 if args.estimator == "ais" else 1000)
    result = evaluate_run(
        args.run_dir,
        k,
        args.estimator,
        ais_temperatures=args.ais_temperatures,
        subset=args.subset,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    rundir.record_evaluation(args.run_dir, f"{args.estimator}-{k}", result)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return result


def cmd_compare(args) -> None:
    """``aevb compare CONFIG.toml``: a grid of runs into one table and report."""
    from aevb.experiments.compare import run_grid

    results = run_grid(args.config, args.out, quiet=args.quiet)
    failed = int((results["status"] != "ok").sum())
    if failed:
        print(f"{failed} of {len(results)} runs failed; see results.csv", file=sys.stderr)


def cmd_demo(args) -> None:
    """``aevb demo``: the README's demo grid (fetch MNIST, train, score, report)."""
    from aevb.experiments.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aevb`` command; returns the exit status (2 on a clear user error)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AevbError as exc:
        print(f"aevb: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
