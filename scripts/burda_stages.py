"""A grid trained stage by stage on Burda et al.'s schedule, scored at every stage boundary.

Burda, Grosse & Salakhutdinov (2015) train for 3^i passes at learning rate 1e-3 * 10^(-i/7),
i = 0..7 (3,280 passes); ``lr_schedule = "burda"`` is that schedule. This script runs the
grid one cell after another (in the config's order), each to the end of stage 0, 1, ...,
``--stages`` in turn (``aevb compare --epochs``: the run resumes from its checkpoint, trains
on, and is scored again; the earlier scores stay in ``RUN/evaluations/epochN/``), so that
the cheap cells finish first; then it writes ``stages.csv`` (and the curves, ``stages.png``)
in the grid's folder: one row per
(cell, seed, passes) with the test ELBO, IS log-likelihood (its standard error) and the
active units, and prints it as a Markdown table beside the paper's figures.

    python scripts/burda_stages.py scripts/configs/iwae_stages.toml --stages 5 --out DIR
    python scripts/burda_stages.py CONFIG --out DIR --report-only --csv docs/results/iwae_stages.csv

Stop it at any time; the same command resumes where it stopped. ``--report-only`` trains
nothing: it writes the tables and the figure from what the folder holds (while the grid is
still running, say); ``--csv`` also writes the IS rows as the docs' small table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from aevb.experiments.compare import load_config, run_grid
from aevb.plots import nll_against_passes

#: Burda et al. (2015) Table 1, NLL after 3,280 passes (784-200-200-50, MNIST)
PAPER = {"vae-k1": 86.76, "iwae-k5": 85.54, "iwae-k50": 84.78}


def boundaries(stages: int) -> list[int]:
    """The passes at which stages 0..``stages`` end: 1, 4, 13, 40, 121, 364, 1093, 3280."""
    return [sum(3**i for i in range(j + 1)) for j in range(stages + 1)]


def stage_passed(out: Path, label: str, seeds: list[int], passes: int) -> bool:
    """Whether every seed's run of the cell ``label`` has trained beyond ``passes`` with
    that stage's scores archived (``evaluations/epoch<passes>/``): a resumed script goes on
    with the stage it stopped in instead of scoring the run where it stopped (a wasted
    IS-5000) for each earlier boundary."""
    from aevb.inference import rundir

    runs = [out / f"{label}-seed{seed}" for seed in seeds]
    return all(
        rundir.trained_epochs(run) > passes
        and (run / "evaluations" / f"epoch{passes}" / "evaluation.json").is_file()
        for run in runs
    )


def stage_rows(out: Path) -> pd.DataFrame:
    """Every recorded score of every run in the grid folder ``out``: the archived ones
    (``evaluations/epochN/``) and the current one (``evaluation.json`` at the run's last
    epoch)."""
    from aevb.inference import rundir

    rows = []
    for run in sorted(p for p in out.iterdir() if (p / "config.json").is_file()):
        archived = sorted((run / "evaluations").glob("epoch*"))
        found = {int(d.name[len("epoch") :]): d / "evaluation.json" for d in archived}
        if (run / "evaluation.json").is_file():
            found[rundir.trained_epochs(run)] = run / "evaluation.json"
        for passes, path in sorted(found.items()):
            for key, ev in json.loads(path.read_text()).items():
                rows.append(
                    {
                        "run": run.name,
                        "passes": passes,
                        "estimate": key,
                        "nll": -ev["test_log_likelihood"],
                        "se": ev.get("test_log_likelihood_se"),
                        "test_elbo": ev.get("test_elbo"),
                        "active_units": ev.get("active_units"),
                        "khat_share": ev.get("khat_share_over_0_7"),
                    }
                )
    return pd.DataFrame(rows)


def docs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The IS rows as the docs' table: one row per (run, passes), NLL with its standard
    error, and the paper's figure after 3,280 passes beside each run."""
    rows = frame[frame["estimate"].str.startswith("is-")].copy()
    cell = rows["run"].str.replace(r"-seed\d+$", "", regex=True)
    return pd.DataFrame(
        {
            "cell": cell,
            "passes": rows["passes"],
            "NLL (IS)": rows["nll"].round(2),
            "se": rows["se"].round(2),
            "test ELBO": rows["test_elbo"].round(2),
            "active units": rows["active_units"],
            "k-hat > 0.7": rows["khat_share"].round(2),
            "Burda et al. @3280": cell.map(PAPER),
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="a grid config with lr_schedule = 'burda'")
    p.add_argument("--stages", type=int, default=5, help="the last stage i to finish (0..7)")
    p.add_argument("--out", required=True, help="the grid's folder (outside the repository)")
    p.add_argument("--report-only", action="store_true", help="train nothing; write the tables")
    p.add_argument("--csv", help="also write the IS rows as a small table here (the docs')")
    args = p.parse_args()
    out = Path(args.out)
    if not args.report_only:
        config = load_config(args.config)
        for cell in config["cells"]:
            for passes in boundaries(args.stages):
                if not stage_passed(out, cell["label"], config["seeds"], passes):
                    run_grid(args.config, out, quiet=True, epochs=passes, only=[cell["label"]])
    # the tables and the figure at the stage boundaries (stages.csv keeps every score, e.g.
    # one taken where an earlier version of this script was stopped mid-stage)
    frame = stage_rows(out)
    frame = frame[frame["passes"].isin(boundaries(7))] if len(frame) else frame
    if args.csv:
        docs_table(frame).to_csv(args.csv, index=False)
    stage_rows(out).to_csv(out / "stages.csv", index=False)
    is_rows = frame[frame["estimate"].str.startswith("is-")]
    if len(is_rows):
        title = "IS NLL at the end of each of Burda et al.'s stages (dashed: their Table 1)"
        nll_against_passes(is_rows, PAPER, out / "stages.png", title=title)
    print(frame.to_markdown(index=False, floatfmt=".2f"))
    print(
        "\nBurda et al. (2015) Table 1 after 3,280 passes: "
        + ", ".join(f"{k} {v}" for k, v in PAPER.items())
    )


if __name__ == "__main__":
    main()
