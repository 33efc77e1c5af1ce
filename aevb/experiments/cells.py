"""One grid cell as a run: its keys as a :class:`~aevb.spec.RunSpec`, trained and evaluated
by :mod:`aevb.runs`, and its tidy ``results.csv`` row. Shared by :mod:`.compare` (the
driver) and :mod:`.engines` (which run cells here or on Ray workers)."""

from __future__ import annotations

from pathlib import Path

from aevb import runs
from aevb.spec import RunSpec, flat_keys, unknown_key

#: settings a cell may carry besides those of ``aevb train`` (handled here)
OWN_KEYS = {"label"}

#: keys of the spec's flat form that the grid sets itself, per seed
_GRID_SET = {"seed"}


def cell_keys() -> set[str]:
    """The keys a cell may hold: the RunSpec's flat form (:func:`aevb.spec.flat_keys`, the
    ``aevb train`` options) but the seed, and ``label``."""
    return (set(flat_keys()) - _GRID_SET) | OWN_KEYS


def cell_spec(cell: dict, seed: int, evaluation=()) -> RunSpec:
    """The :class:`~aevb.spec.RunSpec` of one (cell, seed): the cell's flat keys (the
    label aside) with the seed, and the grid's estimators."""
    for key in cell:
        if key not in cell_keys():
            raise unknown_key(key, cell_keys())
    flat = {k: v for k, v in cell.items() if k not in OWN_KEYS}
    spec = RunSpec.from_flat({**flat, "seed": seed})
    return spec.replace(evaluation=tuple(evaluation))


#: an estimate's trust keys (:mod:`aevb.inference.psis`) -> their ``results.csv`` column
TRUST_COLUMNS = {
    "test_log_likelihood_se": "test_ll_{e}_se",
    "test_log_likelihood_mcse": "test_ll_{e}_mcse",
    "khat_max": "{e}_khat_max",
    "khat_share_over_threshold": "{e}_khat_share",
    "flagged": "{e}_flagged",
}


def trust_columns(estimator: str, result: dict) -> dict:
    """The ``results.csv`` columns of how far one estimate can be trusted (those it has)."""
    return {
        column.format(e=estimator): result[key]
        for key, column in TRUST_COLUMNS.items()
        if key in result
    }


def run_cell(cell: dict, seed: int, out: Path, evaluate, tracking=None) -> dict:
    """Train (or resume) and evaluate one (cell, seed); return its results row.
    ``evaluate``: the grid's estimators (:func:`aevb.experiments.compare.evaluations`);
    ``tracking``: a :class:`~aevb.experiments.tracking.Tracking` to log the run to."""
    spec = cell_spec(cell, seed, evaluate)
    tracker = None
    if tracking is not None:
        from aevb.experiments.tracking import RunTracker

        tracker = RunTracker(tracking, spec, f"{cell['label']}-seed{seed}", out)
    try:
        done = runs.run(spec, out, epoch_callback=tracker.epoch if tracker else None)
    except BaseException:
        if tracker is not None:
            tracker.finish(None, {}, "FAILED")
        raise
    if tracker is not None:
        tracker.finish(out, done)
    return results_row(
        cell, seed, out, done, {ev.key: (ev.estimator, ev.samples) for ev in spec.evaluation}
    )


def results_row(cell: dict, seed: int, out: Path, done: dict, wanted: dict) -> dict:
    """One tidy ``results.csv`` row for a finished (cell, seed): settings, seconds, bounds,
    diagnostics.
    """
    from aevb.inference import rundir

    record = rundir.upgrade_record(rundir.read_config(out))  # older runs in today's names
    history = rundir.read_history(out)
    last = history.iloc[-1]
    fit = record["fit"]
    row = {
        "cell": cell["label"],
        "model": cell["model"],
        "data": cell.get("data", "mnist"),
        "inference": record.get("inference", "svi"),
        "objective": fit.get("objective"),
        "k": fit.get("particles"),
        "alpha": fit.get("alpha"),
        "sampler": fit.get("sampler"),
        "mcmc_steps": fit.get("mcmc_steps"),
        "guide": record.get("guide", {}).get("name"),
        "flow_steps": record.get("guide", {}).get("config", {}).get("flow_steps"),
        "seed": seed,
        "epochs": int(last["epoch"]),
        "train_seconds": float(last["train_seconds"]),
        "seconds_per_epoch": float(last["train_seconds"]) / int(last["epoch"]),
        "samples_per_second": float(history["samples_per_second"].mean()),
        "status": "ok",
        "error": "",
        "run_dir": str(out),
    }
    for key in ("accept_prob", "step_size", "divergences", "refine_gain"):
        if key in history:
            row[key] = float(history[key].mean())
    for key in ("rhat_max", "ess_bulk", "ess_tail"):  # MCEM's E-step chains, at the end
        if key in history:
            row[key] = float(last[key])
    chosen = _chosen_epoch(history, fit)
    if fit.get("patience") is not None:  # stopped early: the best validation epoch's scores
        row["best_epoch"] = int(chosen["epoch"])
        row[f"valid_{fit['monitor']}"] = float(chosen[f"valid_{fit['monitor']}"])
    if "test_error" in history:  # M2's classification error, on the run's whole test set
        row["test_error"] = float(chosen["test_error"])
    row["labels"] = (record.get("data_spec") or {}).get("labels")
    for key, (estimator, k) in wanted.items():
        row.update(estimate_columns(key, estimator, k, done[key]))
    exact = row.get("test_log_evidence_exact")
    if exact is not None:  # distance of every estimate from the exact evidence (FA)
        for key in ("test_elbo", "test_ll_is", "test_ll_ais"):
            if key in row:
                row[f"{key}_minus_exact"] = row[key] - exact
    row.update({f"version_{k}": v for k, v in record.get("versions", {}).items()})
    return row


def _chosen_epoch(history, fit: dict):
    """The history row (a pandas Series) of the parameters the run ended with: the last
    epoch's, or for a run stopped early on a validation set its best epoch's
    (:mod:`aevb.inference.stopping`)."""
    from aevb.inference.stopping import best_epoch

    if fit.get("patience") is None:
        return history.iloc[-1]
    best = best_epoch(history.to_dict("records"), fit["monitor"])
    return history.iloc[-1] if best is None else history[history["epoch"] == best].iloc[0]


def estimate_columns(key: str, estimator: str, k: int, result: dict) -> dict:
    """The ``results.csv`` columns of one recorded estimate (``evaluation.json``'s ``key``):
    its value, samples, trust keys, the model's own metrics, and where its per-point values
    are (``pointwise.npz``) with the digest of the points they score, for paired comparisons
    (:mod:`aevb.experiments.paired`); the test ELBO is the last key's."""
    points = result.get("test_points")
    row = {
        "test_elbo": result["test_elbo"],
        f"test_ll_{estimator}": result["test_log_likelihood"],
        f"{estimator}_samples": k,
        "num_test": result.get("num_test"),
        f"{estimator}_key": key,
        f"{estimator}_points": points,
        "elbo_key": key,
        "elbo_points": points,
    }
    if "test_log_likelihood_stderr" in result:
        row[f"test_ll_{estimator}_stderr"] = result["test_log_likelihood_stderr"]
    row.update(trust_columns(estimator, result))
    row["active_units"] = result["active_units"]
    for extra in ("test_log_evidence_exact", "true_model_log_evidence", "cluster_accuracy"):
        if extra in result:
            row[extra] = result[extra]
    return row
