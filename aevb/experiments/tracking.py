"""Experiment tracking with MLflow: one MLflow run per training run, nested under its grid's.

``--track mlflow`` logs to a local SQLite store, ``mlflow.db`` where the command runs (its
artifacts in ``mlartifacts/`` beside it; no server needed; ``mlflow ui --backend-store-uri
sqlite:///mlflow.db`` shows it, with the full ``mlflow`` package); ``--track mlflow:URI`` to any
tracking URI (``http://host:5000``, ``sqlite:///path/to.db``), a path ending in ``.db``
(a SQLite store) or a folder (a folder store). Per run:

* params: the RunSpec, flattened (``model.name``, ``inference.objective``, ...), and the run
  directory;
* metrics per epoch (step = epoch): train loss, test ELBO, seconds, throughput, sampler
  diagnostics and the model's own metrics, from the training loop's epoch callback;
* final metrics: every estimate of the run's evaluations (``is-1000/test_log_likelihood``,
  ``active_units``, ...);
* artifacts: ``config.json``, ``history.csv``, ``evaluation.json`` and the figures.

The loop knows nothing of this: a :class:`RunTracker` hands it an ``epoch_callback``.
The client is ``mlflow-skinny`` with ``alembic`` for SQLite stores (``pip install
'aevb[mlflow]'``). MLflow 3 keeps folder stores in maintenance mode behind
``MLFLOW_ALLOW_FILE_STORE``, which is set here for folder URIs only; the default store is a
database so that MLflow's own client and UI read it without that opt-out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from aevb.errors import ConfigError
from aevb.spec import RunSpec, close_keys

#: a ``[tracking]`` table's keys
TRACKING_KEYS = {"uri", "experiment"}

#: where ``--track mlflow`` logs when given no URI (a SQLite file where the command runs)
DEFAULT_STORE = "mlflow.db"


@dataclass(frozen=True)
class Tracking:
    """Where runs are logged: a tracking URI, an experiment name and (for a grid's runs) the
    grid's own MLflow run as their parent."""

    uri: str
    experiment: str = "aevb"
    parent_run_id: str | None = None


def _as_uri(where: str) -> str:
    """A tracking URI from ``--track mlflow:WHERE``: URIs pass; a path ending in ``.db`` is a
    SQLite store, any other path a folder store (absolute, so that workers agree)."""
    if "://" in where or where.startswith(("file:", "sqlite:", "databricks")):
        return where
    path = Path(where).resolve()
    if path.suffix in (".db", ".sqlite"):
        return f"sqlite:///{path}"
    return path.as_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def parse_track(text: str | None, experiment: str = "aevb") -> Tracking | None:
    """``mlflow`` or ``mlflow:URI`` (the ``--track`` flag) as a :class:`Tracking`."""
    if text is None:
        return None
    kind, _, where = text.partition(":")
    if kind != "mlflow":
        raise ConfigError(f"--track: invalid choice: {text!r} (expected mlflow or mlflow:URI)")
    return Tracking(_as_uri(where or DEFAULT_STORE), experiment)


def tracking_from_table(table, path="") -> Tracking | None:
    """A grid's ``[tracking]`` table (``uri``, ``experiment``) as a :class:`Tracking`."""
    if not table:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tracking] must be a table, got {table!r}")
    for key in table:
        if key not in TRACKING_KEYS:
            raise ConfigError(
                f"{path}: [tracking]: unknown key {key!r}{close_keys(key, TRACKING_KEYS)} "
                f"(valid keys: {', '.join(sorted(TRACKING_KEYS))})"
            )
    uri = _as_uri(table.get("uri", DEFAULT_STORE))
    return Tracking(uri, table.get("experiment", "aevb"))


def _client(tracking: Tracking):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "--track mlflow needs MLflow: pip install 'aevb[mlflow]' (or pip install mlflow)"
        ) from None
    if tracking.uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    database = _sqlite_path(tracking.uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking.uri)
    found = client.get_experiment_by_name(tracking.experiment)
    if found is not None:
        return client, found.experiment_id
    # a SQLite store's artifacts beside its file, not in ./mlruns of whoever created it
    where = None if database is None else (database.parent / "mlartifacts").as_uri()
    return client, client.create_experiment(tracking.experiment, artifact_location=where)


