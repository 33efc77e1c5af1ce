"""Annealed importance sampling against the exact FA evidence."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb import data
from aevb.cli import main
from aevb.data import Dataset
from aevb.errors import ConfigError, DataError
from aevb.inference.estimators.ais import (
    AISConfig,
    ais,
    ais_dataset,
    sigmoid_schedule,
    use_compiled,
)


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


# ------------------------------------------------------------ inputs, and a user's own model


def _ais_small(model, data_, seed=0, **kwargs):
    pyro.set_rng_seed(seed)
    return ais_dataset(model, data_, AISConfig(num_temperatures=5, num_chains=4), **kwargs)


def test_ais_takes_a_tensor_an_array_a_pair_and_a_dataset_alike():
    """What ``bounds`` takes, AIS takes: the same estimates under one seed."""
    truth, x, _ = fa_batch(12)
    labels = np.zeros(len(x), dtype=np.int64)
    forms = {
        "tensor": x,
        "array": x.numpy(),
        "pair": (x.numpy(), labels),
        "dataset": Dataset.from_arrays(x),
    }
    results = {name: _ais_small(truth, form, batch_size=5) for name, form in forms.items()}
    want = results["tensor"]
    assert want.log_likelihood.shape == (12,) and want.evaluations > 0
    for name, got in results.items():
        torch.testing.assert_close(got.log_likelihood, want.log_likelihood, msg=name)
        torch.testing.assert_close(got.stderr, want.stderr, msg=name)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("width", "expects data of shape"),
        ("nan", "NaN"),
        ("text", "numeric"),
    ],
)
def test_ais_refuses_bad_data_with_one_line(bad, match):
    truth, x, _ = fa_batch(6)
    data_ = {
        "width": torch.randn(6, x.shape[1] + 1),
        "nan": x.clone().index_put_((torch.tensor([2]), torch.tensor([0])), torch.tensor(math.nan)),
        "text": "not data",
    }[bad]
    with pytest.raises(DataError, match=match) as info:
        _ais_small(truth, data_)
    assert "\n" not in str(info.value)


def test_ais_draws_a_stochastic_binarisation_once_like_is():
    """A dynamically binarised dataset is scored on one fixed draw (seed 0), as IS scores it."""
    from aevb import models

    pyro.clear_param_store()
    torch.manual_seed(0)
    model = models.build("vae", x_dim=12, z_dim=2, hidden=(8,))
    images = torch.rand(6, 12)
    dynamic = Dataset.from_arrays(images, binarize="dynamic")
    fixed = dynamic.fixed(0).x
    torch.testing.assert_close(
        _ais_small(model, dynamic).log_likelihood, _ais_small(model, fixed).log_likelihood
    )


#: a linear-Gaussian model as a user writes it, plain Pyro functions: z ~ N(0, I_2),
#: x | z ~ N(W z + b, sigma^2 I_5), so x ~ N(b, W W^T + sigma^2 I) in closed form
W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2], [0.5, 0.5], [0.0, 1.2]])
B = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.3])
SIGMA = 0.4


def linear_gaussian(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def test_ais_on_a_users_linear_gaussian_model_meets_the_closed_form_evidence():
    torch.manual_seed(3)
    n = 40
    x = torch.randn(n, 2) @ W.T + B + SIGMA * torch.randn(n, 5)
    cov = W @ W.T + SIGMA**2 * torch.eye(5)
    exact = dist.MultivariateNormal(B, cov).log_prob(x)
    pyro.set_rng_seed(0)
    r = ais_dataset(linear_gaussian, x, AISConfig(num_temperatures=100, num_chains=16))
    gap = float((r.log_likelihood - exact).mean())
    se_mean = float(r.stderr.pow(2).sum().sqrt() / n)
    # log of an unbiased average: E[log] - log p(x) ~ -stderr^2 / 2 per datapoint (delta
    # method), so the bias allowance is the mean of stderr^2, on top of 5 standard errors
    bias = float(r.stderr.pow(2).mean())
    assert abs(gap) < 5 * se_mean + bias, (gap, se_mean, bias)
    assert gap < 3 * se_mean  # not above the evidence beyond its noise
    assert 0.5 < r.accept_prob < 0.8


def _branching_model(x):
    """A Python branch on a latent's value: a trace would freeze one side of it."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        scale = 2.0 if bool(z.sum() > 0) else 1.0
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), scale).to_event(1), obs=x)


def test_a_users_model_is_compiled_only_when_the_trace_reproduces_it():
    from aevb.inference.samplers import Latents

    x5, x1 = torch.randn(8, 5), torch.randn(8, 1)
    u5 = Latents(linear_gaussian, (x5,)).prior_draw((x5,))
    u1 = Latents(_branching_model, (x1,)).prior_draw((x1,))
    assert use_compiled(linear_gaussian, (x5,), u5) is True
    assert use_compiled(_branching_model, (x1,), u1) is False
    assert use_compiled(data.fa_truth(), (x5,), u5) is None  # declared: not probed


def test_compiled_and_eager_ais_agree_under_one_seed():
    """The compiled log-density changes the cost of AIS, not its estimate."""
    x = torch.randn(10, 5) + B
    results = []
    for jit in (True, False):
        pyro.set_rng_seed(4)
        results.append(ais(linear_gaussian, (x,), AISConfig(num_temperatures=20), jit=jit))
    torch.testing.assert_close(results[0].log_likelihood, results[1].log_likelihood)
