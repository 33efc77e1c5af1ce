"""The one path from an inference method to a run.

Every method (SVI, Monte Carlo EM, MCMC-refined VI) turns ``(model, guide, train, settings)``
into a run the same way: refuse settings its config does not have and a missing training set,
complete the settings by the model's recipe, build its config, pair the model with its default
guide, convert the data, write the record and hand an algorithm to the shared training loop
(:func:`aevb.inference.loop.train`). That path is written here once; a method says only what
differs, as a :class:`Method`:

- :func:`prepare`: settings -> :class:`Setup` (config, guide, data sets);
- :func:`launch`: a :class:`Setup` -> the trained :class:`~aevb.inference.record.Run`;
- :meth:`Method.fit`: both (MCEM then fits its evaluation proposal).

:data:`METHODS` is the registry of methods by name (``svi``, ``mcem``, ``vi-mcmc``): the
RunSpec's ``inference.method``, ``aevb train --inference`` and grids read it, and each method's
settings (its config's exposed fields, :mod:`aevb.settings`) become that method's spec keys
and command-line options. A user's module adds one with :func:`register`; "Adding a method" in
the docs walks through it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aevb import guides
from aevb.data.dataset import Dataset, as_dataset
from aevb.errors import ConfigError
from aevb.inference import loop
from aevb.inference.loop import Algorithm, LoopConfig
from aevb.inference.objectives import OBJECTIVES, check_alpha, objective_options
from aevb.inference.record import Run, describe, make_record
from aevb.models.base import recipe
from aevb.registry import lookup, put
from aevb.settings import setting


@dataclass(frozen=True)
class RunOptions:
    """How a fit runs, the same for every method (not settings: ``config.json`` keeps only
    ``meta`` of them). See :func:`aevb.inference.fit` for each."""

    test: Any = None
    validation: Any = None
    out: str | Path | None = None
    resume: bool = False
    progress: bool | None = None
    verbose: bool = False
    reset: bool = True
    meta: dict | None = None
    callback: Callable[[int, int, float], None] | None = None
    epoch_callback: Callable[[dict], None] | None = None


@dataclass(frozen=True)
class Setup:
    """What :func:`prepare` made of a fit's arguments."""

    cfg: Any
    guide: Any
    ds: Dataset
    test: Dataset | None
    validation: Dataset | None = None


class Method:
    """What one inference method adds to the shared path; a subclass overrides what differs."""

    #: the record's ``inference`` name (``config.json``), the RunSpec's ``inference.method``
    name = ""
    #: the method in words (errors, help)
    title = ""
    #: the method's settings, a :class:`~aevb.inference.loop.LoopConfig` subclass whose fields
    #: declare them (:func:`aevb.settings.setting`)
    config: type[LoopConfig] = LoopConfig
    #: how the message about unknown settings names them ("unknown fit setting(s) ...")
    settings_name = "fit"
    #: what the training curve of the run's figures shows
    curve = "train bound"
    #: complete the settings by the model's MCEM recipe (``mcem_defaults``, else
    #: ``fit_defaults``) instead of its ``fit_defaults``
    mcem_recipe = False
    #: whether the loop trains the guide too (MCEM trains the model alone)
    trains_guide = True

    def configure(self, model, settings: dict) -> Any:
        """The run's config from the settings the recipe completed; refuse bad ones."""
        return self.config(**settings)

    def wants_guide(self, cfg) -> bool:
        """Whether a run given no guide takes the model's default one."""
        return True

    def algorithm(self, model, guide, cfg) -> Algorithm:
        """The per-minibatch step the loop runs."""
        raise NotImplementedError

    def record_extras(self, cfg, guide) -> dict:
        """Entries the method adds to the record (``config.json``)."""
        return {}

    def label(self, cfg) -> str:
        """The progress bar's name for the method (after the model's name)."""
        return self.name

    def run_name(self, cfg) -> str:
        """The run's name in ``runs/MODEL-NAME-seedS`` (:func:`aevb.runs.default_out`)."""
        return self.label(cfg)

    def check_spec(self, settings: dict, where: str) -> None:
        """Refuse a combination of a spec's settings (``settings``: those given) that each
        setting's own check cannot see, where the spec is read."""

    def upgrade_spec(self, settings: dict) -> dict:
        """A spec's settings as an older aevb wrote them (``config.json``), in today's form."""
        return settings

    def fit(self, model, guide, train, settings: dict, options: RunOptions) -> Run:
        """Train by this method: :func:`prepare`, then :func:`launch` (MCEM overrides it
        to fit its evaluation proposal afterwards)."""
        setup = prepare(self, model, guide, train, settings, options)
        return launch(self, model, setup, options)


class ObjectiveMethod(Method):
    """A method whose config is an :class:`ObjectiveConfig` (SVI, vi-mcmc): its spec's
    objective and alpha are checked together where the spec is read."""

    def check_spec(self, settings: dict, where: str) -> None:
        if settings.get("objective") is not None:
            check_alpha(settings["objective"], settings.get("alpha"), f"{where}.alpha")
            options = dict(settings.get("objective_options") or {})
            if settings["objective"] in OBJECTIVES:  # an unknown name fails where it is made
                objective_options(settings["objective"], options, f"{where}.objective_options")


