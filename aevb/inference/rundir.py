"""The run directory: the one module that knows its layout.

A run directory holds::

    config.json             what the run is (``record.make_record`` plus library versions)
    history.csv             one row per epoch
    checkpoint.pt           parameters, optimiser and algorithm state, random state, history
                            and the record; written atomically after every epoch (and when
                            a run is interrupted, mid-epoch, with where it stopped)
    checkpoint.prev.pt      the checkpoint before it, kept so that a damaged checkpoint.pt
                            (a failing disk, a copy cut short) loses one epoch, not the run
    run.lock                the pid and host of the process training in the folder, held
                            with an OS lock for as long as it trains (:func:`lock`)
    proposal_history.csv    Monte Carlo EM: the epochs that fitted its proposal q(z|x)
    evaluation.json         ``aevb evaluate`` results, one entry per estimator and k
    pointwise.npz           their values per test point (``KEY.elbo``, ``KEY.log_likelihood``
                            arrays [N]), for paired comparisons of runs
    posterior.nc            ``aevb evaluate --posterior``: posterior draws of the first test
                            points as ArviZ InferenceData (:mod:`.posterior`)

Every file is written through :func:`atomic_write` (a temporary file, flushed to disk, and a
rename), so a run stopped at any moment -- even killed while writing -- leaves the previous
version whole; a write that fails (a full disk) is an error that says what is still intact.
Training (:mod:`.loop`), Monte Carlo EM's proposal (:mod:`.mcem`), the command line and
grids read and write the directory only through the functions here. This module knows files
only: rebuilding a run's model and guide from them and evaluating it is :mod:`.saved`'s, what
the record holds and when a run may resume :mod:`.record`'s.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aevb.errors import ConfigError, RunDirError, RunLocked

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
CONFIG = "config.json"
PROPOSAL_HISTORY = "proposal_history.csv"
EVALUATION = "evaluation.json"
POINTWISE = "pointwise.npz"
#: posterior draws of the first test points, ArviZ InferenceData as netCDF
#: (:mod:`aevb.inference.posterior`)
POSTERIOR = "posterior.nc"


PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: the parameters of the best epoch on the validation set (early stopping)
BEST = "best.pt"
LOCK = "run.lock"


def atomic_write(path: Path, write: Callable[[Path], object], keep: Path | None = None) -> None:
    """Write ``path`` via ``write(tmp_path)``, flush it to disk, then rename it over ``path``:
    never a half-written file. With ``keep``, the version being replaced stays there (a hard
    link, so ``path`` exists at every moment). A failing write removes the temporary file
    and raises :class:`~aevb.errors.RunDirError` saying that ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = "its previous version is intact" if path.exists() else "nothing was written"
        raise RunDirError(
            f"could not write {path} ({exc.strerror or exc}); {kept}. Free disk space or "
            "choose another output folder, then resume"
        ) from None
    if keep is not None and path.exists():
        keep.unlink(missing_ok=True)
        try:
            os.link(path, keep)
        except OSError:  # a file system without hard links: a copy
            shutil.copy2(path, keep)
    os.replace(tmp, path)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (a checkpoint, or the previous one)."""
    return any((Path(run_dir) / name).exists() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT))


def write_config(run_dir: Path, record: dict) -> None:
    """``config.json``: the run's record, as JSON."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG, lambda p: p.write_text(json.dumps(record, indent=2)))


def save_state(state: dict, path: Path) -> None:
    """Serialise a checkpoint to ``path`` (``torch.save``): the one writer of checkpoints,
    which the fault-injection tests replace by one that fails half way."""
    torch.save(state, path)


def write_checkpoint(run_dir: Path, state: dict) -> None:
    """``checkpoint.pt`` (atomically), the one it replaces kept as ``checkpoint.prev.pt``."""
    atomic_write(
        run_dir / CHECKPOINT, lambda p: save_state(state, p), keep=run_dir / PREVIOUS_CHECKPOINT
    )


def write_epoch(run_dir: Path, state: dict, rows: list[dict]) -> None:
    """The checkpoint ``state`` and ``history.csv`` (``rows``) after an epoch, each atomically."""
    write_checkpoint(run_dir, state)
    frame = pd.DataFrame(rows)
    atomic_write(run_dir / HISTORY, lambda p: frame.to_csv(p, index=False))


def write_best(run_dir: Path, state: dict) -> None:
    """``best.pt``: the parameters of the best epoch on the validation set
    (:mod:`aevb.inference.stopping`), atomically."""
    atomic_write(run_dir / BEST, lambda p: save_state(state, p))


