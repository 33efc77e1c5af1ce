"""``aevb compare CONFIG.toml``: a grid of training runs, evaluated alike, as one tidy table.

A config names cells (model, data, inference back-end and its settings) and seeds::

    name = "estimators_fa"
    seeds = [0, 1]

    [defaults]                  # shared by every cell: keys of the RunSpec's flat form
                                # (:func:`aevb.spec.flat_keys`, the ``aevb train`` options)
    model = "fa"
    data = "fa-synthetic"
    epochs = 35

    [evaluate]                  # estimators run on every finished cell
    is = 1000                   # IS with k draws (needs a guide: SVI runs, MCEM's proposal)
    ais = 16                    # AIS with C chains (optional)
    ais_temperatures = 200      # shared by both: ais_temperatures, subset, batch_size, seed

    modules = ["my_models"]     # optional: modules registering your own models, imported first

    [engine]                    # optional: where the runs execute (default: name = "local")
    name = "ray"                # one Ray task per (cell, seed); see aevb.experiments.engines
    num_cpus = 1

    [tracking]                  # optional: log every run to MLflow (or --track mlflow[:URI])
    uri = "mlflow.db"           # a SQLite store (the default); a folder, or http://HOST:PORT

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

A cell may name a user's own model and guide as ``MODULE:NAME`` instead of a registered
name, as ``aevb train`` does (``model = "my_models:GaussVAE"``, ``guide =
"my_models:my_guide"``: a class, or a plain Pyro function ``model(x)`` / ``guide(x)``).

Every path in the config is relative to **the config file's folder**, not the current
directory: ``data`` files and folders, the ``modules`` and the modules of ``MODULE:NAME``
names (that folder is searched first, here and on Ray workers), and a ``[tracking]``
``uri`` that is a folder. So a grid runs the same from anywhere.

Each (cell, seed) becomes a :class:`~aevb.spec.RunSpec` (the cell's keys, the seed and the
estimators), checked for every cell before any trains, and is run by :func:`aevb.runs.run`
(the code ``aevb train`` and ``aevb evaluate`` run) in ``OUT/<cell label>-seed<S>``. Re-running the
command skips cells already evaluated and resumes unfinished ones (``--epochs N``: every cell
trains on to N epochs and is scored again, its earlier scores kept in
``RUN/evaluations/epochN/``); a failing cell is recorded
with its error and the grid goes on (``aevb compare`` then exits with status 1, once
everything is written). ``results.csv`` holds one row per (cell, seed) — settings,
seconds, throughput, bounds, model metrics, sampler diagnostics, library versions — and
``report.md`` a summary (mean and standard deviation over seeds) with figures.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd
import tomllib
from tqdm import tqdm  # text bars (tqdm.auto warns in a notebook without ipywidgets)

from aevb.data import DATASETS
from aevb.errors import ConfigError
from aevb.experiments.cells import cell_spec, results_row
from aevb.experiments.engines import Task, make_engine
from aevb.experiments.tracking import (
    Tracking,
    finish_grid_run,
    parse_track,
    start_grid_run,
    tracking_from_table,
)
from aevb.inference import rundir
from aevb.inference.stopping import scored_too_early
from aevb.registry import import_reference, is_reference, split_reference
from aevb.spec import EvaluationSpec, estimator_defaults, unknown_key

#: the short prefix a cell label gives a setting's value (k5, a0.5, K5, T2, L100)
_LABEL_PREFIX = {
    "particles": "k",
    "alpha": "a",
    "mcmc_steps": "K",
    "flow_steps": "T",
    "labels": "L",
}

_LABEL_KEYS = (
    "model",
    "guide",
    "flow_steps",
    "labels",
    "inference",
    "mcmc_steps",
    "objective",
    "particles",
    "alpha",
    "objective_options",
    "sampler",
    "preset",
)


def load_config(path: str | Path) -> dict:
    """Parse and check a grid config; return it with ``cells`` expanded by the defaults."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the grid config: {exc}") from exc
    cells = raw.get("cells")
    if not cells:
        raise ConfigError(f"{path}: no [[cells]] in the grid config")
    expanded = _expand(cells, raw.get("defaults", {}), path)
    modules = _import_modules(raw.get("modules", []), expanded, path)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a list of integers, got {seeds!r}")
    for cell in expanded:
        check_cell(cell, path)
    return {
        "name": raw.get("name", path.stem),
        "seeds": seeds,
        "cells": expanded,
        "evaluate": evaluations(raw.get("evaluate", {"is": 1000}), path),
        "reference": raw.get("reference", {}),
        "source": path.read_text(),
        "engine": _engine_table(raw.get("engine", {}), path),
        "tracking": tracking_from_table(_tracking_table(raw.get("tracking"), path), path),
        "modules": (modules, str(path.resolve().parent)),
    }


