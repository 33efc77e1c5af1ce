"""The one training loop: stochastic variational inference for any (model, guide, objective).

Each step draws a minibatch x_1..x_B, evaluates the objective's surrogate for the batch (summed
over datapoints, never rescaled, so RenyiELBO stays a per-datapoint bound), divides the
gradients by B (the loss per datapoint) and takes an Adam step on every parameter the step
touched. Works for the package's models and for plain Pyro functions ``model(x)``,
``guide(x)`` written by a user.

A run directory receives ``config.json`` (settings, seed, library versions), ``history.csv``
(one row per epoch) and ``checkpoint.pt`` (parameters, optimiser state, random state),
written atomically after every epoch; ``resume=True`` continues from it to the same result
as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer.util import zero_grads
from tqdm.auto import tqdm

from aevb.data.dataset import Dataset, as_dataset
from aevb.errors import ConfigError, TrainingDiverged
from aevb.inference import evaluate as ev
from aevb.inference.objectives import OBJECTIVES, check_compatible, make_objective

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
CONFIG = "config.json"


@dataclass(frozen=True)
class FitConfig:
    """Settings of one SVI run (recorded in ``config.json``)."""

    objective: str = "trace"
    #: particles per datapoint: k of the IWAE bound, or MC samples of the ELBO
    num_particles: int = 1
    #: Renyi alpha, only for the ``renyi`` objective
    alpha: float | None = None
    epochs: int = 10
    #: 20, Burda et al.'s minibatch size; it reached a better log-likelihood in 10 epochs
    #: than 100 did for the same recipe on MNIST (see the README)
    batch_size: int = 20
    #: Adam with Burda et al.'s settings: lr 1e-3, betas (0.9, 0.999), eps 1e-4
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-4
    seed: int = 0
    #: draws per test datapoint for the per-epoch test ELBO
    test_num_samples: int = 1
    #: parameter-name prefixes held fixed (e.g. ("encoder",) trains the model only)
    freeze: tuple[str, ...] = ()
    #: stop after this many gradient steps in total (the last epoch may be partial)
    max_steps: int | None = None
    max_plate_nesting: int = 1


@dataclass
class Run:
    """The outcome of :func:`fit`: the trained pair, its history and where it was written."""

    model: Any
    guide: Any
    history: pd.DataFrame
    config: dict
    out: Path | None = None
    extra: dict = field(default_factory=dict)


def versions() -> dict[str, str]:
    import numpy
    import pyro as _pyro

    import aevb

    return {
        "aevb": aevb.__version__,
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


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _reset_parameters(obj) -> None:
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


def _is_frozen(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def _check_data(model, ds: Dataset) -> None:
    """The model's own data check on (up to) 2000 transformed datapoints."""
    check = getattr(model, "check_data", None)
    if check is None:
        return
    head = ds.subset(2000)
    check(head.transform(head.x, torch.Generator().manual_seed(0)))


