"""Bidirectional Monte Carlo (:mod:`aevb.inference.estimators.bdmc`) on factor analysis,
whose evidence is exact: forward AIS from the prior lies below log p(x), reverse AIS from the
exact z above it, and the gap between them shrinks as the temperatures grow."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb import models
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.inference.estimators.ais import AISConfig
from aevb.inference.estimators.bdmc import bdmc, simulate


@pytest.fixture(scope="module")
def fa():
    torch.manual_seed(1)
    return models.build("fa")


def _sandwich(fa, temperatures: int):
    config = AISConfig(num_temperatures=temperatures, num_chains=8)
    r = bdmc(fa, torch.zeros(1, 3), 60, config, seed=0)
    exact = fa.log_evidence(r.x).detach()
    return r, exact


def test_the_bounds_bracket_the_exact_evidence_and_close_with_more_temperatures(fa):
    coarse, exact = _sandwich(fa, 10)
    # means over 60 points; each side's Monte Carlo error is its stderrs' root sum of squares
    for r, evidence in ((coarse, exact), _sandwich(fa, 200)):
        se_low = float(r.lower_stderr.pow(2).sum().sqrt()) / len(r.lower)
        se_up = float(r.upper_stderr.pow(2).sum().sqrt()) / len(r.upper)
        assert float(r.lower.mean()) <= float(evidence.mean()) + 3 * se_low
        assert float(r.upper.mean()) >= float(evidence.mean()) - 3 * se_up
    fine, _ = _sandwich(fa, 200)
    assert coarse.gap > 0.3 and fine.gap < coarse.gap / 3  # 0.99 and 0.09 nats measured
    assert fine.gap > 0  # a sandwich, not a crossing


def test_the_simulated_data_are_the_models(fa):
    """x ~ p(x) = N(0, W W^T + diag sigma^2): the sample covariance of 4000 draws is within
    5 standard errors, sqrt(2) max|Sigma| / sqrt(n), of the model's in every entry."""
    torch.manual_seed(0)
    n = 4000
    x, values = simulate(fa, torch.zeros(1, 3), n)
    assert x.shape == (n, 3) and list(values) == ["z"] and values["z"].shape == (n, 2)
    expected = (fa.W @ fa.W.T + torch.diag(fa.sigma**2)).detach()
    tolerance = 5 * 2**0.5 * float(expected.abs().max()) / n**0.5
    assert (torch.cov(x.T) - expected).abs().max() < tolerance


def test_a_model_with_two_observed_sites_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("a", dist.Normal(z, 1.0), obs=x[:, 0])
            pyro.sample("b", dist.Normal(z, 1.0), obs=x[:, 1])

    with pytest.raises(ConfigError, match="one observed site; this model has 2"):
        simulate(model, torch.zeros(1, 2), 5)


def test_aevb_evaluate_reports_the_sandwich(tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "fa", "--data", "fa-synthetic", "--subset", "200", "--test-subset", "30"]
    assert main([*argv, "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(out), "--estimator", "bdmc", "--num-samples", "4"]
    assert main([*argv, "--ais-temperatures", "50", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bdmc_points"] == 30 and result["bdmc_lower"] < result["bdmc_upper"]
    assert result["bdmc_gap"] == pytest.approx(
        result["bdmc_upper"] - result["bdmc_lower"], abs=1e-5
    )
    assert result["test_log_likelihood_mcse"] > 0  # AIS's own, on the test set
