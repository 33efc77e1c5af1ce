"""The run directory: the one module that knows its layout.

A run directory holds::

    config.json             what the run is (``loop.make_record`` plus library versions)
    history.csv             one row per epoch
    checkpoint.pt           parameters, optimiser and algorithm state, random state, history
                            and the record; written atomically after every epoch
    proposal_history.csv    Monte Carlo EM: the epochs that fitted its proposal q(z|x)
    evaluation.json         ``aevb evaluate`` results, one entry per estimator and k

Every file is written through :func:`atomic_write` (a temporary file and a rename), so a run
stopped at any moment leaves the previous version whole. Training (:mod:`.loop`), Monte Carlo
EM's proposal (:mod:`.mcem`), the command line and grids read and write the directory only
through the functions here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch

from aevb.data.dataset import as_dataset
from aevb.devices import fork_devices, move, resolve_device
from aevb.errors import ConfigError
from aevb.inference import evaluate as ev
from aevb.models.base import hooks

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
CONFIG = "config.json"
PROPOSAL_HISTORY = "proposal_history.csv"
EVALUATION = "evaluation.json"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` via ``write(tmp_path)`` and an atomic rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (a checkpoint)."""
    return (Path(run_dir) / CHECKPOINT).exists()


def write_config(run_dir: Path, record: dict) -> None:
    """``config.json``: the run's record, as JSON."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG, lambda p: p.write_text(json.dumps(record, indent=2)))


def write_epoch(run_dir: Path, state: dict, rows: list[dict]) -> None:
    """The checkpoint ``state`` and ``history.csv`` (``rows``) after an epoch, each atomically."""
    atomic_write(run_dir / CHECKPOINT, lambda p: torch.save(state, p))
    frame = pd.DataFrame(rows)
    atomic_write(run_dir / HISTORY, lambda p: frame.to_csv(p, index=False))


def read_config(run_dir: str | Path) -> dict:
    """``config.json`` as a dict."""
    return json.loads((Path(run_dir) / CONFIG).read_text())


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """``history.csv`` as a DataFrame, one row per epoch."""
    return pd.read_csv(Path(run_dir) / HISTORY)


def read_checkpoint(run_dir: str | Path) -> dict:
    """The last checkpoint of ``run_dir`` (a clear error if there is none), in today's
    naming of parameters (:func:`upgrade_names`)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise ConfigError(f"{run_dir}: no {CHECKPOINT}; is this a run directory?")
    # device-free: a run trained on a GPU loads on a CPU (and is moved where it is used)
    return upgrade_names(torch.load(path, map_location="cpu", weights_only=False))


#: ``pyro.module`` names of the guides before the naming convention
#: (:func:`aevb.models.nets.guide_module_name`), and what they are now
OLD_MODULE_NAMES = {
    "encoder": "encoder.gaussian",
    "linear_guide": "encoder.linear-gaussian",
    "mixture_guide": "encoder.mixture",
    "recurrent_guide": "encoder.recurrent",
}


def _renamed(name: str) -> str:
    module, sep, rest = name.partition("$$$")
    return OLD_MODULE_NAMES.get(module, module) + sep + rest if sep else name


def upgrade_names(state: dict) -> dict:
    """A checkpoint whose parameter names follow the older guide names, renamed: the param
    store's values and constraints and the optimiser's per-parameter state, so an old run
    evaluates and resumes (bit for bit) as before."""
    params = state.get("params")
    if isinstance(params, dict):
        for key in ("params", "constraints"):
            if isinstance(params.get(key), dict):
                params[key] = {_renamed(n): v for n, v in params[key].items()}
    optim = (state.get("algorithm") or {}).get("optim")
    if isinstance(optim, dict) and isinstance(optim.get("state"), dict):
        optim["state"] = {_renamed(n): v for n, v in optim["state"].items()}
    return state


def write_proposal(run_dir: Path, params: Any, modules: list, history: pd.DataFrame) -> None:
    """Store Monte Carlo EM's fitted proposal q(z|x) in the checkpoint (parameters and module
    states) and its training epochs in ``proposal_history.csv``."""
    state = read_checkpoint(run_dir)
    state["params"] = params
    state["modules"] = modules
    state["proposal_history"] = history.to_dict("records")
    atomic_write(run_dir / CHECKPOINT, lambda p: torch.save(state, p))
    atomic_write(run_dir / PROPOSAL_HISTORY, lambda p: history.to_csv(p, index=False))


def record_evaluation(run_dir: str | Path, key: str, result: dict) -> dict:
    """Add ``result`` under ``key`` (e.g. ``is-1000``) to ``evaluation.json``; return them all."""
    path = Path(run_dir) / EVALUATION
    saved = read_evaluations(run_dir)
    saved[key] = result
    atomic_write(path, lambda p: p.write_text(json.dumps(saved, indent=2)))
    return saved


def read_evaluations(run_dir: str | Path) -> dict:
    """``evaluation.json`` as a dict (empty if the run has not been evaluated)."""
    path = Path(run_dir) / EVALUATION
    return json.loads(path.read_text()) if path.exists() else {}


