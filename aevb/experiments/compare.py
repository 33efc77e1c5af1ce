"""``aevb compare CONFIG.toml``: a grid of training runs, evaluated alike, as one tidy table.

A config names cells (model, data, inference back-end and its settings) and seeds::

    name = "estimators_fa"
    seeds = [0, 1]

    [defaults]                  # shared by every cell: keys of the RunSpec's flat form
                                # (:data:`aevb.spec.FLAT_KEYS`, the ``aevb train`` options)
    model = "fa"
    data = "fa-synthetic"
    epochs = 35

    [evaluate]                  # estimators run on every finished cell
    is = 1000                   # IS with k draws (needs a guide: SVI runs, MCEM's proposal)
    ais = 16                    # AIS with C chains (optional)
    ais_temperatures = 200      # shared by both: ais_temperatures, subset, batch_size, seed

    modules = ["my_models"]     # optional: your own models, imported first (beside this file)

    [reference]                 # optional: published figures per cell label, for report.md
    source = "Burda et al. 2015, Table 1"
    note = "they trained 3,280 passes; these cells 5"
    [reference.cells.k1]
    test_ll_is = -86.76
    active_units = 19

    [[cells]]
    objective = "meanfield"

    [[cells]]
    objective = "iwae"
    particles = 10

    [[cells]]
    inference = "mcem"
    sampler = "batched-hmc"

Each (cell, seed) becomes a :class:`~aevb.spec.RunSpec` (the cell's keys, the seed and the
estimators), checked for every cell before any trains, and is run by :func:`aevb.runs.run`
(the code ``aevb train`` and ``aevb evaluate`` run) in ``OUT/<cell label>-seed<S>``. Re-running the
command skips cells already evaluated and resumes unfinished ones; a failing cell is recorded
with its error and the grid goes on. ``results.csv`` holds one row per (cell, seed) — settings,
seconds, throughput, bounds, model metrics, sampler diagnostics, library versions — and
``report.md`` a summary (mean and standard deviation over seeds) with figures.
"""

from __future__ import annotations

import importlib
import math
import sys
import traceback
from pathlib import Path

import pandas as pd
import tomllib

from aevb import runs
from aevb.errors import ConfigError
from aevb.spec import ESTIMATOR_DEFAULTS, FLAT_KEYS, EvaluationSpec, RunSpec, unknown_key

#: settings a cell may carry besides those of ``aevb train`` (handled here)
_OWN = {"label"}
_LABEL_KEYS = ("model", "inference", "objective", "particles", "alpha", "sampler", "preset")


def load_config(path: str | Path) -> dict:
    """Parse and check a grid config; return it with ``cells`` expanded by the defaults."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the grid config: {exc}") from exc
    _import_modules(raw.get("modules", []), path)
    cells = raw.get("cells")
    if not cells:
        raise ConfigError(f"{path}: no [[cells]] in the grid config")
    defaults = raw.get("defaults", {})
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a list of integers, got {seeds!r}")
    expanded = []
    for i, cell in enumerate(cells):
        full = {**defaults, **cell}
        if "model" not in full:
            raise ConfigError(f"{path}: cell {i + 1} names no model (set it in [defaults])")
        full.setdefault("label", cell_label(full))
        expanded.append(full)
    labels = [c["label"] for c in expanded]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: two cells share a label {labels}; give them label = ...")
    for cell in expanded:
        check_cell(cell, path)
    return {
        "name": raw.get("name", path.stem),
        "seeds": seeds,
        "cells": expanded,
        "evaluate": evaluations(raw.get("evaluate", {"is": 1000}), path),
        "reference": raw.get("reference", {}),
        "source": path.read_text(),
    }


#: keys of the spec's flat form that the grid sets itself, per seed
_GRID_SET = {"seed"}


def cell_keys() -> set[str]:
    """The keys a cell may hold: the RunSpec's flat form (:data:`aevb.spec.FLAT_KEYS`, the
    ``aevb train`` options) but the seed, and ``label``."""
    return (set(FLAT_KEYS) - _GRID_SET) | _OWN


def cell_spec(cell: dict, seed: int, evaluation=()) -> RunSpec:
    """The :class:`~aevb.spec.RunSpec` of one (cell, seed): the cell's flat keys (the
    label aside) with the seed, and the grid's estimators."""
    for key in cell:
        if key not in cell_keys():
            raise unknown_key(key, cell_keys())
    flat = {k: v for k, v in cell.items() if k not in _OWN}
    spec = RunSpec.from_flat({**flat, "seed": seed})
    return spec.replace(evaluation=tuple(evaluation))


def check_cell(cell: dict, path: Path) -> None:
    """Refuse a cell before anything trains: every key must be a setting of the spec's flat
    form (spelt out in full; the closest valid keys are named), and its value of the right
    type and range."""
    try:
        cell_spec(cell, 0)
    except ConfigError as exc:
        raise ConfigError(f"{path}: cell {cell.get('label', '?')!r}: {exc}") from None


#: an ``[evaluate]`` table's keys: ``is = K`` and ``ais = C`` name the estimators, the rest
#: apply to each
_EVALUATE_SHARED = {"ais_temperatures", "subset", "batch_size", "seed"}


