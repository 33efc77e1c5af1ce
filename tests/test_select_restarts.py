"""``scripts/select_restarts.py``: the candidate with the best training bound is kept,
trained on to the grid's epochs and scored; the labels are not used to choose."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import select_restarts  # noqa: E402

from aevb.inference import rundir  # noqa: E402

GRID = """
name = "restarts"
seeds = [0]
[defaults]
model = "gmvae"
data = "{data}"
epochs = 3
z_dim = 2
hidden = "8"
batch_size = 50
[evaluate]
is = 5
[[cells]]
objective = "enum"
label = "g"
"""


def _three_kinds(path: Path) -> None:
    """300 binary images of 12 pixels from three prototypes, labelled by prototype."""
    import numpy as np

    g = np.random.default_rng(0)
    y = g.integers(0, 3, 300)
    protos = g.random((3, 12))
    np.savez(path, x=(g.random((300, 12)) < protos[y]).astype(np.float32), y=y)


def test_the_best_candidate_by_the_training_bound_is_trained_on_and_scored(tmp_path, monkeypatch):
    _three_kinds(tmp_path / "bits.npz")
    (tmp_path / "grid.toml").write_text(GRID.format(data=tmp_path / "bits.npz"))
    out = tmp_path / "r"
    argv = ["select_restarts.py", str(tmp_path / "grid.toml"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--restarts", "3", "--restart-epochs", "1"])
    select_restarts.main()
    results = pd.read_csv(out / "results.csv")
    bounds = [float(b) for b in results["candidate_bounds"].iloc[0].split()]
    best = max(range(3), key=lambda r: bounds[r])
    assert results["seed"].iloc[0] == select_restarts.candidate_seed(0, best)
    assert results["grid_seed"].iloc[0] == 0 and results["epochs"].iloc[0] == 3
    assert "cluster_accuracy" in results and results["status"].iloc[0] == "ok"
    for r in range(3):  # the others stopped after their one epoch
        where = out / "candidates" / f"g-seed0-r{r}"
        assert rundir.trained_epochs(where) == (3 if r == best else 1)
    # re-run: nothing trains, and the kept candidate is still scored at its restart epoch
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("candidates/*/checkpoint.pt")}
    select_restarts.main()
    again = pd.read_csv(out / "results.csv")
    assert again["candidate_bounds"].iloc[0] == results["candidate_bounds"].iloc[0]
    assert {p: p.stat().st_mtime_ns for p in out.glob("candidates/*/checkpoint.pt")} == stamps
    assert (out / "cluster_accuracy_curves.png").is_file() and (out / "report.md").is_file()
