"""Annealed importance sampling against the exact FA evidence."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb import data
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.inference.ais import AISConfig, ais, sigmoid_schedule


def fa_batch(n=60):
    truth = data.fa_truth()
    _, test = data.load("fa-synthetic")
    x = test.x[:n]
    return truth, x, truth.log_evidence(x).detach()


def test_schedule_runs_from_prior_to_posterior():
    betas = sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 51
    assert torch.all(betas[1:] > betas[:-1])


def test_ais_matches_the_exact_fa_evidence_from_below():
    truth, x, exact = fa_batch()
    pyro.set_rng_seed(0)
    r = ais(truth, (x,), AISConfig(num_temperatures=200, num_chains=16))
    err = r.log_likelihood - exact
    se_mean = float(r.stderr.pow(2).sum().sqrt() / len(x))
    # E[log of an unbiased estimate] <= log p(x): not above the evidence beyond its noise...
    assert float(err.mean()) < 3 * se_mean
    # ...and close to it with a modest schedule
    assert abs(float(err.mean())) < 0.02
    assert 0.5 < r.accept_prob < 0.8  # adapted towards 0.65


def test_ais_standard_error_shrinks_with_more_chains():
    truth, x, _ = fa_batch(30)
    pyro.set_rng_seed(1)
    few = ais(truth, (x,), AISConfig(num_temperatures=30, num_chains=4))
    many = ais(truth, (x,), AISConfig(num_temperatures=30, num_chains=32))
    # sd(w) / (sqrt(C) mean(w)): 8x the chains, about 1/sqrt(8) = 0.35 the error
    assert float(many.stderr.mean()) < 0.6 * float(few.stderr.mean())


def test_cli_evaluates_an_mcem_run_by_ais(tmp_path, capsys):
    out = tmp_path / "fa"
    train = ["train", "fa", "--data", "fa-synthetic", "--inference", "mcem", "--subset", "320"]
    train += ["--test-subset", "100", "--epochs", "6", "--proposal-epochs", "0"]
    assert main([*train, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(out), "--estimator", "ais", "--num-samples", "8"]
    assert main([*argv, "--ais-temperatures", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["estimator"] == "ais" and result["num_samples"] == 8
    assert abs(result["test_log_likelihood"] - result["test_log_evidence_exact"]) < 0.05
    assert result["test_log_likelihood_stderr"] > 0


def test_one_temperature_is_importance_sampling_from_the_prior():
    """T = 1: log w = log p(x | z_0) with z_0 ~ p(z), so AIS is IS-C with the prior as
    proposal, draw for draw under the same seed (the HMC move after the last weight
    changes nothing)."""
    truth, x, _ = fa_batch(10)
    c = 50
    torch.manual_seed(5)
    fixed = torch.full((1, len(x)), 0.1)
    r = ais(truth, (x,), AISConfig(num_temperatures=1, num_chains=c), step_sizes=fixed)
    torch.manual_seed(5)
    rep = x.repeat(c, 1)  # chain-major: row c * B + i is datapoint i
    truth.prior().sample((len(rep),))  # Latents runs the model once to find its sites
    z = truth.prior().sample((len(rep),))  # the chains' start, z_0 ~ p(z)
    log_w = truth.decode(z).log_prob(rep).detach().reshape(c, len(x)).double()
    expected = torch.logsumexp(log_w, 0) - math.log(c)
    # the same float32 log-likelihoods (~-10) through two code paths: a few ulps, << 1e-4
    torch.testing.assert_close(r.log_likelihood.double(), expected, rtol=0, atol=1e-4)


def _constant_likelihood_model(x):
    """p(x | z) = N(x; 0.5, 2) whatever z: every AIS weight is exactly p(x)."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(torch.full((6,), 0.5), 2.0).to_event(1), obs=x)


@pytest.mark.parametrize("temperatures", [1, 2, 7, 40])
def test_annealing_increments_telescope_to_the_whole_likelihood(temperatures):
    """sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1}) = log p(x) when the likelihood is
    constant in z, for any path and any moves: every increment must be counted once."""
    x = torch.randn(8, 6) * 2
    pyro.set_rng_seed(0)
    r = ais(_constant_likelihood_model, (x,), AISConfig(num_temperatures=temperatures))
    exact = dist.Normal(0.5, 2.0).log_prob(x).sum(-1)
    # float32 log-likelihood terms of size ~15, summed in float64: ~1e-6
    torch.testing.assert_close(r.log_likelihood, exact, rtol=0, atol=1e-4)
    assert float(r.stderr.max()) < 1e-5  # all chains carry the same weight


def test_ais_weights_are_unbiased_for_the_exact_fa_evidence():
    """E[w] = p(x): the ratio w / p(x) averages to 1 over 5000 independent single-chain runs
    (20 FA datapoints x 250 copies, 100 temperatures: sd(w / p(x)) ~ 0.8, so the standard
    error is ~0.011). A move that does not leave its temperature's density invariant (e.g.
    HMC at beta = 1 throughout) puts the mean at ~10."""
    truth, x, exact = fa_batch(20)
    x, exact = x.repeat(250, 1), exact.repeat(250)
    pyro.set_rng_seed(0)
    r = ais(truth, (x,), AISConfig(num_temperatures=100, num_chains=1))
    ratio = torch.exp(r.log_likelihood.double() - exact.double())
    se = float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - 1.0) < 4.5 * se, (float(ratio.mean()), se)


def test_step_size_schedule_shape_is_checked():
    truth, x, _ = fa_batch(5)
    with pytest.raises(ConfigError, match="step_sizes"):
        ais(truth, (x,), AISConfig(num_temperatures=3), step_sizes=torch.ones(2, 5))


def test_compiled_potential_first_traced_without_gradients_still_differentiates():
    """AIS scores its chains under no_grad before the first HMC step: a potential compiled
    there once recorded in-place ops that broke every later gradient (``aevb evaluate
    --estimator ais`` failed on any VAE run). The compiled potential and its gradient equal
    the uncompiled ones."""
    from aevb import models
    from aevb.inference.samplers import Latents, potential_and_grad

    pyro.clear_param_store()
    torch.manual_seed(0)
    # MNIST's x_dim: the in-place op appeared at 784 inputs, not at 12
    model = models.build("vae", x_dim=784, z_dim=3, hidden=(8,))
    x = (torch.rand(6, 784) < 0.5).float()
    compiled, plain = Latents(model, (x,), jit=True), Latents(model, (x,), jit=False)
    u = torch.randn(6, 3)
    with torch.no_grad():
        compiled.log_parts(u, (x,))
    U, grad = potential_and_grad(compiled, u, (x,), beta=0.5)
    U0, grad0 = potential_and_grad(plain, u, (x,), beta=0.5)
    torch.testing.assert_close(U, U0)
    torch.testing.assert_close(grad, grad0)