def _expand(cells, defaults: dict, path: Path) -> list[dict]:
    """The cells with the ``[defaults]``, their labels, and ``data`` paths relative to the
    config's folder made absolute (registered dataset names are left as they are)."""
    expanded = []
    for i, cell in enumerate(cells):
        full = {**defaults, **cell}
        if "model" not in full:
            raise ConfigError(f"{path}: cell {i + 1} names no model (set it in [defaults])")
        full.setdefault("label", cell_label(full))
        source = full.get("data")
        if isinstance(source, str) and source not in DATASETS and not Path(source).is_absolute():
            full["data"] = str(path.resolve().parent / source)
        expanded.append(full)
    labels = [c["label"] for c in expanded]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: two cells share a label {labels}; give them label = ...")
    return expanded


def _tracking_table(table, path: Path):
    """A ``[tracking]`` table whose ``uri`` is a relative folder, made relative to the
    config's folder."""
    uri = table.get("uri") if isinstance(table, dict) else None
    if not isinstance(uri, str) or ":" in uri or Path(uri).is_absolute():
        return table
    return {**table, "uri": str(path.resolve().parent / uri)}


def check_cell(cell: dict, path: Path) -> None:
    """Refuse a cell before anything trains: every key must be a setting of the spec's flat
    form (spelt out in full; the closest valid keys are named), and its value of the right
    type and range."""
    try:
        cell_spec(cell, 0)
    except ConfigError as exc:
        raise ConfigError(f"{path}: cell {cell.get('label', '?')!r}: {exc}") from None


#: an ``[evaluate]`` table's keys: ``is = K`` and ``ais = C`` name the estimators, the rest
#: (the other settings of an estimate, :class:`~aevb.spec.EvaluationSpec`) apply to each
_EVALUATE_SHARED = {f.name for f in fields(EvaluationSpec)} - {"estimator", "num_samples"}


def evaluations(table: dict, path: Path | str = "") -> tuple[EvaluationSpec, ...]:
    """The estimators of an ``[evaluate]`` table (``is = 1000``, ``ais = 16``, shared
    ``ais_temperatures``, ``subset``, ...) as :class:`~aevb.spec.EvaluationSpec` s."""
    valid = set(estimator_defaults()) | _EVALUATE_SHARED
    for key in table:
        if key not in valid:
            raise ConfigError(f"{path}: [evaluate]: {unknown_key(key, valid)}")
    shared = {k: v for k, v in table.items() if k in _EVALUATE_SHARED}
    try:
        return tuple(
            EvaluationSpec.from_dict({"estimator": name, "num_samples": table[name], **shared})
            for name in estimator_defaults()
            if name in table
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: [evaluate]: {exc}") from None


def _engine_table(table, path: Path) -> dict:
    """The ``[engine]`` table, checked (an unknown key or engine name is an error)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [engine] must be a table, got {table!r}")
    try:
        make_engine(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return table


def _import_modules(modules, cells: list[dict], path: Path) -> list[str]:
    """Import the config's ``modules`` (a user's models and guides registering themselves,
    see :func:`aevb.models.register`) and those of the cells' ``MODULE:NAME`` models and
    guides, looked up beside the config file first; return them all (what every worker
    imports before it runs a cell)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{path}: modules must be a list of module names, got {modules!r}")
    named = []
    for cell in cells:
        for key in ("model", "guide"):
            if is_reference(cell.get(key)):
                try:
                    named.append(split_reference(cell[key], key)[0])
                except ConfigError as exc:
                    raise ConfigError(f"{path}: cell {cell['label']!r}: {exc}") from None
    wanted = list(dict.fromkeys([*modules, *named]))
    folder = str(path.resolve().parent)
    if wanted:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)  # the config's folder first, also before the cwd
    for name in wanted:
        try:
            importlib.import_module(name)
        except (ImportError, SyntaxError) as exc:
            raise ConfigError(f"{path}: cannot import module {name!r}: {exc}") from exc
    for cell in cells:  # a name the module lacks is refused before any cell trains
        for key in ("model", "guide"):
            if is_reference(cell.get(key)):
                try:
                    import_reference(cell[key], key)
                except ConfigError as exc:
                    raise ConfigError(f"{path}: cell {cell['label']!r}: {exc}") from None
    return wanted


def cell_label(cell: dict) -> str:
    """A readable, unique-enough name: model-inference-objective-k... from the cell's keys."""
    parts: list[str] = []
    for key in _LABEL_KEYS:
        value = cell.get(key)
        if value is None or value == {} or (key == "inference" and value == "svi"):
            continue
        if isinstance(value, dict):  # objective_options: steps5, ... in the keys' order
            parts.extend(f"{k}{v}" for k, v in sorted(value.items()))
            continue
        prefix = _LABEL_PREFIX.get(key, "")
        parts.append(f"{prefix}{value}".replace(":", "."))  # MODULE:NAME -> MODULE.NAME
    return "-".join(parts)


def grid_tasks(config: dict, out: Path, tracking: Tracking | None = None) -> list[Task]:
    """The grid's (cell, seed) tasks, in the grid's order, as plain data."""
    evaluate = [ev.to_dict() for ev in config["evaluate"]]
    track = None if tracking is None else asdict(tracking)
    tasks: list[Task] = []
    for cell in config["cells"]:
        for seed in config["seeds"]:
            run_dir = str(out / f"{cell['label']}-seed{seed}")
            modules, folder = config["modules"]
            tasks.append(Task(len(tasks), cell, seed, run_dir, evaluate, modules, folder, track))
    return tasks


