"""The one training loop, shared by every inference algorithm (SVI, Monte Carlo EM).

An algorithm supplies what happens on one minibatch (:class:`Algorithm`); the loop does the
rest, identically for all of them: seeding, re-initialisation, epochs of shuffled minibatches,
a progress bar, a stop on a non-finite loss that keeps the last good checkpoint, one
``history.csv`` row per epoch (with the test ELBO and the model's own metrics), and an atomic
``checkpoint.pt`` after every epoch from which ``resume=True`` continues to the same result as
an uninterrupted run. What a run records and the rules for resuming it (what may change,
where training continues) are :mod:`.record`'s.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyro
import torch
from tqdm import tqdm  # text bars (tqdm.auto warns in a notebook without ipywidgets)

from aevb.data.dataset import Dataset
from aevb.devices import describe as describe_device
from aevb.devices import fork_devices, move, resolve_device, to_cpu
from aevb.errors import ConfigError, DataError, ObjectiveError, RunInterrupted, TrainingDiverged
from aevb.inference import evaluate as ev
from aevb.inference import programs, rundir
from aevb.inference.optim import Adam
from aevb.inference.record import (
    EpochProgress,
    Run,
    check_resumable,
    output_folder,
    resume_point,
    versions,
)
from aevb.inference.saved import load_params
from aevb.inference.stopping import (
    MONITORS,
    BestState,
    best_epoch,
    patience_spent,
    validation_columns,
)
from aevb.models.base import check_dataset, hooks
from aevb.models.nets import AdoptModules
from aevb.settings import check_fields, setting


@dataclass(frozen=True)
class LoopConfig:
    """Settings every algorithm shares (recorded in ``config.json``); each is declared once
    (:mod:`aevb.settings`), and the exposed ones are a RunSpec's ``schedule`` and options of
    ``aevb train``."""

    epochs: int = setting(10, minimum=1, help="passes over the training set", unset="")
    batch_size: int = setting(
        20,
        minimum=1,
        help="minibatch size: Burda et al.'s 20 reached a better log-likelihood in 10 epochs "
        "than 100 for the same recipe on MNIST",
    )
    lr: float = setting(
        1e-3, minimum=0, above=True, help="Adam's learning rate (Burda et al.'s Adam settings)"
    )
    betas: tuple[float, float] = setting(
        (0.9, 0.999), kind=tuple, exposed=False, help="Adam's betas (Burda et al.'s)"
    )
    eps: float = setting(1e-4, minimum=0, above=True, exposed=False, help="Adam's eps")
    seed: int = setting(0, minimum=0, help="the seed that fixes the run")
    test_num_samples: int = setting(
        1, minimum=1, exposed=False, help="draws per test datapoint for the per-epoch test ELBO"
    )
    freeze: tuple[str, ...] = setting(
        (),
        kind=tuple,
        exposed=False,
        help="parameter-name prefixes held fixed (('encoder',) trains the model only)",
    )
    max_steps: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="stop after this many minibatch steps in total (the last epoch may be partial)",
        unset="none",
    )
    max_seconds: float | None = setting(
        None,
        kind=float,
        minimum=0,
        above=True,
        help="stop once this many seconds of training (evaluation excluded) have passed in "
        "total, for comparisons under one wall-clock budget",
        unset="none",
    )
    patience: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="stop once the validation set's `monitor` has gone this many epochs without "
        "improving, and keep the parameters of its best epoch (needs data.validation)",
        unset="none",
    )
    monitor: str = setting(
        "elbo",
        choices=tuple(MONITORS),
        help="what early stopping watches on the validation set: elbo, error (M2's "
        "classification error; lower is better), cluster_accuracy (GMVAE), "
        "log_evidence_exact (FA)",
    )
    max_plate_nesting: int = setting(
        1, minimum=1, exposed=False, help="plates the objective may nest (Pyro's)"
    )
    validate: bool = setting(
        False,
        exposed=False,
        help="Pyro's argument and support checks on every step. The first minibatch is always "
        "checked and a non-finite loss always stops the run; the checks cost ~15% of a VAE "
        "step on 2 cores (scripts/bench.py), so they are off for the rest unless this is set",
    )
    device: str = setting(
        "cpu",
        exposed=False,
        help="where model, guide, minibatches and the algorithm's state live: cpu (the "
        "default, so published figures reproduce), cuda, cuda:N or auto; parameters are "
        "initialised on the CPU from the seed, then moved",
    )

    def __post_init__(self):
        check_fields(self)


class Algorithm(Protocol):
    """What an inference algorithm does on a minibatch; the loop does everything else."""

    def prepare(self, ds: Dataset, first_batch: tuple) -> None:
        """Called once parameters are initialised or restored, before any output is written:
        check the setup (raise a clear error) and allocate per-datapoint state."""

    def begin_epoch(self, epoch: int) -> None:
        """Called before the (1-based) ``epoch``'s first step (e.g. a learning rate by epoch)."""

    def step(self, args: tuple, index: torch.Tensor) -> float:
        """Update the parameters on one minibatch; return its loss summed over datapoints."""
        ...

    def epoch_diagnostics(self) -> dict:
        """Extra history columns for the epoch just finished (then reset)."""
        ...

    def state_dict(self) -> dict:
        """What the checkpoint keeps of the algorithm (optimiser, chains, ...)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output before the first step of a resumed run."""
        ...


