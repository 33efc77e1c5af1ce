"""Differences between cells with paired standard errors (aevb.experiments.paired): the
formulas, what pairing buys, their calibration, and a grid's ranking end to end."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aevb.cli import main
from aevb.experiments.paired import compare_cells, paired_difference, ranking
from aevb.inference import rundir
from aevb.inference.saved import Estimate


def test_paired_difference_follows_its_formulas():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=50) for _ in range(3)]
    b = [rng.normal(size=50) for _ in range(3)]
    d = np.stack(a) - np.stack(b)  # [S, n]
    mean, se_points, se_seeds = paired_difference(a, b)
    assert mean == pytest.approx(d.mean())
    assert se_points == pytest.approx(d.mean(0).std(ddof=1) / math.sqrt(50))
    assert se_seeds == pytest.approx(d.mean(1).std(ddof=1) / math.sqrt(3))
    # one seed: no spread between seeds to add
    assert paired_difference(a[:1], b[:1])[2] == 0.0


def _run(tmp_path, cell: str, seed: int, values: np.ndarray, digest: str, keep_points=True):
    """A run directory with one IS evaluation of per-point ``values``; its results row."""
    out = tmp_path / f"{cell}-seed{seed}"
    out.mkdir()
    result = Estimate(test_log_likelihood=float(values.mean()), test_points=digest)
    result["test_log_likelihood_se"] = float(values.std(ddof=1) / math.sqrt(len(values)))
    if keep_points:
        result.pointwise = {"log_likelihood": values, "elbo": values - 1.0}
    rundir.record_evaluation(out, "is-100", result)
    return {
        "cell": cell,
        "seed": seed,
        "status": "ok",
        "run_dir": str(out),
        "test_ll_is": result["test_log_likelihood"],
        "test_ll_is_se": result["test_log_likelihood_se"],
        "is_key": "is-100",
        "is_points": digest,
        "num_test": len(values),
    }


def test_pairing_resolves_what_an_unpaired_error_cannot(tmp_path):
    # the points differ by tens of nats, the two cells by 0.05 on every point: paired, the
    # difference is many standard errors; unpaired (each cell's spread), under one
    rng = np.random.default_rng(1)
    hardness = rng.normal(-90, 20, size=200)
    a = hardness + rng.normal(0, 0.01, size=200)
    b = hardness - 0.05 + rng.normal(0, 0.01, size=200)
    rows = [_run(tmp_path, "a", 0, a, "same"), _run(tmp_path, "b", 0, b, "same")]
    diff = compare_cells(pd.DataFrame(rows), "a", "b", "is")
    assert diff is not None and diff.paired and diff.resolved
    assert diff.difference == pytest.approx(float((a - b).mean()))
    assert diff.se == pytest.approx(float((a - b).std(ddof=1) / math.sqrt(200)))
    assert diff.se < 0.002

    # other test points (another digest): nothing to pair, the unpaired error says so
    rows[1]["is_points"] = "other"
    unpaired = compare_cells(pd.DataFrame(rows), "a", "b", "is")
    assert unpaired is not None and not unpaired.paired and not unpaired.resolved
    assert unpaired.se == pytest.approx(
        math.hypot(rows[0]["test_ll_is_se"], rows[1]["test_ll_is_se"])
    )

    # a run evaluated before aevb kept per-point values: unpaired too
    old = _run(tmp_path, "c", 0, b, "same", keep_points=False)
    fallback = compare_cells(pd.DataFrame(rows[:1] + [old]), "a", "c", "is")
    assert fallback is not None and not fallback.paired
    assert rundir.read_pointwise(old["run_dir"], "is-100") == {}


def test_the_paired_error_matches_the_spread_of_the_difference_over_repetitions():
    # d_i^s = u_i + c_s + e_i^s: a point effect shared by the seeds, a seed effect and noise;
    # Var(D) = su^2/n + sc^2/S + se^2/(nS). Over R repetitions the mean of se^2 is within
    # sampling error of Var(D) (the noise term is counted twice: conservative by se^2/(nS))
    # and |D| < 2 se holds in about 95% of them.
    rng = np.random.default_rng(2)
    n, seeds, reps = 100, 3, 400
    su, sc, noise = 2.0, 0.2, 0.1
    var_true = su**2 / n + sc**2 / seeds + noise**2 / (n * seeds)
    se2, covered = [], 0
    for _ in range(reps):
        d = rng.normal(0, su, n) + rng.normal(0, sc, (seeds, 1)) + rng.normal(0, noise, (seeds, n))
        mean, sp, ss = paired_difference(list(d), [np.zeros(n)] * seeds)
        se2.append(sp**2 + ss**2)
        covered += abs(mean) < 2 * math.sqrt(sp**2 + ss**2)
    # se^2's seed part is a chi-square with S - 1 = 2 degrees of freedom (relative sd 1):
    # its mean over 400 repetitions has a relative sd of about 1/20
    assert 0.8 < np.mean(se2) / var_true < 1.25
    # under a normal error 2 se covers 95%; with S = 3 the se is noisy, so somewhat fewer:
    # the binomial sd over 400 is 1.1%, the allowance below about 4 of it plus the t effect
    assert covered / reps > 0.85


#: the grid of docs/concepts/trust.rst: three FA cells, two seeds, IS-20 and AIS
GRID = Path(__file__).resolve().parents[1] / "docs" / "examples" / "fa_paired.toml"


def test_a_grid_ranks_its_cells_with_paired_errors(tmp_path, capsys):
    config = tmp_path / "paired.toml"
    config.write_text(GRID.read_text())
    out = tmp_path / "grid"
    assert main(["compare", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = pd.read_csv(out / "results.csv")
    for row in results.itertuples():  # each run keeps the per-point values of its means
        points = rundir.read_pointwise(row.run_dir, "is-20")
        assert points["log_likelihood"].mean() == pytest.approx(row.test_ll_is, rel=1e-6)
        elbo = rundir.read_pointwise(row.run_dir, row.elbo_key)["elbo"]  # the last key's
        assert elbo.mean() == pytest.approx(row.test_elbo, rel=1e-6)
        assert points["log_likelihood"].shape == (60,)
    assert results["is_points"].nunique() == 1 and (results["is_key"] == "is-20").all()
    table = ranking(results, "is")
    assert list(table["paired"].dropna()) == ["yes", "yes"]
    best = table.iloc[0]
    means = results.groupby("cell")["test_ll_is"].mean()
    assert best["cell"] == means.idxmax()
    diff = compare_cells(results, best["cell"], best["vs. next"], "is")
    assert diff is not None and diff.seeds == 2 and diff.points == 60
    gap = means[best["cell"]] - means[best["vs. next"]]
    assert best["difference"] == pytest.approx(gap, abs=1e-4)
    assert best["difference"] == pytest.approx(diff.difference, abs=1e-4)
    assert "ranked by is:" in printed and "ranked by ais:" in printed
    assert best["verdict"] in printed
    report = (out / "report.md").read_text()
    assert "## Which differences are resolved" in report
    assert "### Ranked by the IS estimate" in report and "### Ranked by the AIS estimate" in report