def run_grid(
    config_path: str | Path,
    out: str | Path | None = None,
    quiet: bool = False,
    device: str | None = None,
    engine: str | None = None,
    address: str | None = None,
    track: str | None = None,
    epochs: int | None = None,
    only: list[str] | None = None,
):
    """Run every (cell, seed) of the config on its engine (``[engine]``, or ``engine`` /
    ``address`` from the command line); write results.csv as cells finish and report.md at
    the end; return the results frame. ``device`` (e.g. ``"cuda"``) overrides every cell's;
    ``track`` (``mlflow[:URI]``, or the config's ``[tracking]``) logs every run to MLflow,
    nested under one run for the grid. Cells already evaluated are read back, not run
    again. ``epochs`` overrides every cell's: runs scored after fewer epochs resume, train
    on and are scored again (their earlier estimates kept in ``evaluations/epochN/``);
    ``only`` (cell labels) runs those cells alone."""
    config = _overridden(load_config(config_path), config_path, device, epochs, only)
    runner = _engine(config, engine, address)
    out = Path(out or f"runs/compare-{config['name']}")
    out.mkdir(parents=True, exist_ok=True)
    wanted = {ev.key: (ev.estimator, ev.samples) for ev in config["evaluate"]}
    tracking = parse_track(track) if track is not None else config["tracking"]
    if tracking is not None:
        tracking = start_grid_run(tracking, config["name"], config["source"])
    tasks = grid_tasks(config, out, tracking)
    rows, todo = _already_done(tasks, wanted)
    bar = tqdm(
        total=len(tasks),
        initial=len(rows),
        disable=quiet or not sys.stderr.isatty(),
        unit="run",
        desc=f"{config['name']} ({runner.name})",
    )
    for task, row in runner.map(todo):
        rows[task.index] = row
        failed = sum(r["status"] != "ok" for r in rows.values())
        bar.update(1)
        bar.set_postfix(running=len(tasks) - len(rows), failed=failed)
        if not quiet:
            status = row["status"] if row["status"] != "ok" else _short(row)
            tqdm.write(f"{task.cell['label']} seed {task.seed}: {status}", file=sys.stdout)
        _write_results(rows, out)
    bar.close()
    results = _write_results(rows, out)
    if tracking is not None:
        finish_grid_run(tracking, int((results["status"] != "ok").sum()))
    from aevb.experiments.report import write_report

    write_report(config, results, out)
    results.attrs["out"] = str(out)
    return results


def _overridden(config: dict, path, device: str | None, epochs: int | None, only) -> dict:
    """The config with the command line's device and epochs over every cell's, and only the
    cells labelled ``only`` (results.csv and report.md then hold them alone)."""
    cells = config["cells"]
    if device is not None:
        cells = [{**cell, "device": device} for cell in cells]
    if epochs is not None:
        cells = [{**cell, "epochs": epochs} for cell in cells]
    if only is not None:
        unknown = sorted(set(only) - {cell["label"] for cell in cells})
        if unknown:
            raise ConfigError(f"{path}: no cell labelled {unknown}")
        cells = [cell for cell in cells if cell["label"] in only]
    return {**config, "cells": cells}


def _engine(config: dict, engine: str | None, address: str | None):
    """The config's ``[engine]``, with the command line's name and address over it."""
    table = dict(config["engine"])
    if engine is not None:
        table["name"] = engine
    if address is not None:
        table["address"] = address
    return make_engine(table)


def _already_done(tasks: list, wanted: dict) -> tuple[dict[int, dict], list]:
    """The rows of the cells already evaluated (read back from their run directories) and
    the tasks still to run: a re-run submits nothing for the cells that are done (a cell
    scored after fewer epochs than it now asks for is not done)."""
    rows: dict[int, dict] = {}
    todo = []
    for task in tasks:
        done = rundir.read_evaluations(task.out)
        longer = scored_too_early(task.out, task.cell.get("epochs"), task.cell.get("patience"))
        if wanted and all(key in done for key in wanted) and not longer:
            rows[task.index] = results_row(task.cell, task.seed, Path(task.out), done, wanted)
        else:
            todo.append(task)
    return rows, todo


def _write_results(rows: dict[int, dict], out: Path) -> pd.DataFrame:
    """``results.csv`` of the rows so far, in the grid's order (written as cells finish, so
    an interrupted driver loses nothing)."""
    frame = pd.DataFrame([rows[i] for i in sorted(rows)])
    frame.to_csv(out / "results.csv", index=False)
    return frame


def _short(row: dict) -> str:
    parts = [f"{row['train_seconds']:.0f} s"]
    for key in ("test_elbo", "test_ll_is", "test_ll_ais", "test_log_evidence_exact"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key} {value:.4f}")
    return ", ".join(parts)
