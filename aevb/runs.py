"""Run a :class:`~aevb.spec.RunSpec`: resolve it, train it, evaluate it.

This is the one place that turns a spec into a run; the command line (``aevb train``), grids
(``aevb compare``), the demo and scripts all call it, so they train alike::

    resolve(spec)          -> Resolved: data, model and guide, built from the registries
    train(spec, out)       -> Run: SVI, Monte Carlo EM or MCMC-refined VI into the run
                              directory ``out``
    evaluate(out, ev)      -> dict: one estimate (IS or AIS) of the test log-likelihood,
                              recorded in ``out/evaluation.json``
    run(spec, out)         -> dict: train (or resume) until done, then every estimate of
                              ``spec.evaluation`` not yet recorded
    posterior(out, cfg)    -> dict: posterior draws of the first test points, saved as
                              ``out/posterior.nc`` (ArviZ InferenceData), with their R-hat
                              and ESS

A model's recipe (FA's batch 32, lr 1e-2, 35 epochs; the GMVAE's ``enum``) is applied once,
by :func:`aevb.inference.fit` and :func:`aevb.inference.mcem_fit`, to every setting the spec
leaves at None: the library, the command line and grids get the same defaults.

Example:
    >>> from aevb import runs
    >>> from aevb.spec import RunSpec
    >>> spec = RunSpec.from_flat({"model": "fa", "data": "fa-synthetic", "subset": 64,
    ...                           "test_subset": 32, "epochs": 2})
    >>> run = runs.train(spec, progress=False)
    >>> run.config["fit"]["batch_size"], run.config["fit"]["lr"]   # FA's recipe
    (32, 0.01)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro

from aevb import data, guides, models, plots
from aevb.data.dataset import Dataset
from aevb.errors import ConfigError, RunDirError
from aevb.inference import rundir
from aevb.inference.method import METHODS, Method, run_method
from aevb.inference.posterior import PosteriorConfig, save_posterior
from aevb.inference.record import Run
from aevb.inference.saved import evaluate_run
from aevb.inference.stopping import scored_too_early
from aevb.models import likelihoods
from aevb.models.base import hooks, recipe
from aevb.registry import (
    EXTENSIONS,
    import_reference,
    is_reference,
    lookup,
    program_source,
    recorded_extensions,
    reimport,
)
from aevb.spec import EvaluationSpec, RunSpec


@dataclass
class Resolved:
    """A spec made concrete: the data, the model and the guide it names."""

    spec: RunSpec
    train: Dataset
    test: Dataset
    model: Any
    guide: Any
    #: the validation split held out of the training set (``data.validation``), or None
    valid: Dataset | None = None


def model_class(spec: RunSpec):
    """The model class the spec names (a clear error if there is none): a registered one,
    or a user's ``MODULE:NAME`` class or plain function (:func:`aevb.models.get`)."""
    return models.get(spec.model.name)


def _preset(spec: RunSpec) -> str | None:
    """The spec's preset; a continuous-Bernoulli VAE gets the aevb-tutorial's preset."""
    m = spec.model
    presets = models.PRESETS.get(m.name, {})
    cb = m.config.get("likelihood") == "continuous-bernoulli"
    if m.preset is None and cb and "tutorial-cb" in presets:
        return "tutorial-cb"
    return m.preset


def _binarize(spec: RunSpec, preset: str | None) -> str | None:
    """The data transform: the spec's; else the model's own (VRNN, GMVAE: threshold); else,
    for a registered dataset, the likelihood's (continuous Bernoulli: (x*255 + U)/256)."""
    if spec.data.binarize is not None:
        return spec.data.binarize
    own = hooks(model_class(spec)).default_binarize
    if own is not None:
        return own
    likelihood = spec.model.config.get("likelihood")
    if likelihood is None and preset is not None:
        preset_config = models.PRESETS.get(spec.model.name, {}).get(preset)
        likelihood = getattr(preset_config, "likelihood", None)
    if likelihood is not None and spec.data.source in data.DATASETS:
        return likelihoods.get(likelihood).default_binarize
    return None


