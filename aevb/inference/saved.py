"""A saved run brought back: rebuilt, loaded and evaluated.

:mod:`.rundir` reads and writes a run directory's files; this module makes a working run of
them again:

* :func:`load_run`: the model and guide a run's record describes, rebuilt (registered ones
  from their names and configs, a user's by importing its module again), with the last
  checkpoint's parameters, as a :class:`~aevb.inference.record.Run`;
* :func:`load_params`: a checkpoint's module states and param store put back into a model and
  guide (also how the training loop resumes a run);
* :func:`evaluate_run`: a run scored on its test set by an estimator chosen from
  :data:`aevb.inference.estimators.ESTIMATORS`, with the model's own metrics.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch

from aevb.data.dataset import as_dataset
from aevb.devices import move, resolve_device
from aevb.errors import ConfigError
from aevb.inference import evaluate as ev
from aevb.inference import psis, rundir
from aevb.inference.estimators import ESTIMATORS, EstimateTask
from aevb.inference.record import Run
from aevb.models.base import hooks
from aevb.models.nets import AdoptModules
from aevb.pyro_compat import replace_unconstrained, unconstrained_params
from aevb.registry import lookup, reimport


def load_params(model, guide, state: dict, device: torch.device | None = None) -> None:
    """Load a checkpoint's module states and param store into model and guide (modules
    keep the device they are on; the store's other parameters go to ``device``)."""
    for obj, sd in zip((model, guide), state.get("modules", [None, None])):
        if sd is not None and isinstance(obj, torch.nn.Module):
            obj.load_state_dict(sd)
    pyro.clear_param_store()
    store = pyro.get_param_store()
    store.set_state(state["params"])
    if device is not None and device.type != "cpu":  # a user's pyro.param sites
        for name, p in unconstrained_params():
            if p.device != device:
                moved = torch.nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
                replace_unconstrained(name, moved)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model and guide of ``run_dir`` with its last checkpoint (the best
    epoch's parameters where it stopped early on a validation set), on ``device``
    (whatever device the run was trained on): registered ones from their names and
    configs, a user's (a class or a plain function, recorded under ``"imports"``) by
    importing its module again (:func:`aevb.registry.reimport`).

    Returns the :class:`~aevb.inference.record.Run`, as the fit that trained it returned it:
    ``model``, ``guide``, ``history`` (one row per epoch), ``config`` (the run's record),
    ``out`` (``run_dir``) and, for Monte Carlo EM, ``extra["proposal_history"]``.
    """
    state = rundir.read_checkpoint(run_dir)
    record = state["config"]
    model, guide = _rebuild(record, run_dir)
    where = resolve_device(device)
    move(where, model, guide)
    best = rundir.read_best(run_dir)  # a run stopped early ends with its best epoch's
    load_params(model, guide, state if best is None else best, where)
    run = Run(model, guide, pd.DataFrame(state["history"]), record, Path(run_dir))
    if best is not None:
        run.extra["best_epoch"] = int(best["epoch"])
    if "proposal_history" in state:
        run.extra["proposal_history"] = pd.DataFrame(state["proposal_history"])
    return run


def _rebuild(record: dict, run_dir) -> tuple[Any, Any]:
    """The model and guide a run record describes: its ``imports`` (a user's module, found
    again) or the registries' names and configs."""
    from aevb import guides, models

    mspec, gspec = record["model"], record["guide"]
    found = {
        role: (reimport(entry, role, run_dir), entry["ref"], entry.get("kind"))
        for role, entry in (record.get("imports") or {}).items()
    }
    if "model" in found:  # a class from its recorded config; a function or object as it is
        config = mspec.get("config", {}) if found["model"][2] == "class" else {}
        model = models.build(found["model"][1], **config)
    elif "name" in mspec:
        model = models.build(mspec["name"], **mspec["config"])
    else:
        raise ConfigError(
            f"{run_dir} was trained with user-defined callables ({mspec}) and records no "
            "module to import them from; rebuild them in Python and load the checkpoint's "
            "params there, or train them as MODULE:NAME (aevb train, aevb.runs.train)"
        )
    if "guide" in found and found["guide"][2] == "class" and "config" in gspec:
        guide = guides.from_config(found["guide"][1], gspec["config"], model)
    elif "guide" in found:  # a function, or a class that records no config: as trained
        overrides = ((record.get("spec") or {}).get("model") or {}).get("guide_config") or {}
        guide = guides.build(found["guide"][1], model, **overrides)
    elif "name" in gspec:
        guide = guides.from_config(gspec["name"], gspec["config"], model)
    else:
        raise ConfigError(f"{run_dir}: the guide ({gspec}) records no module to import it from")
    return model, guide


def evaluate_run(
    run_dir,
    num_samples: int = 1000,
    estimator: str = "is",
    *,
    test=None,
    subset: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = False,
    ais_temperatures: int = 500,
    device: str | torch.device = "cpu",
    khat_share: float = psis.FLAG_SHARE,
) -> dict:
    """Evaluate a run directory on its test set; return the DESIGN.md keys (nats/datapoint).

    ``estimator``: a key of :data:`aevb.inference.estimators.ESTIMATORS` -- ``is``
    (importance sampling with the run's guide, ``num_samples`` draws per datapoint) or
    ``ais`` (annealed importance sampling from the prior with ``num_samples`` chains and
    ``ais_temperatures`` temperatures, :mod:`aevb.inference.estimators.ais`; needs no guide).
    ``test`` overrides the test set recorded in the run's ``config.json`` (``data_spec``).
    ``device`` is where the estimators run, whichever device trained the run. An IS estimate
    also reports how far it can be trusted (:mod:`aevb.inference.psis`): it is ``flagged``
    when more than ``khat_share`` of the test points have a Pareto k-hat above the threshold.
    """
    chosen = lookup(ESTIMATORS, estimator, "estimator")
    run = load_run(run_dir, device)
    model, guide, record = run.model, run.guide, run.config
    test = as_dataset(recorded_test(record, run_dir) if test is None else test).subset(subset)
    start = time.perf_counter()
    k = chosen.elbo_samples(num_samples)
    with AdoptModules():  # a user's pyro.module networks take the checkpoint's values
        b = ev.bounds(model, guide, test, k, batch_size=batch_size, seed=seed, progress=progress)
        units = ev.active_units(guide, test, labels=hooks(model).uses_labels)
    task = EstimateTask(
        model,
        guide,
        test,
        num_samples,
        seed,
        batch_size,
        ais_temperatures,
        device,
        progress,
        khat_share,
    )
    ll, extra_keys = chosen.estimate(task, b)
    result = _estimate(ll, b.elbo)
    result.update(
        num_samples=num_samples,
        estimator=estimator,
        num_test=len(test),
        test_points=points_digest(test),
        active_units=units,
    )
    result.update({**extra_keys, **_known_metrics(model, guide, test, record)})
    result["seconds"] = time.perf_counter() - start
    return result


def _estimate(ll: torch.Tensor | float, elbo: torch.Tensor) -> Estimate:
    """The means of an estimator's log-likelihood (per point, or a mean already) and of the
    test ELBO, with their per-point values kept in ``pointwise``."""
    per_point = ll if isinstance(ll, torch.Tensor) else None
    mean = float(per_point.mean()) if per_point is not None else float(ll)
    result = Estimate(test_elbo=float(elbo.mean()), test_log_likelihood=mean)
    result.pointwise = {"elbo": elbo.detach().cpu().double().numpy()}
    if per_point is not None:
        result.pointwise["log_likelihood"] = per_point.detach().cpu().double().numpy()
    return result


class Estimate(dict):
    """An evaluation's result keys (a dict, as ``evaluation.json`` records them) and, in
    :attr:`pointwise`, its values per test point: ``elbo`` and, from an estimator that gives
    them, ``log_likelihood`` (numpy arrays [N], in the test set's order), which
    :func:`aevb.inference.rundir.record_evaluation` keeps beside ``evaluation.json``."""

    pointwise: dict


def points_digest(test) -> str:
    """A short fingerprint of a test set's datapoints (SHA-1 of their values and shape):
    two evaluations with the same digest scored the same points in the same order, so their
    per-point estimates can be compared pairwise."""
    x = test.x.detach().cpu().contiguous()
    h = hashlib.sha1(str(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()[:16]


def recorded_test(record: dict, run_dir):
    """The test set a run's ``config.json`` records (``data_spec``), loaded again."""
    from aevb import data

    spec = record.get("data_spec")
    if spec is None:
        raise ConfigError(f"{run_dir}: config.json records no data_spec; pass test=...")
    _, test = data.load(spec["source"], spec["binarize"])
    return test.subset(spec.get("test_subset"))


def _known_metrics(model, guide, test, record: dict) -> dict:
    """The model's own metrics (FA: exact evidence, GMVAE: cluster accuracy) and the
    generating model's evidence where the run's data has one (fa-synthetic)."""
    from aevb import data

    result: dict = {}
    extra = hooks(model).evaluation_metrics
    if extra is not None:
        result.update(extra(guide, test))
    source = (record.get("data_spec") or {}).get("source")
    if source in data.TRUE_MODELS:
        truth = data.TRUE_MODELS[source]()
        with torch.no_grad():
            result["true_model_log_evidence"] = float(truth.log_evidence(test.x).mean())
    return result