#: Monte Carlo EM settings that older records kept beside MCEM's own, with the defaults
#: every sampler had; they now live in ``sampler_options``
_OLD_SAMPLER_FIELDS = {"num_steps": 10, "target_accept_prob": 0.9, "max_tree_depth": 10}


def upgrade_record(record: dict) -> dict:
    """A run record of an older version in today's form (for comparing on resume): an MCEM
    record's sampler settings move into ``sampler_options``."""
    fit = record.get("fit", {})
    if record.get("inference") != "mcem" or "sampler_options" in fit:
        return record
    from aevb.inference.samplers import sampler_options

    fit = dict(fit)
    options = {}
    own = sampler_options(fit.get("sampler", "batched-hmc"))
    for key, default in _OLD_SAMPLER_FIELDS.items():
        value = fit.pop(key, default)
        if key in own and value != default:
            options[key] = value
    return {**record, "fit": {**fit, "sampler_options": options}}


def module_states(*objs) -> list:
    """The ``state_dict`` of every ``nn.Module`` among model and guide, by role."""
    return [o.state_dict() if isinstance(o, torch.nn.Module) else None for o in objs]


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
        for name, p in list(store._params.items()):  # noqa: SLF001
            if p.device != device:
                moved = torch.nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
                store._params[name] = moved  # noqa: SLF001
                store._param_to_name[moved] = name  # noqa: SLF001


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a registered model and guide from ``run_dir`` with its last checkpoint, on
    ``device`` (whatever device the run was trained on).

    Returns ``(model, guide, record, history)``.
    """
    from aevb import guides, models

    state = read_checkpoint(run_dir)
    record = state["config"]
    mspec, gspec = record["model"], record["guide"]
    if "name" not in mspec or "name" not in gspec:
        raise ConfigError(
            f"{run_dir} was trained with user-defined callables ({mspec}); rebuild them in "
            "Python and load the checkpoint's params there"
        )
    model = models.build(mspec["name"], **mspec["config"])
    guide = guides.from_config(gspec["name"], gspec["config"], model)
    where = resolve_device(device)
    move(where, model, guide)
    load_params(model, guide, state, where)
    return model, guide, record, pd.DataFrame(state["history"])


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
) -> dict:
    """Evaluate a run directory on its test set; return the DESIGN.md keys (nats/datapoint).

    ``estimator``: ``is`` (importance sampling with the run's guide, ``num_samples`` draws per
    datapoint) or ``ais`` (annealed importance sampling from the prior with ``num_samples``
    chains and ``ais_temperatures`` temperatures, :mod:`aevb.inference.ais`; needs no guide).
    ``test`` overrides the test set recorded in the run's ``config.json`` (``data_spec``).
    ``device`` is where the estimators run, whichever device trained the run.
    """
    from aevb import data as _data

    if estimator not in ("is", "ais"):
        raise ConfigError(f"unknown estimator {estimator!r}; available: ['ais', 'is']")
    model, guide, record, _ = load_run(run_dir, device)
    if test is None:
        spec = record.get("data_spec")
        if spec is None:
            raise ConfigError(f"{run_dir}: config.json records no data_spec; pass test=...")
        _, test = _data.load(spec["source"], spec["binarize"])
        test = test.subset(spec.get("test_subset"))
    test = as_dataset(test).subset(subset)
    start = time.perf_counter()
    k_is = num_samples if estimator == "is" else 1
    b = ev.bounds(model, guide, test, k_is, batch_size=batch_size, seed=seed, progress=progress)
    units = ev.active_units(guide, test, labels=hooks(model).uses_labels)
    extra_keys: dict = {}
    if estimator == "ais":
        from aevb.inference.ais import AISConfig, ais_dataset

        with torch.random.fork_rng(devices=fork_devices(resolve_device(device))):
            torch.manual_seed(seed)
            config = AISConfig(num_temperatures=ais_temperatures, num_chains=num_samples)
            a = ais_dataset(model, test, config, batch_size=batch_size)
        ll = float(a.log_likelihood.mean())
        extra_keys = {
            "test_log_likelihood_stderr": float(a.stderr.pow(2).sum().sqrt() / len(test)),
            "ais_temperatures": ais_temperatures,
            "ais_accept_prob": a.accept_prob,
        }
    else:
        ll = float(b.log_likelihood.mean())
    result = {
        "test_elbo": float(b.elbo.mean()),
        "test_log_likelihood": ll,
        "num_samples": num_samples,
        "estimator": estimator,
        "num_test": len(test),
        "active_units": units,
        **extra_keys,
    }
    # model-specific metrics (FA: exact evidence) and the generating model's, where known
    extra = hooks(model).evaluation_metrics
    if extra is not None:
        result.update(extra(guide, test))
    source = (record.get("data_spec") or {}).get("source")
    if source in _data.TRUE_MODELS:
        truth = _data.TRUE_MODELS[source]()
        with torch.no_grad():
            result["true_model_log_evidence"] = float(truth.log_evidence(test.x).mean())
    result["seconds"] = time.perf_counter() - start
    return result