def resolve(spec: RunSpec) -> Resolved:
    """Load the data and build the model and guide a spec names. The global seed is set to
    the spec's before the weights are drawn (training re-draws them from it again)."""
    cls: Any = model_class(spec)
    resolved_config(spec)  # an unknown objective or sampler fails before the data are read
    if not inspect.isclass(cls) and not spec.model.guide:
        raise ConfigError(
            f"model {spec.model.name!r} is a plain function and names no guide: give one "
            "(--guide MODULE:NAME, a guide(x) function or guide class; guide = ... in a grid "
            "or RunSpec). aevb does not guess one: an autoguide would fit one q(z) per "
            "minibatch position, not q(z | x) per datapoint"
        )
    preset = _preset(spec)
    train, test = data.load(spec.data.source, _binarize(spec, preset))
    train, test = train.subset(spec.data.subset), test.subset(spec.data.test_subset)
    train, valid = train.holdout(spec.data.validation)
    if spec.data.labels is not None:
        train = keep_labels(spec, train)
    pyro.set_rng_seed(spec.schedule.seed)
    config = dict(spec.model.config)
    is_class = inspect.isclass(cls)
    if is_class:
        config.update(cls.config_from_data(train))
    model = models.build(spec.model.name, preset, **config)
    overrides = dict(spec.model.guide_config)
    if spec.model.guide:
        guide = guides.build(spec.model.guide, model, **overrides)
    else:
        guide = guides.default_for(model, **overrides)
    return Resolved(spec, train, test, model, guide, valid)


def keep_labels(spec: RunSpec, train: Dataset) -> Dataset:
    """The training set with ``spec.data.labels`` labels kept (balanced over the classes, by
    the run's seed) and the others hidden; only a model that sums out missing labels
    (``marginal_labels``: M2) takes it."""
    if not hooks(model_class(spec)).marginal_labels:
        takers = sorted(n for n, c in models.MODELS.items() if hooks(c).marginal_labels)
        raise ConfigError(
            f"data.labels keeps {spec.data.labels} training labels and hides the rest: only a "
            f"model that sums out a missing label takes it ({', '.join(takers)}), not "
            f"{spec.model.name!r}"
        )
    assert spec.data.labels is not None
    return train.keep_labels(spec.data.labels, seed=spec.schedule.seed)


def method_of(spec: RunSpec) -> Method:
    """The inference method the spec names (:data:`aevb.inference.method.METHODS`)."""
    return lookup(METHODS, spec.inference.method, "inference method")


def fit_settings(spec: RunSpec) -> dict:
    """The keyword settings of the method's fit a spec gives: the schedule's and the
    method's settings that are set (what it leaves at None is left to the model's recipe and
    the config's defaults), and the device. Their names are the config's: one declaration."""
    return {**spec.schedule.given(), **spec.inference.given(), "device": spec.device}


def resolved_config(spec: RunSpec, model=None) -> Any:
    """The config the spec's method trains with, the model's recipe and the defaults
    applied (``model``: the built model, else the model class the spec names)."""
    method = method_of(spec)
    target = model if model is not None else model_class(spec)
    settings = {k: v for k, v in fit_settings(spec).items() if k != "device"}
    return method.configure(target, recipe(target, settings, mcem=method.mcem_recipe))


def default_out(spec: RunSpec) -> Path:
    """``runs/MODEL-NAME-seedS``, NAME the method's :meth:`~aevb.inference.method.Method.
    run_name` (``iwae5``, ``mcem-batched-hmc``, ``vi-mcmc5-trace1``; a user's ``MODULE:NAME``
    model as ``MODULE.NAME``)."""
    name, seed = spec.model.name.replace(":", "."), spec.schedule.seed
    return Path(f"runs/{name}-{method_of(spec).run_name(resolved_config(spec))}-seed{seed}")


def _meta(r: Resolved, out: str | Path | None, resume: bool) -> dict:
    """What the record keeps of the spec: the spec itself, ``data_spec`` (the test set, as
    :func:`aevb.inference.saved.evaluate_run` reloads it) and, for a user's model or guide,
    ``imports`` (:func:`imports`)."""
    spec = r.spec
    data_spec = {
        "source": spec.data.source,
        "binarize": r.train.binarize,
        "subset": spec.data.subset,
        "test_subset": spec.data.test_subset,
        "labels": spec.data.labels,
        "validation": spec.data.validation,
    }
    meta: dict = {"data_spec": data_spec, "spec": spec.to_dict()}
    if EXTENSIONS:  # user modules that registered methods, objectives, ... (aevb --module)
        meta["modules"] = recorded_extensions()
    found = imports(r)
    if resume and out is not None and rundir.has_checkpoint(out):
        found = _imports_as_started(found, out)
    if found:
        meta["imports"] = found
    return meta


def imports(r: Resolved) -> dict:
    """Where a user's model and guide come from (``{"model": {"ref", "kind", "file",
    "sha256"}, ...}``, :func:`aevb.registry.program_source`): what ``aevb evaluate`` and
    ``--resume`` import again. The package's own are left out."""
    found = {}
    named = (("model", r.model, r.spec.model.name), ("guide", r.guide, r.spec.model.guide))
    for role, obj, name in named:
        if is_reference(name):  # what the name gives (imported already), not what was built
            source = program_source(import_reference(name, role), name)
        else:
            source = program_source(obj)
        if source is not None:
            found[role] = source
    return found