def read_best(run_dir: str | Path) -> dict | None:
    """``best.pt`` of ``run_dir`` (in today's naming of parameters), or None if the run
    keeps none (no early stopping)."""
    path = Path(run_dir) / BEST
    return _load(path, ("epoch", "params")) if path.exists() else None


def _missing(run_dir: str | Path, name: str) -> RunDirError:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return RunDirError(f"{run_dir}: no such run directory")
    return RunDirError(f"{run_dir / name}: missing; is {run_dir} a run directory?")


def read_config(run_dir: str | Path) -> dict:
    """``config.json`` as a dict (a :class:`~aevb.errors.RunDirError` if missing or corrupt)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise _missing(run_dir, CONFIG)
    return _read_json_object(path)


def _read_json_object(path: Path) -> dict:
    """A JSON object from ``path``, or a :class:`~aevb.errors.RunDirError` naming the file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable or not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """``history.csv`` as a DataFrame, one row per epoch (a clear error if missing or
    corrupt)."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        raise _missing(run_dir, HISTORY)
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors too
        raise RunDirError(f"{path}: unreadable or not CSV ({exc})") from None
    if "epoch" not in frame.columns:
        raise RunDirError(f"{path}: no 'epoch' column; columns found: {list(frame.columns)}")
    return frame


def _load(path: Path, keys: tuple[str, ...] = ("config", "params", "history")) -> dict:
    """A checkpoint file (holding ``keys``), or :class:`~aevb.errors.RunDirError` naming it
    if it is damaged."""
    try:
        # device-free: a run trained on a GPU loads on a CPU (and is moved where it is used)
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch and pickle raise many kinds for damaged bytes
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    if not isinstance(state, dict) or not set(keys) <= state.keys():
        raise RunDirError(f"{path}: not an aevb checkpoint (missing {' or '.join(keys)})")
    return upgrade_names(state)


def _epoch_of(state: dict) -> str:
    rows = state.get("history") or []
    return f"epoch {rows[-1]['epoch']}" if rows else "before the first epoch"


def read_checkpoint(run_dir: str | Path, *, fallback: bool = False) -> dict:
    """The last checkpoint of ``run_dir`` in today's naming of parameters
    (:func:`upgrade_names`); a clear :class:`~aevb.errors.RunDirError` if there is none or
    it is damaged. A damaged ``checkpoint.pt`` beside a good ``checkpoint.prev.pt``: with
    ``fallback`` (resuming) the damaged file is set aside as ``checkpoint.corrupt.pt`` and
    the previous one is used, with a line on stderr saying so; without, the error says that
    ``--resume`` will use it."""
    run_dir = Path(run_dir)
    path, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT
    if not path.exists() and not prev.exists():
        raise _missing(run_dir, CHECKPOINT)
    try:
        return _load(path if path.exists() else prev)
    except RunDirError as damaged:
        if not path.exists() or not prev.exists():
            raise
        try:
            state = _load(prev)
        except RunDirError:
            raise RunDirError(f"{damaged}; {prev} is damaged too") from None
        if not fallback:
            raise RunDirError(
                f"{damaged}. The previous checkpoint {prev} ({_epoch_of(state)}) is intact: "
                "resume the run (--resume) to continue from it"
            ) from None
        os.replace(path, run_dir / "checkpoint.corrupt.pt")
        os.replace(prev, path)
        print(
            f"aevb: {damaged}; set aside as checkpoint.corrupt.pt, resuming from the previous "
            f"checkpoint ({_epoch_of(state)})",
            file=sys.stderr,
        )
        return state


# ------------------------------------------------------------------ the run's lock

#: run directories this process holds the lock of (the lock is re-entrant per process)
_HELD: dict[Path, int] = {}


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _locked_error(run_dir: Path, owner: dict) -> RunLocked:
    who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
    return RunLocked(
        f"{run_dir} is in use: another aevb process ({who}, since {owner.get('since', '?')}) "
        f"is training there. Wait for it, stop it, or choose another output folder (if that "
        f"process is gone, delete {run_dir / LOCK})"
    )


def _acquire(run_dir: Path) -> int:
    """Open and lock ``run.lock``; returns its descriptor. An OS lock (``fcntl.lockf``,
    released by the kernel when its process dies) decides who holds the folder; the file's
    contents, the holder's pid and host, are for the message. Without OS locks (a file
    system that refuses them) a lock naming a live process on this host is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    for _ in range(10):  # a holder may unlink the file between our open and our lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        owner = _read_owner(path)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise _locked_error(run_dir, owner) from None
            mine = owner.get("host") == socket.gethostname()
            if owner.get("pid") and mine and _pid_alive(int(owner["pid"])):
                raise _locked_error(run_dir, owner) from None
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        if owner.get("pid"):
            print(
                f"aevb: taking over {path}: its holder (pid {owner['pid']} on "
                f"{owner.get('host', '?')}) is no longer running",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        os.fsync(fd)
        return fd
    raise RunDirError(f"{path}: could not take the lock (the file kept changing)")


@contextmanager
def lock(run_dir: str | Path | None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block: a second process training in the same
    folder is refused with :class:`~aevb.errors.RunLocked` (naming the holder's pid and
    host); a lock left by a process that died is taken over. Re-entrant within a process;
    ``None`` (no run directory) holds nothing."""
    if run_dir is None:
        yield
        return
    key = Path(run_dir).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    created = [p for p in (Path(run_dir), *Path(run_dir).parents) if not p.exists()]
    fd = _acquire(Path(run_dir))
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        (Path(run_dir) / LOCK).unlink(missing_ok=True)
        os.close(fd)
        for folder in created:  # refused before writing anything: leave no empty folders
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()


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
    evaluates and resumes (bit for bit) as before. Only a run of the package's own guide is
    renamed: a user's guide may well call its network ``encoder`` today."""
    found = state.get("config")
    record: dict = found if isinstance(found, dict) else {}
    guide = (record.get("guide") or {}).get("name")
    ours = {old.partition(".")[2] for old in OLD_MODULE_NAMES.values()}
    if guide not in ours or "guide" in (record.get("imports") or {}):
        return state
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
    write_checkpoint(run_dir, state)
    atomic_write(run_dir / PROPOSAL_HISTORY, lambda p: history.to_csv(p, index=False))


def write_posterior(run_dir: str | Path, write: Callable[[Path], object]) -> Path:
    """Write the run's ``posterior.nc`` with ``write(path)`` (e.g. ``InferenceData.to_netcdf``)
    atomically (:func:`atomic_write`); returns its path."""
    path = Path(run_dir) / POSTERIOR
    atomic_write(path, write)
    return path


def record_evaluation(run_dir: str | Path, key: str, result: dict) -> dict:
    """Add ``result`` under ``key`` (e.g. ``is-1000``) to ``evaluation.json``; return them all.
    Its values per test point (``result.pointwise``, a dict of arrays, where it has one: an
    :class:`aevb.inference.saved.Estimate`) go to ``pointwise.npz`` under ``KEY.NAME``,
    written first, so that an estimate in ``evaluation.json`` always has its points beside
    it."""
    pointwise = getattr(result, "pointwise", None)
    if pointwise:
        _record_pointwise(Path(run_dir), key, pointwise)
    path = Path(run_dir) / EVALUATION
    saved = read_evaluations(run_dir)
    saved[key] = dict(result)
    atomic_write(path, lambda p: p.write_text(json.dumps(saved, indent=2)))
    return saved


def _record_pointwise(run_dir: Path, key: str, arrays: dict) -> None:
    kept = {k: v for k, v in _read_npz(run_dir / POINTWISE).items() if not k.startswith(key + ".")}
    kept.update({f"{key}.{name}": np.asarray(values) for name, values in arrays.items()})

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, **kept)

    atomic_write(run_dir / POINTWISE, write)


def _read_npz(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); delete it and evaluate again") from exc


def read_pointwise(run_dir: str | Path, key: str) -> dict:
    """The per-test-point values recorded for evaluation ``key`` (``{"elbo": array,
    "log_likelihood": array}``, numpy [N]); empty for a run evaluated before aevb recorded
    them, or by an estimator that gives means only."""
    prefix = key + "."
    found = _read_npz(Path(run_dir) / POINTWISE)
    return {k[len(prefix) :]: v for k, v in found.items() if k.startswith(prefix)}


def read_evaluations(run_dir: str | Path) -> dict:
    """``evaluation.json`` as a dict (empty if the run has not been evaluated)."""
    path = Path(run_dir) / EVALUATION
    return _read_json_object(path) if path.exists() else {}


def trained_epochs(run_dir: str | Path) -> int:
    """The last epoch in ``history.csv`` (0 when the run has none yet)."""
    if not (Path(run_dir) / HISTORY).is_file():
        return 0
    history = read_history(run_dir)
    return int(history["epoch"].iloc[-1]) if len(history) else 0


def evaluated_too_early(run_dir: str | Path, epochs: int | None) -> bool:
    """Whether the run was evaluated after fewer than ``epochs`` epochs (None: the run's
    own length), so that asking for more epochs must train on and score it again."""
    return (
        epochs is not None
        and bool(read_evaluations(run_dir))
        and 0 < trained_epochs(run_dir) < epochs
    )


def archive_evaluations(run_dir: str | Path) -> Path:
    """Move ``evaluation.json`` and ``pointwise.npz`` to ``evaluations/epochN/`` (N the
    epochs they scored), so that a run trained further is scored afresh and the earlier
    figures are kept; returns that folder."""
    run_dir = Path(run_dir)
    dest = run_dir / "evaluations" / f"epoch{trained_epochs(run_dir)}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in (POINTWISE, EVALUATION):  # the points first: an estimate keeps its points
        if (run_dir / name).exists():
            os.replace(run_dir / name, dest / name)
    return dest


#: Monte Carlo EM settings that older records kept beside MCEM's own, with the defaults
#: every sampler had; they now live in ``sampler_options``
_OLD_SAMPLER_FIELDS = {"num_steps": 10, "target_accept_prob": 0.9, "max_tree_depth": 10}


def upgrade_record(record: dict) -> dict:
    """A run record of an older version in today's form (for comparing on resume): an MCEM
    record's sampler settings move into ``sampler_options`` and its spec's nested sampler
    table becomes ``sampler`` and ``sampler_options``; ``num_particles`` is ``particles``; a
    vi-mcmc record's ``sampler_options = {"num_steps": n}`` is ``leapfrog_steps = n``, and
    one from before ``encoder_refined`` had it at 0; an objective recorded before objectives
    had options of their own has none; one from before early stopping had no patience, no
    validation split and watched the ELBO."""
    fit = dict(record.get("fit", {}))
    if "num_particles" in fit:
        fit["particles"] = fit.pop("num_particles")
    if "objective" in fit:
        fit.setdefault("objective_options", {})
    if record.get("inference") == "vi-mcmc":
        fit = upgrade_vimcmc_settings(fit, OLD_LEAPFROG_STEPS)
        fit.setdefault("encoder_refined", 0.0)
    if record.get("inference") == "mcem" and "sampler_options" not in fit:
        fit = _mcem_sampler_options(fit)
    if "epochs" in fit:  # from before early stopping
        fit.setdefault("patience", None)
        fit.setdefault("monitor", "elbo")
    record = {**record, "fit": fit} if "fit" in record else dict(record)
    spec = record.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("inference"), dict):
        inference = upgrade_sampler_spec(spec["inference"])
        record["spec"] = {**spec, "inference": inference}
    if isinstance(record.get("data_spec"), dict):
        record["data_spec"] = {"validation": None, **record["data_spec"]}
    if isinstance(spec, dict) and isinstance(record["spec"].get("data"), dict):
        record["spec"] = {**record["spec"], "data": {"validation": None, **spec["data"]}}
    return record


