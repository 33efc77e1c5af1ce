"""A grid's results as a small CSV for the docs (``docs/results/NAME.csv``): one row per cell,
means over its seeds, negative log-likelihoods in nats (lower is better) so that the table
sits beside the papers' NLL columns.

    python scripts/results_table.py /work/runs/mcmc_vi --out docs/results/mcmc_vi_10.csv

Columns: cell, epochs, seeds, seconds per epoch, the test ELBO, NLL by IS (with its
standard error over test points and the share of points whose k-hat exceeds 0.7) and by
AIS (with its standard error), and where the grid has them the cluster accuracy, the epoch
early stopping kept with its validation error, and the test error. The docs include the CSV
with ``csv-table``, so a figure there is the grid's own, and the command that made the grid
is printed under the table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

#: (column of the output, column of results.csv, sign, decimals)
COLUMNS = (
    ("test ELBO", "test_elbo", 1, 2),
    ("NLL (IS)", "test_ll_is", -1, 2),
    ("IS se", "test_ll_is_se", 1, 2),
    ("k-hat > 0.7", "is_khat_share", 1, 2),
    ("NLL (AIS)", "test_ll_ais", -1, 2),
    ("AIS se", "test_ll_ais_se", 1, 2),
    ("cluster accuracy", "cluster_accuracy", 1, 3),
    ("best epoch", "best_epoch", 1, 0),
    ("valid error %", "valid_error", 100, 2),
    ("test error %", "test_error", 100, 2),
)


def table(results: pd.DataFrame, per_seed: bool = False) -> pd.DataFrame:
    """One row per cell (the grid's order), means over the seeds of the runs that finished;
    ``per_seed``: one row per (cell, seed) instead."""
    ok = results[results["status"] == "ok"]
    rows = []
    for key, runs in ok.groupby(["cell", "seed"] if per_seed else ["cell"], sort=False):
        row = {
            "cell": key[0],
            **({"seed": int(key[1])} if per_seed else {}),
            "epochs": int(runs["epochs"].max()),
            **({} if per_seed else {"seeds": len(runs)}),
            "s/epoch": round(float(runs["seconds_per_epoch"].mean()), 1),
        }
        for name, column, sign, decimals in COLUMNS:
            if column in runs:
                value = float(runs[column].mean())
                value = round(sign * value, decimals)
                row[name] = "" if math.isnan(value) else int(value) if decimals == 0 else value
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", help="a grid's output folder (its results.csv)")
    p.add_argument("--out", required=True, help="the CSV to write, e.g. docs/results/x.csv")
    p.add_argument("--per-seed", action="store_true", help="one row per (cell, seed)")
    args = p.parse_args()
    frame = table(pd.read_csv(Path(args.grid) / "results.csv"), args.per_seed)
    frame.to_csv(args.out, index=False)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