def _auto_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def fit(
    model,
    guide=None,
    train=None,
    objective: str = "trace",
    *,
    test=None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    verbose: bool = False,
    reset: bool = True,
    meta: dict | None = None,
    callback: Callable[[int, int, float], None] | None = None,
    **settings,
) -> Run:
    """Train ``guide`` and ``model`` by SVI on ``train``; return a :class:`Run`.

    :param model: a Pyro model ``model(x)`` (or ``model(x, y)`` if ``model.uses_labels``).
    :param guide: a Pyro guide with the same signature; None -> :func:`aevb.guides.default_for`.
    :param train: a :class:`~aevb.data.Dataset`, a tensor/array [N, ...] or an ``(x, y)`` pair.
    :param objective: a key of :data:`aevb.inference.objectives.OBJECTIVES`.
    :param test: optional held-out data; its ELBO is recorded after every epoch.
    :param out: run directory (config.json, history.csv, checkpoint.pt); None keeps nothing.
    :param resume: continue from ``out/checkpoint.pt`` up to ``epochs`` in total.
    :param progress: a tqdm bar on stderr; None -> only when stderr is a terminal.
    :param reset: re-initialise ``nn.Module`` parameters from ``seed`` on a fresh start, so the
        seed alone fixes the run.
    :param callback: called as ``callback(epoch, step, loss_per_datapoint)`` after every step
        (for per-step traces such as the FA experiments; keep it cheap).
    :param settings: fields of :class:`FitConfig` (``num_particles``, ``epochs``, ``lr``, ...).

    Example:
        >>> import torch
        >>> from aevb import inference, models
        >>> x = torch.bernoulli(torch.full((64, 6), 0.3))
        >>> model = models.build("vae", x_dim=6, z_dim=2, hidden=(8,))
        >>> run = inference.fit(model, None, x, "iwae", num_particles=5, epochs=2, batch_size=16)
        >>> list(run.history["epoch"])
        [1, 2]
    """
    unknown = set(settings) - {f for f in FitConfig.__dataclass_fields__}
    if unknown:
        raise ConfigError(f"unknown fit setting(s) {sorted(unknown)}")
    if train is None:
        raise ConfigError("fit needs training data")
    cfg = FitConfig(objective=objective, **settings)
    if guide is None:
        from aevb import guides as _guides

        guide = _guides.default_for(model)
    ds = as_dataset(train)
    test_ds = None if test is None else as_dataset(test).fixed(0)
    _check_data(model, ds)
    if test_ds is not None:
        _check_data(model, test_ds)
    labels = bool(getattr(model, "uses_labels", False))

    out_dir = Path(out) if out is not None else None
    ckpt_path = out_dir / CHECKPOINT if out_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not resume:
        raise ConfigError(
            f"{out_dir} already holds a run; pass resume=True (--resume) to continue it or "
            "choose another output folder"
        )
    if resume and out_dir is None:
        raise ConfigError("resume needs the run directory (out=...)")

    record = {
        "fit": asdict(cfg),
        "model": describe(model),
        "guide": describe(guide),
        "data": {
            "train": ds.name,
            "test": None if test_ds is None else test_ds.name,
            "num_train": len(ds),
            "num_test": None if test_ds is None else len(test_ds),
            "binarize": ds.binarize,
        },
        "versions": versions(),
        **(meta or {}),
    }

    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    elbo = make_objective(cfg.objective, cfg.num_particles, cfg.alpha, cfg.max_plate_nesting)
    optim = pyro.optim.Adam(  # type: ignore[attr-defined]
        {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps}
    )
    rows: list[dict] = []
    start_epoch = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        _check_resumable(state["config"], record)
        _load_params(model, guide, state)
        optim.set_state(state["optim"])
        torch.set_rng_state(state["rng"])
        rows = state["history"]
        start_epoch = rows[-1]["epoch"] if rows else 0
    else:
        if reset:
            _reset_parameters(model)
            _reset_parameters(guide)
        init = getattr(model, "init_from_data", None)
        if init is not None:
            init(ds.transform(ds.x, torch.Generator().manual_seed(cfg.seed)).mean(0))

    # refuse a wrong (model, guide, objective) before anything is written; the check must
    # not touch the global random state, or a resumed run would draw differently
    _set_mode(True, model, guide)
    with torch.random.fork_rng(devices=[]):
        g = torch.Generator().manual_seed(cfg.seed)
        first = next(ds.batches(min(cfg.batch_size, len(ds)), labels=labels, generator=g))
        check_compatible(cfg.objective, model, guide, *first, alpha=cfg.alpha)
    train_guide = OBJECTIVES[cfg.objective].prepare_guide(guide)
    hooks = [h for h in (getattr(model, "set_step", None), getattr(guide, "set_step", None)) if h]

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(out_dir / CONFIG, lambda p: p.write_text(json.dumps(record, indent=2)))

    nb = ds.num_batches(cfg.batch_size)
    show = _auto_progress(progress)
    bar = tqdm(
        total=(cfg.epochs - start_epoch) * nb,
        disable=not show,
        unit="batch",
        leave=False,
        desc=f"{describe(model).get('name', 'model')}/{cfg.objective}",
    )
    step = rows[-1]["step"] if rows else 0
    train_seconds = rows[-1]["train_seconds"] if rows else 0.0
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        t0 = time.perf_counter()
        loss_sum, count = 0.0, 0
        for args in ds.batches(cfg.batch_size, shuffle=True, generator=g, labels=labels):
            b = args[0].shape[0]
            for hook in hooks:  # e.g. an annealed temperature
                hook(step)
            loss = _step(elbo, optim, model, train_guide, args, b, cfg.freeze)
            if not math.isfinite(loss):
                bar.close()
                where = (
                    f"{ckpt_path} (epoch {epoch - 1})"
                    if ckpt_path and ckpt_path.exists()
                    else "none written"
                )
                raise TrainingDiverged(
                    f"loss became {loss} at epoch {epoch}, step {step + 1}; stopping. Last good "
                    f"checkpoint: {where}. Try a smaller --lr."
                )
            loss_sum += loss
            count += b
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{loss / b:.2f}")
            if callback is not None:
                callback(epoch, step, loss / b)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / count,
            "epoch_seconds": epoch_seconds,
            "train_seconds": train_seconds,
            "samples_per_second": count / epoch_seconds,
        }
        if test_ds is not None:
            t1 = time.perf_counter()
            b_ = ev.bounds(
                model,
                guide,
                test_ds,
                cfg.test_num_samples,
                seed=cfg.seed,
                max_plate_nesting=cfg.max_plate_nesting,
            )
            row["test_elbo"] = float(b_.elbo.mean())
            metrics = getattr(model, "evaluation_metrics", None)  # FA evidence, GMVAE accuracy
            if metrics is not None:
                row.update(metrics(guide, test_ds))
            row["eval_seconds"] = time.perf_counter() - t1
            _set_mode(True, model, guide)
        rows.append(row)
        if verbose:
            msg = f"epoch {epoch}/{cfg.epochs}  loss/pt {row['train_loss']:.3f}"
            if "test_elbo" in row:
                msg += f"  test ELBO {row['test_elbo']:.3f}"
            tqdm.write(msg + f"  ({epoch_seconds:.1f} s)", file=sys.stderr)
        if out_dir is not None:
            _save(out_dir, record, model, guide, optim, rows)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    bar.close()
    _set_mode(False, model, guide)
    return Run(model, guide, pd.DataFrame(rows), record, out_dir)


