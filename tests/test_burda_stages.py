"""``scripts/burda_stages.py``: Burda et al.'s stage boundaries, and a grid trained stage by
stage keeps every stage's scores."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import burda_stages  # noqa: E402

from aevb.inference.svi import burda_lr  # noqa: E402


def test_the_boundaries_are_burdas_and_the_schedule_changes_there():
    """Stage i has 3^i passes (3,280 in all after stage 7), and the learning rate of the
    pass after each boundary is the next stage's 1e-3 * 10^(-(i+1)/7)."""
    ends = burda_stages.boundaries(7)
    assert ends == [1, 4, 13, 40, 121, 364, 1093, 3280]
    for i, end in enumerate(ends[:-1]):
        assert burda_lr(1e-3, end) == 1e-3 * 10 ** (-i / 7)
        assert burda_lr(1e-3, end + 1) == 1e-3 * 10 ** (-(i + 1) / 7)


GRID = """
name = "stages"
seeds = [0]
[defaults]
model = "fa"
data = "fa-synthetic"
subset = 160
test_subset = 40
epochs = 1
lr_schedule = "burda"
[evaluate]
is = 20
[[cells]]
objective = "trace"
label = "fa-k1"
[[cells]]
objective = "iwae"
particles = 3
label = "fa-k3"
"""


def test_a_grid_trained_stage_by_stage_keeps_every_stages_scores(tmp_path, monkeypatch):
    (tmp_path / "grid.toml").write_text(GRID)
    out = tmp_path / "g"
    argv = ["burda_stages.py", str(tmp_path / "grid.toml"), "--stages", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    burda_stages.main()
    frame = burda_stages.stage_rows(out)
    assert list(frame["run"]) == ["fa-k1-seed0"] * 2 + ["fa-k3-seed0"] * 2
    assert list(frame["passes"]) == [1, 4, 1, 4]
    assert (out / "fa-k1-seed0" / "evaluations" / "epoch1" / "evaluation.json").is_file()
    assert frame["nll"].notna().all() and frame["active_units"].notna().all()
    # a resumed script skips the stages a run has passed and scored, not the one it is in
    assert burda_stages.stage_passed(out, "fa-k1", [0], 1)
    assert not burda_stages.stage_passed(out, "fa-k1", [0], 4)
    assert not burda_stages.stage_passed(out, "fa-k1", [0, 1], 1)
    assert (out / "stages.csv").is_file() and (out / "stages.png").stat().st_size > 0
    # a score taken mid-stage stays in stages.csv but not in the docs' table
    import shutil

    runs = out / "fa-k1-seed0" / "evaluations"
    shutil.copytree(runs / "epoch1", runs / "epoch2")
    # the report alone trains nothing and writes the docs' table from the same rows
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    table = tmp_path / "table.csv"
    argv = [*argv, "--report-only", "--csv", str(table)]
    monkeypatch.setattr(sys, "argv", argv)
    burda_stages.main()
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")} == stamps
    docs = pd.read_csv(table)
    assert list(docs["cell"]) == ["fa-k1", "fa-k1", "fa-k3", "fa-k3"]
    assert list(docs["NLL (IS)"]) == list(frame["nll"].round(2))
    assert list(docs["passes"]) == [1, 4, 1, 4]
    assert 2 in set(pd.read_csv(out / "stages.csv")["passes"])