#: the leapfrog steps of a vi-mcmc run that recorded none (batched HMC's default then)
OLD_LEAPFROG_STEPS = 10


def upgrade_vimcmc_settings(settings: dict, default: int | None = None) -> dict:
    """vi-mcmc settings of an older version (``sampler_options = {"num_steps": n}``,
    ``num_particles``) in today's form (``leapfrog_steps = n``, ``particles``); ``default``:
    the leapfrog steps where the old options gave none (None: leave them unset)."""
    out = dict(settings)
    if "num_particles" in out:
        out.setdefault("particles", out.pop("num_particles"))
    if "sampler_options" not in out:
        return out
    options = dict(out.pop("sampler_options") or {})
    steps = options.pop("num_steps", default)
    if steps is not None:
        out.setdefault("leapfrog_steps", steps)
    if options:
        raise ConfigError(f"vi-mcmc has no sampler options {sorted(options)} any more")
    return out


def upgrade_sampler_spec(inference: dict) -> dict:
    """A spec's MCEM settings of an older version (``sampler = {name, options}``) in today's
    form (``sampler = name``, ``sampler_options = options``)."""
    sampler = inference.get("sampler")
    if not isinstance(sampler, dict):
        return inference
    out = {k: v for k, v in inference.items() if k != "sampler"}
    out["sampler"] = sampler.get("name", "batched-hmc")
    if sampler.get("options"):
        out["sampler_options"] = dict(sampler["options"])
    return out


def _mcem_sampler_options(fit: dict) -> dict:
    """An MCEM record's sampler settings, kept beside MCEM's own before, in
    ``sampler_options``."""
    from aevb.inference.samplers import sampler_options

    options = {}
    own = sampler_options(fit.get("sampler", "batched-hmc"))
    for key, default in _OLD_SAMPLER_FIELDS.items():
        value = fit.pop(key, default)
        if key in own and value != default:
            options[key] = value
    return {**fit, "sampler_options": options}


def module_states(*objs) -> list:
    """The ``state_dict`` of every ``nn.Module`` among model and guide, by role."""
    return [o.state_dict() if isinstance(o, torch.nn.Module) else None for o in objs]