def flatten(value, prefix: str = "") -> dict:
    """A nested dict as {dotted key: value} (lists kept whole)."""
    if isinstance(value, dict):
        out: dict = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RunTracker:
    """One MLflow run for one training run; :meth:`epoch` is the loop's epoch callback.

    A training run that resumes (``--resume``, a Ray task retried after its worker died)
    goes on logging into its unfinished MLflow run, the one of the same name, run directory
    and parent still marked RUNNING, rather than leaving it RUNNING for ever beside a new one;
    the epochs its run directory already holds and the MLflow run lacks (a process that died
    between writing an epoch's checkpoint and logging it) are logged from ``history.csv``.
    """

    def __init__(self, tracking: Tracking, spec: RunSpec, name: str, out: str | Path | None):
        from mlflow.entities import Param

        self.client, experiment_id = _client(tracking)
        tags = {"mlflow.parentRunId": tracking.parent_run_id} if tracking.parent_run_id else {}
        unfinished = self._unfinished(experiment_id, name, tracking.parent_run_id, out)
        self.run_id = unfinished or (
            self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        )
        params = {k: "" if v is None else str(v) for k, v in flatten(spec.to_dict()).items()}
        params["run_dir"] = str(out)
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self.out = None if out is None else Path(out)
        self.backfilled = False

    def _backfill(self, before: int) -> None:
        """Log the epochs before ``before`` of the run directory's ``history.csv`` that this
        MLflow run does not have yet (called at the first epoch: the loop has just written
        the file, with the epochs a resumed checkpoint holds)."""
        from aevb.inference import rundir

        self.backfilled = True
        if self.out is None or not (self.out / rundir.HISTORY).is_file():
            return
        history = rundir.read_history(self.out)
        if "train_loss" not in history:
            return
        logged = {p.step for p in self.client.get_metric_history(self.run_id, "train_loss")}
        for row in history.to_dict("records"):
            if int(row["epoch"]) < before and int(row["epoch"]) not in logged:
                self.epoch(row)

    def _unfinished(self, experiment_id, name, parent, out) -> str | None:
        """The id of a RUNNING MLflow run of this name, run directory and parent, if any."""
        if out is None:
            return None
        query = [
            f"tags.mlflow.runName = {_quoted(name)}",
            "attributes.status = 'RUNNING'",
            f"params.run_dir = {_quoted(str(out))}",
        ]
        if parent is not None:
            query.append(f"tags.mlflow.parentRunId = {_quoted(parent)}")
        found = self.client.search_runs([experiment_id], " and ".join(query), max_results=1)
        return found[0].info.run_id if found else None

    def epoch(self, row: dict) -> None:
        """Log an epoch's numeric history columns at step = epoch."""
        from mlflow.entities import Metric

        step = int(row["epoch"])
        if not self.backfilled:
            self._backfill(step)
        metrics = [
            Metric(key, number, 0, step)
            for key, value in row.items()
            if key not in ("epoch", "step") and (number := _number(value)) is not None
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, out: str | Path | None, evaluations: dict, status: str = "FINISHED") -> None:
        """Final metrics (every estimate by key, its k-hat flag as 0/1) and the run
        directory's files as artifacts; then close the run."""
        from mlflow.entities import Metric

        metrics = [
            Metric(f"{key}/{name}", number, 0, 0)
            for key, result in evaluations.items()
            for name, value in result.items()
            if (number := _number(int(value) if isinstance(value, bool) else value)) is not None
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        if out is not None:
            for path in sorted(Path(out).glob("*")):
                if path.suffix in (".json", ".csv", ".png"):
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)


def start_grid_run(tracking: Tracking, name: str, source: str) -> Tracking:
    """The grid's own MLflow run (its config as an artifact); returns the tracking its
    runs log under, nested."""
    client, experiment_id = _client(tracking)
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    client.log_text(run_id, source, "grid.toml")
    return Tracking(tracking.uri, tracking.experiment, run_id)


def finish_grid_run(tracking: Tracking, failed: int) -> None:
    """Close the grid's run (FAILED if any cell failed)."""
    if tracking.parent_run_id is None:
        return
    client, _ = _client(tracking)
    client.set_terminated(tracking.parent_run_id, "FAILED" if failed else "FINISHED")


__all__ = [
    "RunTracker",
    "Tracking",
    "finish_grid_run",
    "flatten",
    "parse_track",
    "start_grid_run",
    "tracking_from_table",
]