def reset_parameters(obj) -> None:
    """Re-initialise every ``nn.Module`` inside ``obj`` from the global random state."""
    if isinstance(obj, torch.nn.Module):
        # torch's layers first (in module order), then aevb's own modules innermost first,
        # so that a model's own scheme (e.g. Glorot for the GMVAE) has the last word
        modules = list(obj.modules())
        ours = [m for m in modules if type(m).__module__.startswith("aevb.")]
        theirs = [m for m in modules if not type(m).__module__.startswith("aevb.")]
        for m in theirs + ours[::-1]:
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()


def check_data(model, ds: Dataset) -> None:
    """The model's own data check on (up to) 2000 transformed datapoints, and its label
    check on every label (:func:`aevb.models.base.check_dataset`)."""
    if hooks(model).uses_labels and ds.y is None:
        raise DataError(f"{ds.name}: this model needs labels but the dataset has none")
    head = ds.subset(2000)
    try:
        check_dataset(model, head.transform(head.x, torch.Generator().manual_seed(0)), ds.y)
    except DataError as exc:
        raise DataError(f"{ds.name}: {exc}") from None


def set_mode(training: bool, *objs) -> None:
    """``nn.Module.train()``/``eval()``: models may train differently (e.g. a relaxed y)."""
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            obj.train(training)