def _set_mode(training: bool, *objs) -> None:
    """``nn.Module.train()``/``eval()``: models may train differently (e.g. a relaxed y)."""
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            obj.train(training)


def _save(out_dir: Path, record: dict, model, guide, optim, rows: list[dict]) -> None:
    """Write the checkpoint and history of the epoch just finished, each atomically."""
    state = {
        "config": record,
        "params": pyro.get_param_store().get_state(),
        "modules": _module_states(model, guide),
        "optim": optim.get_state(),
        "rng": torch.get_rng_state(),
        "history": rows,
    }
    _atomic_write(out_dir / CHECKPOINT, lambda p: torch.save(state, p))
    frame = pd.DataFrame(rows)
    _atomic_write(out_dir / HISTORY, lambda p: frame.to_csv(p, index=False))


def _step(elbo, optim, model, guide, args, batch: int, freeze: Sequence[str]) -> float:
    """One SVI step; returns the summed loss of the batch."""
    with poutine.trace(param_only=True) as capture:
        loss = elbo.loss_and_grads(model, guide, *args)
    params = []
    for name, site in capture.trace.nodes.items():
        p = site["value"].unconstrained()  # type: ignore[union-attr]
        if freeze and _is_frozen(name, freeze):
            p.grad = None
            continue
        if p.grad is not None:
            p.grad.div_(batch)
        params.append(p)
    optim(params)
    zero_grads(params)
    return float(loss)


def _module_states(*objs) -> list:
    return [o.state_dict() if isinstance(o, torch.nn.Module) else None for o in objs]


def _load_params(model, guide, state: dict) -> None:
    for obj, sd in zip((model, guide), state.get("modules", [None, None])):
        if sd is not None and isinstance(obj, torch.nn.Module):
            obj.load_state_dict(sd)
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state["params"])


def _check_resumable(saved: dict, now: dict) -> None:
    def norm(record: dict) -> dict:
        fit = {k: v for k, v in record["fit"].items() if k != "epochs"}
        return json.loads(json.dumps({"fit": fit, "model": record.get("model")}))

    a, b = norm(saved), norm(now)
    if a != b:
        diff = {
            k: (a["fit"].get(k), b["fit"].get(k))
            for k in a["fit"]
            if a["fit"].get(k) != b["fit"].get(k)
        }
        raise ConfigError(
            f"cannot resume: the run was started with different settings {diff or a['model']}"
        )


def load_run(run_dir: str | Path):
    """Rebuild a registered model and guide from ``run_dir`` with its last checkpoint.

    Returns ``(model, guide, record, history)``.
    """
    from aevb import guides, models

    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.exists():
        raise ConfigError(f"{run_dir}: no {CHECKPOINT}; is this a run directory?")
    state = torch.load(ckpt, weights_only=False)
    record = state["config"]
    mspec, gspec = record["model"], record["guide"]
    if "name" not in mspec or "name" not in gspec:
        raise ConfigError(
            f"{run_dir} was trained with user-defined callables ({mspec}); rebuild them in "
            "Python and load the checkpoint's params there"
        )
    model = models.build(mspec["name"], **mspec["config"])
    guide = guides.from_config(gspec["name"], gspec["config"], model)
    _load_params(model, guide, state)
    return model, guide, record, pd.DataFrame(state["history"])