def _imports_as_started(found: dict, out: str | Path) -> dict:
    """On resume, the imports as the run recorded them when it started (a changed file is
    a warning, :func:`aevb.registry.reimport`, not a reason to refuse the resume)."""
    try:
        saved = rundir.read_config(out).get("imports") or {}
    except RunDirError:  # the loop reports a damaged run directory
        return found
    for role, entry in saved.items():
        reimport(entry, role, out)
    return saved


def train(
    spec: RunSpec,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    verbose: bool = False,
    figures: bool = True,
    epoch_callback=None,
) -> Run:
    """Train the run ``spec`` describes into ``out`` (None: keep nothing on disk).

    ``resume`` continues ``out``'s checkpoint, and refuses (listing the differences) if the
    spec differs from the one the run was started with in anything but its length.
    ``figures`` writes the learning curve, samples and reconstructions beside the run;
    ``epoch_callback(row)`` gets each epoch's history row (experiment tracking).
    """
    r = resolve(spec)
    common = dict(
        test=r.test,
        validation=r.valid,
        out=out,
        resume=resume,
        progress=progress,
        verbose=verbose,
        meta=_meta(r, out, resume),
        epoch_callback=epoch_callback,
        **fit_settings(spec),
    )
    run, label, curve = fit_resolved(spec, r, **common)
    if figures and out is not None:
        plots.run_figures(r.model, run.guide, r.test, run.history, out, label, curve)
    return run


def fit_resolved(spec: RunSpec, r: Resolved, **common) -> tuple[Run, str, str]:
    """Train the resolved spec by its method with the keyword arguments ``common``
    (:func:`aevb.inference.method.run_method`'s); returns (run, its label, what its training
    curve shows)."""
    method = method_of(spec)
    label = method.label(resolved_config(spec, r.model))
    return run_method(method, r.model, r.guide, r.train, **common), label, method.curve


def evaluate(
    out: str | Path,
    evaluation: EvaluationSpec | None = None,
    *,
    progress: bool = False,
    device: str = "cpu",
) -> dict:
    """One estimate of ``out``'s test log-likelihood (DESIGN.md's keys), recorded in its
    ``evaluation.json`` under ``evaluation.key`` (e.g. ``is-1000``), computed on ``device``
    (any device, whichever trained the run)."""
    ev = evaluation or EvaluationSpec()
    result = evaluate_run(
        out,
        ev.samples,
        ev.estimator,
        ais_temperatures=ev.ais_temperatures,
        subset=ev.subset,
        batch_size=ev.batch_size,
        seed=ev.seed,
        progress=progress,
        device=device,
        khat_share=ev.khat_share,
    )
    rundir.record_evaluation(out, ev.key, result)
    return result


def posterior(
    out: str | Path, config: PosteriorConfig | None = None, *, seed: int = 0, device: str = "cpu"
) -> dict:
    """Sample the posterior of ``out``'s first test points (``config``, seed ``seed``, on
    ``device``) and save it as ``out/posterior.nc``; returns its path and the draws' R-hat
    and ESS (:func:`aevb.inference.posterior.save_posterior`)."""
    return save_posterior(out, config, seed=seed, device=device)


def run(
    spec: RunSpec, out: str | Path, *, progress: bool | None = False, epoch_callback=None
) -> dict:
    """Train (or resume) ``spec`` in ``out`` and make every estimate of ``spec.evaluation``
    not yet in ``evaluation.json``; a run already evaluated is left as it is, unless it was
    evaluated after fewer epochs than ``spec`` asks for: then it trains on and is scored
    again, its earlier estimates kept in ``evaluations/epochN/``. Returns the recorded
    estimates by key."""
    sched = spec.schedule
    if sched.max_steps is None and sched.max_seconds is None:
        if scored_too_early(out, sched.epochs, sched.patience):  # more asked: score again
            rundir.archive_evaluations(out)
    done = rundir.read_evaluations(out)
    wanted = [ev for ev in spec.evaluation if ev.key not in done]
    if not wanted and spec.evaluation:
        return done
    resume = rundir.has_checkpoint(out)
    train(spec, out, resume=resume, progress=progress, epoch_callback=epoch_callback)
    for ev in wanted:
        evaluate(out, ev, device=spec.device)
    return rundir.read_evaluations(out)


__all__ = [
    "Resolved",
    "default_out",
    "evaluate",
    "fit_resolved",
    "fit_settings",
    "imports",
    "method_of",
    "model_class",
    "posterior",
    "resolved_config",
    "resolve",
    "run",
    "train",
]
