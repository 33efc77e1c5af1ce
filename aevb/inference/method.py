"""The one path from an inference method to a run.

Every method (SVI, Monte Carlo EM, MCMC-refined VI) turns ``(model, guide, train, settings)``
into a run the same way: refuse settings its config does not have and a missing training set,
complete the settings by the model's recipe, build its config, pair the model with its default
guide, convert the data, write the record and hand an algorithm to the shared training loop
(:func:`aevb.inference.loop.train`). That path is written here once; a method says only what
differs, as a :class:`Method`:

- :func:`prepare`: settings -> :class:`Setup` (config, guide, data sets);
- :func:`launch`: a :class:`Setup` -> the trained :class:`~aevb.inference.record.Run`;
- :func:`run_method`: both (a method with nothing to do in between).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aevb import guides
from aevb.data.dataset import Dataset, as_dataset
from aevb.errors import ConfigError
from aevb.inference import loop
from aevb.inference.loop import Algorithm, LoopConfig
from aevb.inference.objectives import OBJECTIVES, check_alpha
from aevb.inference.record import Run, describe, make_record
from aevb.models.base import recipe


@dataclass(frozen=True)
class RunOptions:
    """How a fit runs, the same for every method (not settings: ``config.json`` keeps only
    ``meta`` of them). See :func:`aevb.inference.fit` for each."""

    test: Any = None
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


class Method:
    """What one inference method adds to the shared path; a subclass overrides what differs."""

    #: the record's ``inference`` name (``config.json``)
    name = ""
    #: the method's settings, a :class:`~aevb.inference.loop.LoopConfig` subclass
    config: type[LoopConfig] = LoopConfig
    #: how the message about unknown settings names them ("unknown fit setting(s) ...")
    settings_name = "fit"
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


def objective_settings(settings: dict, default: str) -> dict:
    """``settings`` with a known ``objective`` (``default`` where none is given), its
    ``alpha`` checked and ``num_particles`` set (None: the objective's default)."""
    objective = settings.get("objective") or default
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    check_alpha(objective, settings.get("alpha"))
    settings = {**settings, "objective": objective}
    if settings.get("num_particles") is None:
        settings["num_particles"] = OBJECTIVES[objective].default_particles
    return settings


def prepare(method: Method, model, guide, train, settings: dict, test=None) -> Setup:
    """Check the settings and data, complete the settings by the model's recipe, build the
    config and pair the model with its default guide where none is given."""
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
    test_ds = None if test is None else as_dataset(test).fixed(0)
    return Setup(cfg, guide, ds, test_ds)


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
        out=options.out,
        resume=options.resume,
        reset=options.reset,
        progress=options.progress,
        verbose=options.verbose,
        callback=options.callback,
        epoch_callback=options.epoch_callback,
        desc=f"{describe(model).get('name', 'model')}/{method.label(cfg)}",
    )


def run_method(method: Method, model, guide, train, settings: dict, options: RunOptions) -> Run:
    """:func:`prepare`, then :func:`launch`: the whole path for a method with nothing to do
    in between."""
    setup = prepare(method, model, guide, train, settings, options.test)
    return launch(method, model, setup, options)
