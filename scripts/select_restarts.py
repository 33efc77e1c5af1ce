"""Restarts selected by the training bound: for every (cell, seed) of a grid, train
``--restarts`` candidates for ``--restart-epochs`` epochs each, keep the one whose last
training epoch had the best bound (the labels are never looked at), and train that one on to
the grid's epochs and score it as ``aevb compare`` would.

A mixture model's clusters are decided early: the GMVAE put every image in one cluster from
the first epoch on one of three seeds of the aevb-tutorial's own recipe. Selecting among
restarts by the ELBO, which needs no labels, is the usual remedy.

    python scripts/select_restarts.py scripts/configs/gmvae_restarts.toml --out DIR

Candidate r of grid seed s has seed 1000 s + r (``DIR/candidates/<label>-seed<s>-r<r>``); the
winner is trained on in place, and ``DIR/results.csv`` has one row per (cell, seed) with the
seed it kept (``seed``), the grid seed (``grid_seed``) and every candidate's last training
bound (``candidate_bounds``); ``DIR/report.md`` the grid's report with the kept runs' curves
(``cluster_accuracy_curves.png`` beside the config's ``[reference]``). Re-running resumes
whatever is unfinished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from aevb import runs
from aevb.experiments.cells import cell_spec, results_row
from aevb.experiments.compare import load_config
from aevb.experiments.report import write_report
from aevb.inference import rundir
from aevb.spec import ScheduleSpec


def candidate_seed(seed: int, r: int) -> int:
    """The seed of restart ``r`` of grid seed ``seed``."""
    return 1000 * seed + r


def bound_at(run_dir: Path, epoch: int) -> float:
    """The training bound per datapoint of the run's epoch ``epoch`` (minus its train loss):
    the candidate's score, also once the winner has been trained on past it."""
    history = rundir.read_history(run_dir)
    return -float(history.loc[history["epoch"] == epoch, "train_loss"].iloc[0])


def with_epochs(spec, epochs: int):
    """``spec`` trained for ``epochs`` epochs."""
    schedule = ScheduleSpec(**{**spec.schedule.to_dict(), "epochs": epochs})
    return spec.replace(schedule=schedule)


def select(cell: dict, seed: int, evaluate, out: Path, restarts: int, epochs: int) -> dict:
    """Train the candidates of one (cell, seed), train the best on and score it; its
    results row."""
    bounds = {}
    for r in range(restarts):
        where = out / "candidates" / f"{cell['label']}-seed{seed}-r{r}"
        spec = with_epochs(cell_spec(cell, candidate_seed(seed, r)), epochs)
        if rundir.trained_epochs(where) < epochs:
            runs.train(spec, where, resume=rundir.has_checkpoint(where), figures=False)
        bounds[r] = bound_at(where, epochs)
    best = max(bounds, key=lambda r: bounds[r])
    where = out / "candidates" / f"{cell['label']}-seed{seed}-r{best}"
    done = runs.run(cell_spec(cell, candidate_seed(seed, best), evaluate), where)
    row = results_row(
        cell,
        candidate_seed(seed, best),
        where,
        done,
        {ev.key: (ev.estimator, ev.samples) for ev in evaluate},
    )
    row["grid_seed"] = seed
    row["candidate_bounds"] = " ".join(f"{bounds[r]:.3f}" for r in range(restarts))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="a grid config (its cells, seeds, epochs and [evaluate])")
    p.add_argument("--out", required=True, help="the output folder")
    p.add_argument("--restarts", type=int, default=5, help="candidates per (cell, seed)")
    p.add_argument("--restart-epochs", type=int, default=2, help="epochs each candidate trains")
    args = p.parse_args()
    config = load_config(args.config)
    out = Path(args.out)
    rows = []
    for cell in config["cells"]:
        for seed in config["seeds"]:
            row = select(cell, seed, config["evaluate"], out, args.restarts, args.restart_epochs)
            rows.append(row)
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
            print(
                f"{cell['label']} seed {seed}: kept seed {row['seed']} (bounds "
                f"{row['candidate_bounds']})",
                flush=True,
            )
    frame = pd.DataFrame(rows)
    columns = [
        c
        for c in (
            "cell",
            "grid_seed",
            "seed",
            "epochs",
            "test_elbo",
            "cluster_accuracy",
            "candidate_bounds",
        )
        if c in frame
    ]
    print(frame[columns].to_string(index=False))
    print(f"report: {write_report(config, frame, out)}")  # with the accuracy curves


if __name__ == "__main__":
    main()