def evaluations(table: dict, path: Path | str = "") -> tuple[EvaluationSpec, ...]:
    """The estimators of an ``[evaluate]`` table (``is = 1000``, ``ais = 16``, shared
    ``ais_temperatures``, ``subset``, ...) as :class:`~aevb.spec.EvaluationSpec` s."""
    valid = set(ESTIMATOR_DEFAULTS) | _EVALUATE_SHARED
    for key in table:
        if key not in valid:
            raise ConfigError(f"{path}: [evaluate]: {unknown_key(key, valid)}")
    shared = {k: v for k, v in table.items() if k in _EVALUATE_SHARED}
    try:
        return tuple(
            EvaluationSpec.from_dict({"estimator": name, "num_samples": table[name], **shared})
            for name in ESTIMATOR_DEFAULTS
            if name in table
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: [evaluate]: {exc}") from None


def _import_modules(modules, path: Path) -> None:
    """Import the config's ``modules`` (a user's models and guides registering themselves,
    see :func:`aevb.models.register`), looked up beside the config file first."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{path}: modules must be a list of module names, got {modules!r}")
    folder = str(path.resolve().parent)
    if modules and folder not in sys.path:
        sys.path.insert(0, folder)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{path}: cannot import module {name!r}: {exc}") from exc


def cell_label(cell: dict) -> str:
    """A readable, unique-enough name: model-inference-objective-k... from the cell's keys."""
    parts = []
    for key in _LABEL_KEYS:
        value = cell.get(key)
        if value is None or (key == "inference" and value == "svi"):
            continue
        prefix = {"particles": "k", "alpha": "a"}.get(key, "")
        parts.append(f"{prefix}{value}")
    return "-".join(parts)


def run_cell(cell: dict, seed: int, out: Path, evaluate) -> dict:
    """Train (or resume) and evaluate one (cell, seed); return its results row.
    ``evaluate``: the grid's estimators (:func:`evaluations`)."""
    spec = cell_spec(cell, seed, evaluate)
    done = runs.run(spec, out)
    return results_row(
        cell, seed, out, done, {ev.key: (ev.estimator, ev.samples) for ev in spec.evaluation}
    )


def results_row(cell: dict, seed: int, out: Path, done: dict, wanted: dict) -> dict:
    """One tidy ``results.csv`` row for a finished (cell, seed): settings, seconds, bounds,
    diagnostics.
    """
    from aevb.inference import rundir

    record = rundir.read_config(out)
    history = rundir.read_history(out)
    last = history.iloc[-1]
    fit = record["fit"]
    row = {
        "cell": cell["label"],
        "model": cell["model"],
        "data": cell.get("data", "mnist"),
        "inference": record.get("inference", "svi"),
        "objective": fit.get("objective"),
        "k": fit.get("num_particles"),
        "alpha": fit.get("alpha"),
        "sampler": fit.get("sampler"),
        "seed": seed,
        "epochs": int(last["epoch"]),
        "train_seconds": float(last["train_seconds"]),
        "samples_per_second": float(history["samples_per_second"].mean()),
        "status": "ok",
        "error": "",
        "run_dir": str(out),
    }
    for key in ("accept_prob", "step_size", "divergences"):
        if key in history:
            row[key] = float(history[key].mean())
    for key, (estimator, k) in wanted.items():
        result = done[key]
        row["test_elbo"] = result["test_elbo"]
        row[f"test_ll_{estimator}"] = result["test_log_likelihood"]
        row[f"{estimator}_samples"] = k
        if "test_log_likelihood_stderr" in result:
            row[f"test_ll_{estimator}_stderr"] = result["test_log_likelihood_stderr"]
        row["active_units"] = result["active_units"]
        for extra in ("test_log_evidence_exact", "true_model_log_evidence", "cluster_accuracy"):
            if extra in result:
                row[extra] = result[extra]
    exact = row.get("test_log_evidence_exact")
    if exact is not None:  # distance of every estimate from the exact evidence (FA)
        for key in ("test_elbo", "test_ll_is", "test_ll_ais"):
            if key in row:
                row[f"{key}_minus_exact"] = row[key] - exact
    row.update({f"version_{k}": v for k, v in record.get("versions", {}).items()})
    return row


def run_grid(
    config_path: str | Path,
    out: str | Path | None = None,
    quiet: bool = False,
    device: str | None = None,
):
    """Run every (cell, seed) of the config; write results.csv and report.md; return the
    results frame. ``device`` (e.g. ``"cuda"``) overrides every cell's."""
    config = load_config(config_path)
    if device is not None:
        config["cells"] = [{**cell, "device": device} for cell in config["cells"]]
    out = Path(out or f"runs/compare-{config['name']}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cell in config["cells"]:
        for seed in config["seeds"]:
            run_dir = out / f"{cell['label']}-seed{seed}"
            try:
                row = run_cell(cell, seed, run_dir, config["evaluate"])
            except Exception as exc:  # one failing cell must not stop the grid
                row = {
                    "cell": cell["label"],
                    "model": cell["model"],
                    "seed": seed,
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "run_dir": str(run_dir),
                }
                (out / f"{cell['label']}-seed{seed}.error.txt").write_text(traceback.format_exc())
            rows.append(row)
            if not quiet:
                status = row["status"] if row["status"] != "ok" else _short(row)
                print(f"{cell['label']} seed {seed}: {status}", flush=True)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    results = pd.DataFrame(rows)
    from aevb.experiments.report import write_report

    write_report(config, results, out)
    return results


def _short(row: dict) -> str:
    parts = [f"{row['train_seconds']:.0f} s"]
    for key in ("test_elbo", "test_ll_is", "test_ll_ais", "test_log_evidence_exact"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key} {value:.4f}")
    return ", ".join(parts)
