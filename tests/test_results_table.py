"""``scripts/results_table.py``: a grid's results.csv as the docs' small CSV (means over
seeds, NLL = -log p(x), failed runs left out)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import results_table  # noqa: E402


def test_cells_are_averaged_over_seeds_and_likelihoods_become_nll():
    results = pd.DataFrame(
        {
            "cell": ["a", "a", "b", "b"],
            "status": ["ok", "ok", "ok", "failed"],
            "epochs": [10, 10, 10, 3],
            "seconds_per_epoch": [2.0, 4.0, 5.0, 1.0],
            "test_elbo": [-100.0, -102.0, -99.0, float("nan")],
            "test_ll_is": [-90.0, -92.0, -95.0, float("nan")],
            "test_ll_ais": [-89.0, -91.0, float("nan"), float("nan")],
        }
    )
    frame = results_table.table(results).set_index("cell")
    assert list(frame.index) == ["a", "b"]
    assert frame.loc["a", "seeds"] == 2 and frame.loc["b", "seeds"] == 1
    assert frame.loc["a", "s/epoch"] == pytest.approx(3.0)
    assert frame.loc["a", "NLL (IS)"] == pytest.approx(91.0)
    assert frame.loc["a", "test ELBO"] == pytest.approx(-101.0)
    assert frame.loc["a", "NLL (AIS)"] == pytest.approx(90.0) and frame.loc["b", "NLL (AIS)"] == ""


def test_per_seed_rows_keep_each_seed_and_its_cluster_accuracy():
    results = pd.DataFrame(
        {
            "cell": ["g", "g", "g"],
            "seed": [3, 1004, 2000],
            "status": ["ok"] * 3,
            "epochs": [20] * 3,
            "seconds_per_epoch": [17.0, 18.0, 19.0],
            "test_elbo": [-82.0, -81.6, -82.1],
            "cluster_accuracy": [0.669, 0.6906, 0.5877],
        }
    )
    frame = results_table.table(results, per_seed=True)
    assert list(frame["seed"]) == [3, 1004, 2000]
    assert list(frame["cluster accuracy"]) == [0.669, 0.691, 0.588]
    assert results_table.table(results)["cluster accuracy"].iloc[0] == pytest.approx(0.649)


def test_the_test_error_is_given_in_percent():
    results = pd.DataFrame(
        {"cell": ["m"], "seed": [0], "status": ["ok"], "epochs": [10],
         "seconds_per_epoch": [27.5], "test_error": [0.0729]}
    )  # fmt: skip
    assert results_table.table(results)["test error %"].iloc[0] == pytest.approx(7.29)


def test_an_early_stopped_grid_shows_the_kept_epoch_and_its_errors_in_percent():
    results = pd.DataFrame(
        {
            "cell": ["m", "m"],
            "seed": [0, 1],
            "status": ["ok", "ok"],
            "epochs": [30, 41],
            "seconds_per_epoch": [20.0, 22.0],
            "best_epoch": [20, 31],
            "valid_error": [0.05, 0.06],
            "test_error": [0.045, 0.055],
        }
    )
    rows = results_table.table(results, per_seed=True)
    assert rows["best epoch"].tolist() == [20, 31] and rows["epochs"].tolist() == [30, 41]
    assert rows["valid error %"].tolist() == pytest.approx([5.0, 6.0])
    mean = results_table.table(results).iloc[0]
    assert mean["test error %"] == pytest.approx(5.0) and mean["best epoch"] == 26