#: inference methods by name (:func:`register` adds one)
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (an instance of a :class:`Method` subclass) under ``method.name``; a
    name another method holds is an error."""
    if not isinstance(method, Method):
        raise ConfigError(f"register() takes an instance of a Method subclass, got {method!r}")
    return put(METHODS, method.name, method, "inference method")


@dataclass(frozen=True)
class ObjectiveConfig(LoopConfig):
    """The settings of a method that trains the guide by an objective of
    :data:`~aevb.inference.objectives.OBJECTIVES` (SVI; vi-mcmc's encoder), declared once."""

    objective: str = setting(
        "trace",
        names=lambda: OBJECTIVES,
        help="the objective the guide (and, by SVI, the model) is trained by; where none is "
        "given, SVI takes the model's default_objective",
    )
    particles: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="particles per datapoint: k of the IWAE bound, or Monte Carlo samples of the ELBO",
        unset=lambda: default_particles(),
    )
    alpha: float | None = setting(
        None, kind=float, help="the Renyi alpha (the renyi objective only)", unset="none"
    )
    objective_options: dict = setting(
        default_factory=dict,
        help="the objective's own settings, for one that has them (l-mcvae, a-mcvae: steps, "
        "step_size, target_accept_prob, adapt_gain); set in a spec file or grid",
        unset="the objective's",
    )


def objective_settings(settings: dict, default: str) -> dict:
    """``settings`` with a known ``objective`` (``default`` where none is given), its
    ``alpha`` checked and ``particles`` set (None: the objective's default)."""
    objective = settings.get("objective") or default
    lookup(OBJECTIVES, objective, "objective")
    check_alpha(objective, settings.get("alpha"))
    objective_options(objective, dict(settings.get("objective_options") or {}))
    settings = {**settings, "objective": objective}
    if settings.get("particles") is None:
        settings["particles"] = OBJECTIVES[objective].default_particles
    return settings


def default_particles() -> str:
    """Each objective's default particles in words ("the objective's: 5 for iwae, renyi;
    else 1"), read from the registry."""
    by_k: dict[int, list[str]] = {}
    for name, objective in OBJECTIVES.items():
        by_k.setdefault(objective.default_particles, []).append(name)
    usual = max(by_k, key=lambda k: len(by_k[k]))
    others = "".join(f"{k} for {', '.join(ns)}; " for k, ns in by_k.items() if k != usual)
    return f"the objective's: {others}else {usual}"


#: settings renamed since aevb 0.1's first releases: old name -> today's
RENAMED = {"num_particles": "particles"}


def renamed(settings: dict) -> dict:
    """``settings`` with old names (:data:`RENAMED`) in today's form, with a warning."""
    out = dict(settings)
    for old, new in RENAMED.items():
        if old in out:
            warnings.warn(f"{old}= is now {new}=", FutureWarning, stacklevel=4)
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def prepare(method: Method, model, guide, train, settings: dict, options: RunOptions) -> Setup:
    """Check the settings and data, complete the settings by the model's recipe, build the
    config and pair the model with its default guide where none is given (``options``: the
    test and validation sets)."""
    settings = renamed(settings)
    fields = {f.name for f in dataclasses.fields(method.config)}
    unknown = set(settings) - fields
    if unknown:
        raise ConfigError(
            f"unknown {method.settings_name} setting(s) {sorted(unknown)}; "
            f"{method.config.__name__} has {', '.join(sorted(fields))}"
        )
    if train is None:
        raise ConfigError("fit needs training data")
    cfg = method.configure(model, recipe(model, settings, mcem=method.mcem_recipe))
    if guide is None and method.wants_guide(cfg):
        guide = guides.default_for(model)
    ds = as_dataset(train)
    test, valid = (
        None if d is None else as_dataset(d).fixed(0) for d in (options.test, options.validation)
    )
    return Setup(cfg, guide, ds, test, valid)


def launch(method: Method, model, setup: Setup, options: RunOptions) -> Run:
    """Write the record and train the method's algorithm in the shared loop."""
    cfg, guide, ds, test = setup.cfg, setup.guide, setup.ds, setup.test
    extras = method.record_extras(cfg, guide)
    record = make_record(method.name, cfg, model, guide, ds, test, options.meta, **extras)
    return loop.train(
        method.algorithm(model, guide, cfg),
        model,
        guide if method.trains_guide else None,
        ds,
        cfg,
        record,
        test=test,
        validation=setup.validation,
        out=options.out,
        resume=options.resume,
        reset=options.reset,
        progress=options.progress,
        verbose=options.verbose,
        callback=options.callback,
        epoch_callback=options.epoch_callback,
        desc=f"{describe(model).get('name', 'model')}/{method.label(cfg)}",
    )


def run_method(method: str | Method, model, guide=None, train=None, **kwargs) -> Run:
    """Train ``model`` (and ``guide``) on ``train`` by ``method`` (a name of
    :data:`METHODS` or a :class:`Method`); what :func:`aevb.inference.fit`,
    :func:`~aevb.inference.mcem_fit` and :func:`~aevb.inference.vimcmc_fit` call.

    ``kwargs`` are :class:`RunOptions`' (``test``, ``validation``, ``out``, ``resume``,
    ``progress``, ``verbose``, ``reset``, ``meta``, ``callback``, ``epoch_callback``) and the
    settings of the method's config; settings left out take the model's recipe, then the
    config's defaults, as on the command line."""
    chosen = lookup(METHODS, method, "inference method") if isinstance(method, str) else method
    names = {f.name for f in dataclasses.fields(RunOptions)}
    options = RunOptions(**{k: v for k, v in kwargs.items() if k in names})
    settings = {k: v for k, v in kwargs.items() if k not in names}
    return chosen.fit(model, guide, train, settings, options)