def _initialise(model, guide, ds: Dataset, cfg: LoopConfig, record, out_dir, resume, reset):
    """Seed, then restore a checkpoint (resume) or re-initialise the parameters, then move
    model and guide to the run's device; returns (history rows so far, the checkpoint or
    None)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if resume and out_dir is not None and rundir.has_checkpoint(out_dir):
        resumed = rundir.read_checkpoint(out_dir, fallback=True)
        check_resumable(resumed["config"], record)
        move(device, model, guide)
        load_params(model, guide, resumed, device)
        _adopt_checkpoint(model, guide, ds, cfg, device)
        return resumed["history"], resumed
    if reset:  # a fresh start from the seed; reset=False keeps given parameters as they are
        others = _program_modules(model, guide, ds, cfg)  # leaves the random state as it is
        reset_parameters(model)
        reset_parameters(guide)
        for module in others:  # modules a plain-function pair registers with pyro.module
            reset_parameters(module)
        init = hooks(model).init_from_data
        if init is not None:
            init(ds.transform(ds.x, torch.Generator().manual_seed(cfg.seed)).mean(0))
    move(device, model, guide)
    return [], None


def _program_modules(model, guide, ds: Dataset, cfg: LoopConfig) -> list[torch.nn.Module]:
    """The ``nn.Module`` objects a pair that is not itself made of modules registers with
    ``pyro.module`` (networks captured in closures or globals, as Pyro's examples write
    them), found by running it once on a batch with the random state untouched; an AutoGuide
    forgets its lazily built parameters. A parameter found in no module is named in a
    warning: a second fit would continue from its trained value."""
    if guide is not None and hasattr(guide, "prototype_trace"):  # Pyro's AutoGuides
        _forget_autoguide(guide)
    if all(isinstance(obj, torch.nn.Module) for obj in (model, guide) if obj is not None):
        return []
    with torch.random.fork_rng(), torch.no_grad():
        g = torch.Generator().manual_seed(cfg.seed)
        labels = hooks(model).uses_labels
        args = next(ds.batches(min(cfg.batch_size, len(ds)), labels=labels, generator=g))
        programs.trace_pair(model, guide, args, what="the first training batch")
        found, stray = programs.registered_modules(model, guide)
    pyro.clear_param_store()
    if stray:
        print(
            f"aevb: cannot re-initialise {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}"
            ": registered with pyro.module from a network aevb could not reach from the model "
            "or guide (a closure variable or module global is reached); this fit continues "
            "from their current values. Build the network inside the model or guide, or pass "
            "an nn.Module",
            file=sys.stderr,
        )
    return found


def _adopt_checkpoint(model, guide, ds: Dataset, cfg: LoopConfig, device) -> None:
    """After a checkpoint is loaded, networks a plain-function pair registers with
    ``pyro.module`` (in closures or globals) take the checkpoint's values: the pair runs
    once on a batch under :class:`~aevb.models.nets.AdoptModules`, with the random state
    untouched, before any step (or compiled trace) sees them."""
    if all(isinstance(obj, torch.nn.Module) for obj in (model, guide) if obj is not None):
        return
    with torch.random.fork_rng(devices=fork_devices(device)), torch.no_grad(), AdoptModules():
        g = torch.Generator().manual_seed(cfg.seed)
        labels = hooks(model).uses_labels
        size = min(cfg.batch_size, len(ds))
        args = next(ds.batches(size, labels=labels, generator=g, device=device))
        programs.trace_pair(model, guide, args, what="the first training batch")


def _forget_autoguide(guide) -> None:
    """An AutoGuide builds its parameters on its first call (``_setup_prototype``);
    forgetting its prototype makes the next call build them afresh from the seed."""
    guide.prototype_trace = None


def _probe(model, guide, first: tuple, test, cfg: LoopConfig, labels: bool, device) -> None:
    """Run the pair once on the first training batch and on a test batch, so that a shape
    mistake (data of the wrong width, say) is one message naming the site before anything
    trains; with a test set, the per-epoch test ELBO's log weights are computed once on it
    (a latent outside the data plate, or networks that cannot take a leading particle
    dimension, are refused now rather than after the first epoch)."""
    with torch.no_grad():
        programs.trace_pair(model, guide, first, what="the first training batch")
        if test is None:
            return
        size = min(cfg.batch_size, len(test))
        batch = next(test.batches(size, labels=labels, device=device))
        programs.trace_pair(model, guide, batch, what="the first test batch")
    if guide is not None:  # what the test ELBO will need: two particles, say
        try:
            ev.log_weights(model, guide, batch, 2, cfg.max_plate_nesting)
        except ObjectiveError as exc:
            raise ObjectiveError(f"the test set's ELBO (after every epoch): {exc}") from None


def _prepare(
    algorithm: Algorithm, model, guide, ds: Dataset, test, cfg: LoopConfig, resumed
) -> None:
    """Check the setup before anything is written, then restore the algorithm's state. The
    check must not touch the global random state, or a resumed run would draw differently."""
    set_mode(True, model, guide)
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=fork_devices(device)):
        g = torch.Generator().manual_seed(cfg.seed)
        labels = hooks(model).uses_labels
        size = min(cfg.batch_size, len(ds))
        first = next(ds.batches(size, labels=labels, generator=g, device=device))
        _probe(model, guide, first, test, cfg, labels, device)
        algorithm.prepare(ds, first)
    if resumed is not None:
        algorithm.load_state_dict(resumed["algorithm"])
        torch.set_rng_state(resumed["rng"])
        cuda_rng = resumed.get("cuda_rng")
        if cuda_rng is not None and device.type == "cuda":  # the same device type: continue it
            torch.cuda.set_rng_state(cuda_rng, device)


@dataclass
class _StopRequest:
    """The signal (SIGINT or SIGTERM) that asked the run to stop, if one has."""

    signum: int | None = None


@contextmanager
def _stop_on_signals(enabled: bool) -> Iterator[_StopRequest]:
    """While training into a run directory, SIGINT and SIGTERM ask the loop to stop after the
    current step (it writes a checkpoint, then raises :class:`~aevb.errors.RunInterrupted`);
    a second signal stops at once (the last checkpoint is whole either way). Signal handlers
    can only be set in the main thread: elsewhere (a Ray worker's thread) nothing changes."""
    stop = _StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum
        tqdm.write(
            f"aevb: {signal.Signals(signum).name} received; finishing this step and writing a "
            "checkpoint (send it again to stop at once)",
            file=sys.stderr,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _diverged(loss: float, epoch: int, step: int, out_dir: Path | None) -> TrainingDiverged:
    ckpt = None if out_dir is None else out_dir / rundir.CHECKPOINT
    where = f"{ckpt} (epoch {epoch - 1})" if ckpt and ckpt.exists() else "none written"
    return TrainingDiverged(
        f"the loss became {loss} at epoch {epoch}, step {step}; stopping. Last good "
        f"checkpoint: {where}. Likely causes: a learning rate too large (try --lr 10x "
        "smaller), data outside the likelihood's range or badly scaled (Bernoulli pixels must "
        "lie in [0, 1]; standardise real-valued data), or a scale collapsing to zero (a "
        "min_scale floor, fewer latent units)"
    )


def _interrupted(signum: int, epoch: int, step: int, out_dir: Path) -> RunInterrupted:
    return RunInterrupted(
        f"{signal.Signals(signum).name} received: stopped after step {step} (epoch {epoch}) "
        f"and wrote {out_dir / rundir.CHECKPOINT}; resume with the same settings and "
        "--resume (resume=True) to continue exactly where it stopped",
        signum,
    )


def _train_epoch(algorithm, model, guide, ds, cfg, done, counters, bar, callback, out_dir, stop):
    """Continue epoch ``done.epoch`` from its ``done.batches``-th minibatch (0: a fresh
    epoch) until its end or the budget; returns its :class:`~.record.EpochProgress`. A
    non-finite loss stops the run; a stop request writes a mid-epoch checkpoint first."""
    epoch = done.epoch
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    device = resolve_device(cfg.device)
    step_hooks = [h for h in (hooks(model).set_step, hooks(guide).set_step) if h is not None]
    labels = hooks(model).uses_labels
    t0 = time.perf_counter() - done.seconds
    if done.batches and counters.out_of_budget(cfg, done.seconds):
        return done  # interrupted on the step that spent the budget: the epoch ends here
    algorithm.begin_epoch(epoch)  # e.g. a learning-rate schedule by epoch
    batches = ds.batches(
        cfg.batch_size, shuffle=True, generator=g, labels=labels, indexed=True, device=device
    )
    for position, (index, args) in enumerate(batches):
        if position < done.batches:  # done before an interruption (drawn again: same bits)
            continue
        for hook in step_hooks:  # e.g. an annealed temperature
            hook(counters.step)
        with pyro.validation_enabled(cfg.validate):
            loss = algorithm.step(args, index)
        if not math.isfinite(loss):
            bar.close()
            raise _diverged(loss, epoch, counters.step + 1, out_dir)
        b = len(index)
        done.loss_sum += loss
        done.count += b
        done.batches += 1
        counters.step += 1
        bar.update(1)
        if counters.step % 50 == 0:
            bar.set_postfix(epoch=epoch, loss=f"{loss / b:.2f}")
        if callback is not None:
            callback(epoch, counters.step, loss / b)
        if stop.signum is not None and out_dir is not None:
            bar.close()
            done.seconds = time.perf_counter() - t0
            return done
        if counters.out_of_budget(cfg, time.perf_counter() - t0):
            break
    done.seconds = time.perf_counter() - t0
    return done


def _epoch_row(algorithm, model, guide, scored, cfg, done: EpochProgress, counters) -> dict:
    """The history row of a finished epoch (with the test and validation sets' ELBO and
    the model's metrics; ``scored``: the test set and the validation set, each or None)."""
    counters.train_seconds += done.seconds
    counters.seen += done.count
    row = {
        "epoch": done.epoch,
        "step": counters.step,
        "train_loss": done.loss_sum / max(done.count, 1),
        "epoch_seconds": done.seconds,
        "train_seconds": counters.train_seconds,
        "samples_per_second": done.count / done.seconds if done.seconds > 0 else 0.0,
        "datapoints": counters.seen,
        **algorithm.epoch_diagnostics(),
    }
    test, valid = scored
    if test is not None:
        row.update(evaluate_epoch(model, guide, test, cfg))
    if valid is not None:
        row.update(validation_columns(evaluate_epoch(model, guide, valid, cfg)))
    set_mode(True, model, guide)
    return row


def train(
    algorithm: Algorithm,
    model,
    guide,
    ds: Dataset,
    cfg: LoopConfig,
    record: dict,
    *,
    test: Dataset | None = None,
    validation: Dataset | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    reset: bool = True,
    progress: bool | None = None,
    verbose: bool = False,
    callback: Callable[[int, int, float], None] | None = None,
    epoch_callback: Callable[[dict], None] | None = None,
    desc: str = "train",
) -> Run:
    """Run ``algorithm`` for ``cfg.epochs`` epochs over ``ds``; see the module docstring.
    ``callback(epoch, step, loss)`` is called after every step, ``epoch_callback(row)`` with
    each epoch's history row once it is saved (e.g. experiment tracking). ``validation``,
    a split held out of the training set, is scored after every epoch (``valid_*``
    columns); with ``cfg.patience`` the run stops early on it and ends with the parameters
    of its best epoch (:mod:`.stopping`).

    With a run directory ``out``: the directory is locked for the duration
    (:func:`.rundir.lock`), and SIGINT / SIGTERM stop the run after the current step with a
    checkpoint from which ``resume=True`` continues bit for bit
    (:class:`~aevb.errors.RunInterrupted`)."""
    for scored in (ds, test, validation):
        if scored is not None:
            check_data(model, scored)
    if cfg.patience is not None and validation is None:
        raise ConfigError(
            f"schedule.patience = {cfg.patience} stops on a validation set, and there is "
            "none: hold one out of the training set (data.validation = N, aevb train "
            "--validation N) or pass validation= to fit"
        )
    out_dir = output_folder(out, resume)
    with rundir.lock(out_dir), _stop_on_signals(out_dir is not None) as stop:
        return _train(
            algorithm,
            (model, guide, ds, test, validation),
            cfg,
            record,
            out_dir,
            stop,
            resume=resume,
            reset=reset,
            progress=progress,
            verbose=verbose,
            callback=callback,
            epoch_callback=epoch_callback,
            desc=desc,
        )


def _train(
    algorithm,
    data,
    cfg,
    record,
    out_dir,
    stop,
    *,
    resume,
    reset,
    progress,
    verbose,
    callback,
    epoch_callback,
    desc,
) -> Run:
    """:func:`train` inside its lock and signal handlers (``data``: model, guide, the
    training, test and validation sets)."""
    model, guide, ds, test, valid = data
    device = resolve_device(cfg.device)
    record = {**record, "versions": versions(), "device": describe_device(device)}
    rows, resumed = _initialise(model, guide, ds, cfg, record, out_dir, resume, reset)
    _prepare(algorithm, model, guide, ds, test, cfg, resumed)
    if out_dir is not None:
        rundir.write_config(out_dir, record)
    done, counters = resume_point(rows, resumed)
    best = BestState(out_dir if cfg.patience is not None else None, resumed is not None)
    per_epoch = ds.num_batches(cfg.batch_size)
    bar = _bar(cfg, done, per_epoch, progress, desc)
    while _more(cfg, done, counters, rows):
        done = _train_epoch(
            algorithm, model, guide, ds, cfg, done, counters, bar, callback, out_dir, stop
        )
        if stop.signum is not None and out_dir is not None and done.batches < per_epoch:
            partial = {**asdict(done), "step": counters.step}
            save(out_dir, record, model, guide, algorithm, rows, device, partial)
            raise _interrupted(stop.signum, done.epoch, counters.step, out_dir)
        row = _epoch_row(algorithm, model, guide, (test, valid), cfg, done, counters)
        rows.append(row)
        _log_epoch(row, cfg, done, verbose)
        if cfg.patience is not None and best_epoch(rows, cfg.monitor) == done.epoch:
            best.keep(model, guide, done.epoch)  # before the checkpoint that counts it
        if out_dir is not None:
            save(out_dir, record, model, guide, algorithm, rows, device)
        if epoch_callback is not None:
            epoch_callback(dict(row))
        if stop.signum is not None and out_dir is not None:
            raise _interrupted(stop.signum, done.epoch, counters.step, out_dir)
        done = EpochProgress(done.epoch + 1)
    bar.close()
    run = Run(model, guide, pd.DataFrame(rows), record, out_dir)
    if cfg.patience is not None:
        run.extra["best_epoch"] = best.restore(model, guide, device)
        _adopt_checkpoint(model, guide, ds, cfg, device)  # networks in a user's closures too
    set_mode(False, model, guide)
    return run


def _bar(cfg: LoopConfig, done: EpochProgress, per_epoch: int, progress, desc: str) -> tqdm:
    """The progress bar over the minibatches left (shown on a terminal or with ``progress``)."""
    return tqdm(
        total=max(0, (cfg.epochs - done.epoch + 1) * per_epoch - done.batches),
        disable=not (sys.stderr.isatty() if progress is None else progress),
        unit="batch",
        leave=False,
        desc=desc,
    )


def _more(cfg: LoopConfig, done: EpochProgress, counters, rows: list[dict]) -> bool:
    """Whether to train (on): epochs are left, and at an epoch's start neither the step or
    time budget nor early stopping's patience is spent."""
    if done.epoch > cfg.epochs:
        return False
    if done.batches:  # an interrupted epoch continues
        return True
    return not (counters.out_of_budget(cfg) or patience_spent(rows, cfg.monitor, cfg.patience))


def _log_epoch(row: dict, cfg: LoopConfig, done: EpochProgress, verbose: bool) -> None:
    """The epoch's line on stderr (``verbose``)."""
    if not verbose:
        return
    msg = f"epoch {done.epoch}/{cfg.epochs}  loss/pt {row['train_loss']:.3f}"
    for key, name in (("test_elbo", "test ELBO"), (f"valid_{cfg.monitor}", cfg.monitor)):
        if key in row:
            msg += f"  {name} {row[key]:.3f}"
    tqdm.write(msg + f"  ({done.seconds:.1f} s)", file=sys.stderr)


def evaluate_epoch(model, guide, test: Dataset, cfg: LoopConfig) -> dict:
    """Test ELBO (when there is a guide) and the model's own metrics (FA evidence, GMVAE
    accuracy), timed."""
    t1 = time.perf_counter()
    row: dict = {}
    if guide is not None:
        b = ev.bounds(
            model,
            guide,
            test,
            cfg.test_num_samples,
            seed=cfg.seed,
            max_plate_nesting=cfg.max_plate_nesting,
            device=resolve_device(cfg.device),
        )
        row["test_elbo"] = float(b.elbo.mean())
    metrics = hooks(model).evaluation_metrics
    if metrics is not None:
        row.update(metrics(guide, test))
    row["eval_seconds"] = time.perf_counter() - t1
    return row


def save(
    out_dir: Path,
    record: dict,
    model,
    guide,
    algorithm,
    rows: list[dict],
    device: torch.device,
    partial: dict | None = None,
) -> None:
    """Checkpoint and history of the epoch just finished (:func:`.rundir.write_epoch`), with
    every tensor on the CPU (a device-free checkpoint) and the CUDA random state where a GPU
    was used; ``partial``: how far an interrupted epoch got (the resumed run continues it)."""
    state = {
        "config": record,
        "params": pyro.get_param_store().get_state(),
        "modules": rundir.module_states(model, guide),
        "algorithm": algorithm.state_dict(),
        "rng": torch.get_rng_state(),
        "history": rows,
    }
    if partial is not None:
        state["partial"] = partial
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
        state = to_cpu(state)
    rundir.write_epoch(out_dir, state, rows)


def is_frozen(name: str, prefixes) -> bool:
    """Whether param-store ``name`` falls under one of the frozen prefixes."""
    return any(name.startswith(p) for p in prefixes)


def apply_gradients(optim: Adam, batch: int, freeze=()) -> None:
    """One optimiser step, per datapoint, on every param-store parameter the step's backward
    pass reached (those with a ``.grad``) except the frozen ones.

    Finding parameters by their gradients rather than by tracing the step's ``pyro.param``
    sites saves a poutine pass per step and selects the same set: a parameter the loss does
    not depend on gets no gradient and no Adam update either way.
    """
    named = []
    for name, p in pyro.get_param_store().named_parameters():
        if p.grad is None:
            continue
        if freeze and is_frozen(name, freeze):
            p.grad = None
            continue
        named.append((name, p))
    optim.step(named, batch)
