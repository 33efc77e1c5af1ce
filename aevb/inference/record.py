"""What a run is, and the rules for resuming it.

The training loop (:mod:`.loop`) trains; this module says what it records and when a run may
continue:

* :class:`Run`: the outcome of training -- model, guide, history, record and run directory --
  returned by every fit and by :func:`aevb.inference.saved.load_run`;
* the record written to ``config.json`` (:func:`make_record`, :func:`describe`,
  :func:`versions`);
* the resume rules: a run directory is never overwritten and resuming needs one
  (:func:`output_folder`); a run resumes only with its own settings, except
  :data:`RESUMABLE_CHANGES` (:func:`check_resumable`); and where it continues -- the epoch
  after the last finished one or the middle of the one an interruption stopped
  (:func:`resume_point`, with :class:`Counters` and :class:`EpochProgress`).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from aevb.data.dataset import Dataset
from aevb.errors import ConfigError
from aevb.inference import rundir


@dataclass
class Run:
    """The outcome of training: the pair, its history and where it was written."""

    model: Any
    guide: Any
    history: pd.DataFrame
    config: dict
    out: Path | None = None
    extra: dict = field(default_factory=dict)


def versions() -> dict[str, str]:
    """Library versions recorded with every run."""
    import numpy
    import pyro as _pyro

    from aevb.version import __version__

    return {
        "aevb": __version__,
        "pyro": _pyro.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
    }


def describe(obj) -> dict:
    """A JSON-able description of a model or guide: registry name and config, or a repr."""
    name, config = getattr(obj, "name", None), getattr(obj, "config", None)
    if isinstance(name, str) and config is not None:
        return {"name": name, "config": asdict(config)}
    return {"callable": getattr(obj, "__qualname__", repr(obj))}


def make_record(inference: str, cfg, model, guide, ds: Dataset, test, meta=None, **extra) -> dict:
    """What ``config.json`` records of a run: algorithm and settings, model and guide
    (registry name and config), the data; ``versions()`` is added by
    :func:`aevb.inference.loop.train`."""
    return {
        "inference": inference,
        "fit": asdict(cfg),
        "model": describe(model),
        "guide": describe(guide) if guide is not None else {"callable": "none"},
        **extra,
        "data": {
            "train": ds.name,
            "test": None if test is None else test.name,
            "num_train": len(ds),
            "num_test": None if test is None else len(test),
            "binarize": ds.binarize,
        },
        **(meta or {}),
    }


#: what a resumed run may change: how long it runs, how its steps are executed, and how it
#: is evaluated afterwards (record keys, dotted; a key covers everything under it)
RESUMABLE_CHANGES = (
    "fit.epochs",
    "fit.max_steps",
    "fit.max_seconds",
    "fit.jit",
    "fit.validate",
    "fit.device",
    "device",
    "spec.device",
    "spec.schedule.epochs",
    "spec.schedule.max_steps",
    "spec.schedule.max_seconds",
    "spec.evaluation",
    "modules",
)


#: early stopping's patience (record keys): it may grow on resume where the run stops early
#: both before and after, and the resumed run then stops where an uninterrupted one with the
#: larger patience would (a smaller one could not: its stop may lie behind the checkpoint;
#: turning early stopping on or off changes which parameters the run ends with)
PATIENCE_KEYS = ("fit.patience", "spec.schedule.patience")


def _settings(record: dict) -> dict:
    """A run record as {dotted key: JSON value}, without what may change on resume (the
    library versions and :data:`RESUMABLE_CHANGES`); a None value or an empty table (no
    options: the defaults) counts as not set."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if prefix in RESUMABLE_CHANGES:
            return
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif value is not None and value != {}:
            flat[prefix] = value

    walk("", json.loads(json.dumps({k: v for k, v in record.items() if k != "versions"})))
    return flat


def check_resumable(saved: dict, now: dict) -> None:
    """Raise :class:`~aevb.errors.ConfigError` if a run would resume with other settings:
    anything in the record (algorithm, objective and its settings, model, guide, data, the
    run's spec) other than :data:`RESUMABLE_CHANGES`; the message lists every difference. A
    run recorded before specs were (no ``"spec"``) is compared on the rest."""
    saved, now = rundir.upgrade_record(saved), rundir.upgrade_record(now)
    if "spec" not in saved:
        now = {k: v for k, v in now.items() if k != "spec"}
    a, b = _settings(saved), _settings(now)
    for key in PATIENCE_KEYS:  # a stopped run may go on with more patience
        if key in a and key in b and b[key] >= a[key]:
            b[key] = a[key]
    missing = "(not set)"
    diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k, missing) != b.get(k, missing)]
    if diff:
        changes = "; ".join(
            f"{k}: {a.get(k, missing)!r} then, {b.get(k, missing)!r} now" for k in diff
        )
        raise ConfigError(
            f"cannot resume: the run was started with different settings ({changes}). Resume "
            "with the run's own settings (only epochs, max_steps and max_seconds may change, "
            "and an early stop's patience grow), "
            "or train into another output folder"
        )


def output_folder(out, resume: bool) -> Path | None:
    """The run directory, refusing to overwrite a run or to resume without one."""
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and rundir.has_checkpoint(out_dir) and not resume:
        raise ConfigError(
            f"{out_dir} already holds a run; pass resume=True (--resume) to continue it or "
            "choose another output folder"
        )
    if resume and out_dir is None:
        raise ConfigError("resume needs the run directory (out=...)")
    return out_dir


class Budget(Protocol):
    """The step and time budget of a run (:class:`~aevb.inference.loop.LoopConfig`'s)."""

    @property
    def max_steps(self) -> int | None: ...

    @property
    def max_seconds(self) -> float | None: ...


@dataclass
class Counters:
    """Where a run stands: steps, training seconds and datapoints seen so far."""

    step: int = 0
    train_seconds: float = 0.0
    seen: int = 0

    @classmethod
    def from_history(cls, rows: list[dict]) -> Counters:
        """Where a run stood after the last of its history ``rows`` (none: at the start)."""
        if not rows:
            return cls()
        last = rows[-1]
        return cls(last["step"], last["train_seconds"], last.get("datapoints", 0))

    def out_of_budget(self, cfg: Budget, running: float = 0.0) -> bool:
        """The step or time budget is spent (``running``: seconds of the current epoch)."""
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return True
        return cfg.max_seconds is not None and self.train_seconds + running >= cfg.max_seconds


@dataclass
class EpochProgress:
    """How far the current epoch has got: minibatches done, their summed loss, datapoints and
    seconds. An interrupted run's checkpoint keeps it (``"partial"``), so that the resumed
    run continues the epoch at the next minibatch."""

    epoch: int
    batches: int = 0
    loss_sum: float = 0.0
    count: int = 0
    seconds: float = 0.0


def resume_point(rows: list[dict], resumed: dict | None) -> tuple[EpochProgress, Counters]:
    """Where training continues: the epoch after the last finished one, or the middle of
    the epoch an interruption stopped (its checkpoint's ``"partial"``)."""
    counters = Counters.from_history(rows)
    partial = (resumed or {}).get("partial")
    if partial is None:
        return EpochProgress(rows[-1]["epoch"] + 1 if rows else 1), counters
    counters.step = partial.pop("step")
    return EpochProgress(**partial), counters
