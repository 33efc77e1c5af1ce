"""Seconds per epoch of every cell of a grid, measured one at a time on a quiet machine.

A grid run with two cells at a time (``--engine ray``), or beside other work, records
seconds that depend on what else ran. This script trains each cell of a grid config on the
first ``--subset`` training images, one cell after another in this process, and prints the
seconds per epoch extrapolated to the whole training set (the grid's own data and batch
size; seed 0). Each cell trains two epochs and the second is timed (training
only), so one-off costs such as compiling the objective are left out; of ``--repeats``
such timings the fastest is kept (on this machine one 150-step timing of the same cell
varied by up to a factor of 2).

    python scripts/cell_seconds.py scripts/configs/beyond_pyro.toml     # ~4 min on 2 cores

Prints a Markdown table: cell, seconds of the subset's epoch, seconds per full epoch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from aevb import data, runs
from aevb.experiments.cells import cell_spec
from aevb.experiments.compare import load_config
from aevb.spec import DataSpec, ScheduleSpec


def epoch_seconds(cell: dict, subset: int, out: Path) -> float:
    """Training seconds of the second epoch of ``cell`` on ``subset`` images (the first pays
    the one-off costs: compiling the objective, allocating)."""
    spec = cell_spec(cell, 0)
    spec = spec.replace(
        data=DataSpec(**{**spec.data.to_dict(), "subset": subset, "test_subset": 100}),
        schedule=ScheduleSpec(**{**spec.schedule.to_dict(), "epochs": 2}),
    )
    run = runs.train(spec, out / cell["label"], progress=False, figures=False)
    return float(run.history["epoch_seconds"].iloc[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="a grid config, e.g. scripts/configs/beyond_pyro.toml")
    p.add_argument("--subset", type=int, default=10_000, help="training images timed per cell")
    p.add_argument("--repeats", type=int, default=2, help="timings per cell; the fastest is kept")
    args = p.parse_args()
    config = load_config(args.config)
    print("| cell | s for the subset's epoch | s per full epoch |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for cell in config["cells"]:
            total = len(data.load(cell.get("data", "mnist"))[0])
            s = min(
                epoch_seconds(cell, args.subset, Path(tmp) / str(r)) for r in range(args.repeats)
            )
            full = s * total / args.subset
            print(f"| {cell['label']} | {s:.2f} | {full:.0f} |", flush=True)


if __name__ == "__main__":
    main()
