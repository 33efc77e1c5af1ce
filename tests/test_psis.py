"""How far an IS estimate can be trusted (:mod:`aevb.inference.psis`): Pareto k̂ as ArviZ
computes it, checked on weights of known tail and on factor analysis, where the exact
posterior and evidence are known; the Monte Carlo standard error's coverage; and the flag
carried to ``aevb evaluate``, ``results.csv`` and ``report.md``."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from arviz_stats.base import array_stats

from aevb import data, guides, models
from aevb.cli import main
from aevb.inference import psis
from aevb.inference.evaluate import bounds, log_weights


@pytest.fixture(scope="module")
def fa():
    torch.manual_seed(1)
    return models.build("fa")


def _guide(fa, shift=0.0, scale=1.0):
    V, L = fa.exact_posterior_parameters()
    return guides.build("linear-gaussian", fa).set_parameters(V + shift, L * scale)


def test_khat_is_arviz_psis_on_the_log_weights():
    rng = np.random.default_rng(0)
    log_w = torch.from_numpy(rng.standard_t(3, size=(2000, 6)) * 2)  # [S, B]
    expected = array_stats.psislw(-log_w.T.numpy(), r_eff=1, axis=-1)[1]
    np.testing.assert_array_equal(psis.pareto_khat(log_w).numpy(), expected)


@pytest.mark.parametrize("k", [0.3, 0.9])
def test_khat_recovers_the_tail_of_pareto_weights(k):
    """log w = k E, E ~ Exp(1), makes w Pareto with shape k exactly; the mean of 32 fits of
    4000 draws each lies within 0.1 of it (one fit's spread is ~0.1 at this S)."""
    rng = np.random.default_rng(1)
    log_w = torch.from_numpy(k * rng.exponential(size=(4000, 32)))
    assert abs(float(psis.pareto_khat(log_w).mean()) - k) < 0.1


def test_the_threshold_follows_the_sample_size():
    assert psis.khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert psis.khat_threshold(10**6) == 0.7  # capped at Vehtari et al.'s 0.7
    too_few = torch.zeros(psis.MIN_SAMPLES - 1, 3)
    assert torch.isnan(psis.pareto_khat(too_few)).all()


def test_fa_khat_is_small_for_good_proposals_and_large_for_a_too_narrow_one(fa):
    _, test = data.load("fa-synthetic")
    x = test.subset(60)
    exact = bounds(fa, _guide(fa), x, 500)
    assert (exact.khat == -math.inf).all()  # equal weights: no tail at all
    trust = exact.trust(psis.FLAG_SHARE)
    assert not trust["flagged"] and trust["test_log_likelihood_mcse"] < 1e-5
    wide = bounds(fa, _guide(fa, scale=1.5), x, 500)  # bounded weights
    assert (wide.khat < 0.5).all() and not wide.trust(psis.FLAG_SHARE)["flagged"]
    # q 0.3 times as wide as p: w = p/q grows like exp(c |z|^2), a Pareto tail of k ~ 0.9
    narrow = bounds(fa, _guide(fa, scale=0.3), x, 500)
    assert float(narrow.khat.median()) > 0.7
    flagged = narrow.trust(psis.FLAG_SHARE)
    assert flagged["flagged"] and "AIS" in flagged["advice"]
    assert flagged["khat_share_over_threshold"] > 0.5


def test_the_monte_carlo_standard_error_covers_the_exact_evidence(fa):
    """Over 400 independent IS-200 estimates of one datapoint's log p(x), the interval
    estimate +- 2 * MCSE holds the exact evidence 95.4% of the time; the count is binomial
    (sd sqrt(400 * 0.954 * 0.046) = 4.2), and the test allows 4 sd below and above."""
    _, test = data.load("fa-synthetic")
    x = test.x[:1]
    repeats, samples = 400, 200
    torch.manual_seed(3)
    guide = _guide(fa, shift=0.02, scale=1.3)  # k-hat < 0: the delta method holds
    with torch.no_grad():
        w = log_weights(fa, guide, (x,), repeats * samples, 1).reshape(repeats, samples).T
    estimate = torch.logsumexp(w, 0) - math.log(samples)
    mcse = psis.log_mean_variance(w).sqrt()
    assert (psis.pareto_khat(w) < 0.5).all()
    covered = int(((estimate - fa.log_evidence(x)).abs() <= 2 * mcse).sum())
    assert abs(covered - 0.954 * repeats) <= 4 * 4.2
    # the mean of N independent estimates has a Monte Carlo error sqrt(N) times smaller
    n = 100
    summary = psis.summary(
        estimate[:n], psis.pareto_khat(w[:, :n]), mcse[:n] ** 2, mcse[:n], samples, 0.05
    )
    expected = float((mcse[:n] ** 2).sum().sqrt()) / n
    assert summary["test_log_likelihood_mcse"] == pytest.approx(expected)
    assert summary["test_log_likelihood_mcse"] == pytest.approx(
        float(estimate.std()) / math.sqrt(n), rel=0.15
    )


def _poor_run(tmp_path, capsys):
    """A 1-epoch FA run: its guide is still far from the posterior."""
    out = tmp_path / "r"
    argv = ["train", "fa", "--data", "fa-synthetic", "--subset", "200", "--test-subset", "80"]
    assert main([*argv, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return out


def test_aevb_evaluate_prints_the_standard_errors_and_the_flag(tmp_path, capsys):
    out = _poor_run(tmp_path, capsys)
    assert main(["evaluate", str(out), "--num-samples", "100", "--quiet"]) == 0
    printed = capsys.readouterr()
    first = printed.out.splitlines()[0]
    assert first.startswith("is-100: ") and "se " in first and "Monte Carlo se" in first
    assert "[FLAGGED]" in first
    assert "aevb: warning: IS-100 is unreliable" in printed.err
    result = json.loads((out / "evaluation.json").read_text())["is-100"]
    assert result["flagged"] and result["khat_share_over_threshold"] > psis.FLAG_SHARE
    assert result["test_log_likelihood"] < result["test_log_evidence_exact"]


def test_a_grid_marks_flagged_cells_and_names_the_estimators_that_disagree(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'name = "trust"\nseeds = [0]\n[evaluate]\nis = 100\nais = 8\nais_temperatures = 200\n'
        '[defaults]\nmodel = "fa"\ndata = "fa-synthetic"\nsubset = 200\ntest_subset = 60\n'
        '[[cells]]\nlabel = "early"\nepochs = 1\n'
    )
    assert main(["compare", str(grid), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    row = pd.read_csv(tmp_path / "g" / "results.csv").iloc[0]
    assert bool(row["is_flagged"]) and row["is_khat_share"] > psis.FLAG_SHARE
    assert row["test_ll_is_se"] > 0 and row["test_ll_is_mcse"] > 0 and row["test_ll_ais_mcse"] > 0
    assert row["test_ll_ais"] - row["test_ll_is"] > 2 * row["test_ll_is_mcse"]
    report = (tmp_path / "g" / "report.md").read_text()
    assert "## How far to trust these numbers" in report and "(k-hat!)" in report
    assert "IS (" in report and "disagree" in report and "IS is the lower" in report
