"""Where a grid's runs execute: in this process (``local``) or as Ray tasks (``ray``).

A grid is a list of :class:`Task` s, one per (cell, seed): plain data (the cell's keys, the
seed, the run directory, the estimators, the user modules to import), so a task can be
shipped to another process or machine and run there by :func:`run_task`, the one function
both engines call. An engine yields ``(task, row)`` as tasks finish; a task that raises
yields a ``failed`` row with its error, and the grid goes on.

The Ray engine submits each task with the resources of the ``[engine]`` table (``num_cpus``,
``num_gpus``, fractions allowed) and retries a task whose worker died (``max_retries``); a
retried task resumes from its run directory's last checkpoint, which is bit-identical to an
uninterrupted run. Run directories must live on storage every worker sees (a shared path);
user modules -- the grid's ``modules`` and those of its ``MODULE:NAME`` models and guides --
are imported on the workers from the config's folder (Ray's runtime environment puts it on
``PYTHONPATH``).

References:
    P. Moritz et al. (2018), Ray: A Distributed Framework for Emerging AI Applications, OSDI.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aevb.errors import ConfigError, RunInterrupted
from aevb.registry import import_extensions
from aevb.spec import close_keys


@dataclass(frozen=True)
class Task:
    """One (cell, seed) of a grid, as plain data."""

    index: int
    cell: dict
    seed: int
    out: str
    #: the grid's estimators, as :meth:`aevb.spec.EvaluationSpec.to_dict` dicts
    evaluate: list = field(default_factory=list)
    #: user modules to import first (``modules = [...]`` and those of ``MODULE:NAME``
    #: models and guides) and the folder they live in
    modules: list = field(default_factory=list)
    module_folder: str = ""
    #: where to log the run (:class:`aevb.experiments.tracking.Tracking` as a dict), if at all
    tracking: dict | None = None


def failed_row(task: Task, error: str) -> dict:
    """The results row of a task that raised."""
    return {
        "cell": task.cell["label"],
        "model": task.cell["model"],
        "seed": task.seed,
        "status": "failed",
        "error": error,
        "run_dir": task.out,
    }


def run_task(task: Task) -> dict:
    """Train (or resume) and evaluate one task; return its results row (what both engines
    run, here or on a worker)."""
    from aevb.experiments.cells import run_cell
    from aevb.spec import EvaluationSpec

    if task.modules:
        if task.module_folder:  # first, before the worker's current directory
            if task.module_folder in sys.path:
                sys.path.remove(task.module_folder)
            sys.path.insert(0, task.module_folder)
        import_extensions(task.modules)  # recorded in the run, like aevb --module
    evaluations = tuple(EvaluationSpec.from_dict(e) for e in task.evaluate)
    tracking = None
    if task.tracking is not None:
        from aevb.experiments.tracking import Tracking

        tracking = Tracking(**task.tracking)
    return run_cell(task.cell, task.seed, Path(task.out), evaluations, tracking)


class LocalEngine:
    """Every task in this process, one after another (the default)."""

    name = "local"

    def map(self, tasks: list[Task]) -> Iterator[tuple[Task, dict]]:
        """Yield (task, row) in order; a raising task gives a failed row."""
        for task in tasks:
            try:
                row = run_task(task)
            except RunInterrupted:  # Ctrl-C stops the grid (the cell resumes on a re-run)
                raise
            except Exception as exc:  # one failing cell must not stop the grid
                _write_error(task, traceback.format_exc())
                row = failed_row(task, f"{type(exc).__name__}: {exc}")
            yield task, row


@dataclass
class RayEngine:
    """Each task as a Ray task with declared resources and retries (see the module
    docstring). ``address``: ``"auto"`` or ``host:port`` joins a running cluster; None
    starts a local one with this machine's cores (and shuts it down afterwards)."""

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    max_retries: int = 2
    name = "ray"

    def map(self, tasks: list[Task]) -> Iterator[tuple[Task, dict]]:
        """Submit every task; yield (task, row) as they finish."""
        ray = _import_ray()
        started = not ray.is_initialized()
        if started:
            if self.address:
                ray.init(address=self.address)
            else:
                # "local": a new instance even where a stale /tmp/ray/ray_current_cluster
                # (left by a `ray start` elsewhere) would make ray.init() try to join it
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
        try:
            yield from self._run(ray, tasks)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, tasks: list[Task]) -> Iterator[tuple[Task, dict]]:
        folders = sorted({t.module_folder for t in tasks if t.modules and t.module_folder})
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(folders)}} if folders else None
        remote = ray.remote(_ray_task).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_retries=self.max_retries,
            retry_exceptions=False,  # a cell's own error is recorded, not retried
            runtime_env=env,
        )
        pending = {remote.remote(asdict(t), self.num_cpus): t for t in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done[0])
            try:
                row = ray.get(done[0])
            except Exception as exc:  # the task raised, or died more often than allowed
                cause = getattr(exc, "cause", None) or exc
                _write_error(task, str(exc))
                row = failed_row(task, f"{type(cause).__name__}: {cause}")
            yield task, row


def _ray_task(task: dict, num_cpus: float) -> dict:
    """On a worker: torch's threads set to the task's CPUs, then :func:`run_task`."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))
    return run_task(Task(**task))


def _write_error(task: Task, text: str) -> None:
    path = Path(task.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(f"{path.name}.error.txt").write_text(text)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray engine needs Ray: pip install 'aevb[ray]' (or pip install ray)"
        ) from None
    return ray


#: the ``[engine]`` table's keys, besides ``name``
ENGINE_KEYS = {"name", "address", "num_cpus", "num_gpus", "max_retries"}
ENGINES = {"local": LocalEngine, "ray": RayEngine}


def make_engine(table: dict):
    """The engine an ``[engine]`` table (or ``--engine`` / ``--address``) names."""
    for key in table:
        if key not in ENGINE_KEYS:
            raise ConfigError(
                f"[engine]: unknown key {key!r}{close_keys(key, ENGINE_KEYS)} (valid keys: "
                f"{', '.join(sorted(ENGINE_KEYS))})"
            )
    name = table.get("name", "local")
    if name not in ENGINES:
        raise ConfigError(f"[engine]: invalid choice: {name!r} (choose from {', '.join(ENGINES)})")
    if name == "local":
        extra = set(table) - {"name"}
        if extra:
            raise ConfigError(f"[engine]: {sorted(extra)} apply to the ray engine only")
        return LocalEngine()
    options = {k: v for k, v in table.items() if k != "name"}
    for key in ("num_cpus", "num_gpus"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not value >= 0):
            raise ConfigError(f"[engine]: {key} must be a number >= 0, got {value!r}")
    return RayEngine(**options)


__all__ = ["ENGINES", "LocalEngine", "RayEngine", "Task", "make_engine", "run_task"]
