"""Samplers of p(z|x) against the exact FA posterior, and Monte Carlo EM end to end.

Tolerances come from the chains themselves: a Monte Carlo average of a statistic f over a
chain has standard error sd(f) / sqrt(ESS_f), with ESS_f the chain's effective sample size
for f (``pyro.ops.stats.effective_sample_size``, capped at the number of draws). Each check
allows 4.5 standard errors; there are about 20 checks per sampler.
"""

import json
import math

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.ops.stats import effective_sample_size

from aevb import data, inference, models
from aevb.cli import main
from aevb.errors import ConfigError, ObjectiveError
from aevb.inference.samplers import (
    BatchedHMC,
    FixedStepsHMC,
    Latents,
    find_step_size,
    make_sampler,
)
from aevb.inference.saved import load_run
from tests.test_cli import make_idx_folder


@pytest.fixture(scope="module")
def fa_problem():
    truth = data.fa_truth()
    _, test = data.load("fa-synthetic")
    x = test.x[:3]
    return truth, x


def _ess(chain: torch.Tensor) -> torch.Tensor:
    """ESS per coordinate of a chain [S, ...], capped at S."""
    ess = effective_sample_size(chain.unsqueeze(0), chain_dim=0, sample_dim=1)
    return ess.clamp(max=chain.shape[0])


def _assert_matches_posterior(samples: torch.Tensor, post: dist.MultivariateNormal):
    """samples [S, B, 2] against N(mean [B, 2], cov [B, 2, 2]) with ESS-based errors."""
    mean = post.mean.detach()
    cov = post.covariance_matrix.detach()
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    dev = samples - mean
    # means: sd(z) / sqrt(ESS)
    se = var.sqrt() / _ess(samples).sqrt()
    assert torch.all((samples.mean(0) - mean).abs() < 4.5 * se), (samples.mean(0), mean)
    # variances: E[(z - mu)^2] = var, sd((z - mu)^2) = sqrt(2) var for a Gaussian
    sq = dev**2
    se = math.sqrt(2) * var / _ess(sq).sqrt()
    assert torch.all((sq.mean(0) - var).abs() < 4.5 * se), (sq.mean(0), var)
    # covariance: E[(z1 - mu1)(z2 - mu2)] = c, Var = var1 var2 + c^2
    cross = dev[..., 0] * dev[..., 1]
    c = cov[..., 0, 1]
    se = (var[..., 0] * var[..., 1] + c**2).sqrt() / _ess(cross).sqrt()
    assert torch.all((cross.mean(0) - c).abs() < 4.5 * se), (cross.mean(0), c)


@pytest.mark.parametrize("name", ["batched-hmc", "hmc", "nuts"])
def test_sampler_draws_match_the_exact_fa_posterior(fa_problem, name):
    truth, x = fa_problem
    pyro.set_rng_seed(0)
    latents = Latents(truth, (x,))
    u0 = latents.prior_draw((x,))
    eps = torch.tensor(0.1)
    if name == "batched-hmc":
        eps = find_step_size(latents, (x,), u0, eps)
    sampler = make_sampler(name)
    state = sampler.sample(latents, (x,), u0, eps, num_samples=600, warmup_steps=150)
    assert state.samples.shape == (600, 3, 2)
    assert 0.75 < float(state.accept_prob.mean()) < 0.99  # tuned towards 0.9 (NUTS: 0.9 too)
    _assert_matches_posterior(state.samples, truth.exact_posterior(x))


def test_latents_log_joint_is_the_fa_joint_density(fa_problem):
    truth, x = fa_problem
    latents = Latents(truth, (x,))
    z = torch.randn(3, 2)
    expected = dist.Normal(0, 1).log_prob(z).sum(-1) + truth.decode(z).log_prob(x)
    assert torch.allclose(latents.log_joint(z, (x,)), expected.detach(), atol=1e-5)


def test_positive_latents_are_sampled_through_their_bijection():
    """rate_i ~ Gamma(2, 1), x_i ~ Poisson(rate_i): the posterior is Gamma(2 + x_i, 2)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    x = torch.tensor([0.0, 3.0, 9.0])
    pyro.set_rng_seed(1)
    latents = Latents(model, (x,))
    u0 = latents.prior_draw((x,))
    eps = find_step_size(latents, (x,), u0, torch.tensor(0.1))
    state = BatchedHMC().sample(latents, (x,), u0, eps, num_samples=1000, warmup_steps=150)
    values, _ = latents.unflatten(state.samples.reshape(-1, latents.dim))
    rate = values["rate"].reshape(1000, 3)
    post = dist.Gamma(2.0 + x, 2.0)
    se = post.stddev / _ess(rate).sqrt()
    assert torch.all((rate.mean(0) - post.mean).abs() < 4.5 * se)


def test_batched_hmc_chains_accept_and_reject_independently(fa_problem):
    truth, x = fa_problem
    latents = Latents(truth, (x,))
    pyro.set_rng_seed(2)
    u = latents.prior_draw((x,))
    from aevb.inference.samplers import potential, potential_and_grad

    U, g = potential_and_grad(latents, u, (x,))
    # chain 0 takes absurd steps (its proposal is rejected), chains 1, 2 tiny ones (accepted)
    eps = torch.tensor([50.0, 1e-3, 1e-3])
    target = potential(latents, (x,))
    new_u, new_U, new_g, prob, accepted = BatchedHMC().transition(target, u, U, g, eps)
    assert accepted.tolist() == [False, True, True]
    assert torch.equal(new_u[0], u[0]) and torch.equal(new_g[0], g[0])
    assert not torch.equal(new_u[1], u[1]) and not torch.equal(new_u[2], u[2])
    # the accepted chains' potentials are their own: recomputing them alone agrees
    alone, _ = potential_and_grad(Latents(truth, (x[1:],)), new_u[1:], (x[1:],))
    assert torch.allclose(new_U[1:], alone, atol=1e-5)


def test_pyro_hmc_keeps_ten_leapfrog_steps_under_adaptation(fa_problem):
    truth, x = fa_problem
    latents = Latents(truth, (x,))

    def potential_fn(params):
        return -latents.log_joint(params["u"], (x,)).sum()

    kernel = FixedStepsHMC(potential_fn=potential_fn, step_size=1.0, num_steps=10)
    mcmc = pyro.infer.MCMC(
        kernel,
        num_samples=5,
        warmup_steps=30,
        initial_params={"u": torch.zeros(3, 2)},
        disable_progbar=True,
    )
    mcmc.run()
    assert kernel.step_size != 1.0  # the step size was adapted...
    assert kernel.num_steps == 10  # ...and the trajectory still has 10 leapfrog steps


def test_mcem_raises_the_exact_fa_evidence_and_resumes_exactly(tmp_path):
    train, test = data.load("fa-synthetic")
    train = train.subset(320)
    settings = dict(epochs=3, batch_size=32, lr=1e-2, proposal_epochs=0, seed=0)

    def evidence(fa):
        return float(fa.log_evidence(test.x).mean().detach())

    pyro.set_rng_seed(0)
    fa = models.build("fa")
    inference.loop.reset_parameters(fa)
    start = evidence(fa)
    run = inference.mcem_fit(fa, None, train, test=test, out=tmp_path / "a", **settings)
    assert run.history["test_log_evidence_exact"].iloc[-1] > start + 0.5
    assert run.history["accept_prob"].between(0.6, 1.0).all()

    # 2 epochs, then resume to 3: the same parameters and chains as 3 in one go
    pyro.set_rng_seed(0)
    fa2 = models.build("fa")
    inference.mcem_fit(fa2, None, train, out=tmp_path / "b", **{**settings, "epochs": 2})
    pyro.set_rng_seed(0)
    fa2 = models.build("fa")
    inference.mcem_fit(fa2, None, train, out=tmp_path / "b", resume=True, **settings)
    assert torch.equal(fa.W, fa2.W) and torch.equal(fa.rho, fa2.rho)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["algorithm"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["algorithm"]
    assert torch.equal(a["u"], b["u"]) and torch.equal(a["step_size"], b["step_size"])


def test_mcem_refuses_discrete_latents():
    model = models.build("gmvae", x_dim=6, z_dim=2, hidden=(8,), num_clusters=3)
    x = torch.bernoulli(torch.full((16, 6), 0.4))
    with pytest.raises(ObjectiveError, match="discrete"):
        inference.mcem_fit(model, None, x, epochs=1, batch_size=8, proposal_epochs=0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        inference.mcem_fit(model, None, x, sampler="gibbs")


def test_cli_trains_a_vae_by_mcem_and_evaluates_it(tmp_path, capsys):
    mnist_folder = make_idx_folder(tmp_path)
    out = tmp_path / "run"
    common = ["--data", str(mnist_folder), "--subset", "40", "--test-subset", "20"]
    argv = ["train", "vae", "--inference", "mcem", "--sampler", "batched-hmc", *common]
    argv += ["--z-dim", "2", "--hidden", "16", "--epochs", "2", "--batch-size", "20"]
    argv += ["--proposal-epochs", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert (out / "history.csv").exists() and (out / "proposal_history.csv").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the run's proposal and model are restored from the checkpoint: the JSON is their
    # per-datapoint estimate on the 20 test images, draw for draw with seed 0
    loaded = load_run(out)
    model, guide = loaded.model, loaded.guide
    proposal = pd.read_csv(out / "proposal_history.csv")
    assert list(loaded.extra["proposal_history"]["epoch"]) == list(proposal["epoch"]) == [1]
    _, test = data.load(str(mnist_folder))
    direct = inference.bounds(model, guide, test.subset(20), 10, seed=0)
    assert result["num_test"] == 20
    assert result["test_log_likelihood"] == pytest.approx(float(direct.log_likelihood.mean()))
    assert result["test_elbo"] == pytest.approx(float(direct.elbo.mean()))
    record = json.loads((out / "config.json").read_text())
    assert record["inference"] == "mcem" and record["proposal"]["objective"] == "trace"
    # SVI-only flags are refused with MCEM
    assert main(["train", "vae", "--inference", "mcem", "--objective", "iwae", *common]) == 2


def test_batched_hmc_mass_matrix_learns_each_datapoints_posterior_variance(fa_problem):
    """The adapted diagonal M^-1 of every chain is its posterior variance (in u = z here).
    The window holds 600 draws (75% of 800 warm-up transitions); with an ESS of >= 200 the
    variance estimate's relative standard error is <= sqrt(2/200) = 0.1, so 0.6..1.4 of the
    exact FA posterior variance is a 4-standard-error band."""
    truth, x = fa_problem
    pyro.set_rng_seed(3)
    latents = Latents(truth, (x,))
    u0 = latents.prior_draw((x,))
    eps = find_step_size(latents, (x,), u0, torch.tensor(0.1))
    state = BatchedHMC().sample(latents, (x,), u0, eps, num_samples=1, warmup_steps=800)
    exact = torch.diagonal(truth.exact_posterior(x).covariance_matrix, dim1=-2, dim2=-1)
    assert state.inv_mass is not None and state.inv_mass.shape == (3, 2)
    ratio = state.inv_mass / exact.detach()
    assert torch.all((ratio > 0.6) & (ratio < 1.4)), ratio
    # short burn-ins (MCEM's 10 transitions) keep the identity
    short = BatchedHMC().sample(latents, (x,), u0, eps, num_samples=1, warmup_steps=10)
    assert short.inv_mass is None


@pytest.mark.parametrize("name", ["batched-hmc", "hmc"])
def test_an_adapted_mass_matrix_carries_into_the_next_call(fa_problem, name):
    truth, x = fa_problem
    pyro.set_rng_seed(4)
    latents = Latents(truth, (x,))
    u0 = latents.prior_draw((x,))
    sampler = make_sampler(name)
    warm = sampler.sample(latents, (x,), u0, torch.tensor(0.1), 1, warmup_steps=100)
    assert warm.inv_mass is not None and not torch.allclose(warm.inv_mass, torch.ones(3, 2))
    given = warm.inv_mass * 0 + 0.5
    more = sampler.sample(latents, (x,), warm.u, warm.step_size, 5, adapt=False, inv_mass=given)
    assert torch.allclose(more.inv_mass, given)


def test_compiled_log_density_equals_pyros_own():
    """Latents(jit=True) traces the conditioned model once per shape; the value and the
    gradient in u equal the eager (Pyro-traced) ones, for a full and a smaller batch."""
    from aevb import models
    from aevb.inference.samplers import potential_and_grad

    model = models.build("vae", x_dim=12, z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    fast, slow = Latents(model, (x,), jit=True), Latents(model, (x,), jit=False)
    for batch in (x, x[:4], x):
        u = torch.randn(batch.shape[0], 3)
        U1, g1 = potential_and_grad(fast, u, (batch,))
        U2, g2 = potential_and_grad(slow, u, (batch,))
        torch.testing.assert_close(U1, U2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)
    assert len(fast._compiled) == 2


def test_extending_a_decaying_mcem_run_equals_the_uninterrupted_run(tmp_path):
    """The learning-rate decay is a function of the step alone (over lr_decay_epochs), so
    ``--resume --epochs 4`` after 2 epochs is the 4-epoch run, bit for bit, also past the
    decay's end (epoch 3), where the rate stays at lr * lr_decay."""
    train, _ = data.load("fa-synthetic")
    train = train.subset(128)
    settings = dict(batch_size=32, lr=1e-2, proposal_epochs=0, lr_decay=0.1, lr_decay_epochs=3)

    def run(out, epochs, resume=False):
        pyro.set_rng_seed(0)
        fa = models.build("fa")
        inference.mcem_fit(fa, None, train, out=out, resume=resume, epochs=epochs, **settings)
        return fa

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    extended = run(tmp_path / "b", 4, resume=True)
    assert torch.equal(straight.W, extended.W) and torch.equal(straight.rho, extended.rho)

    from aevb.inference.mcem import MCEMAlgorithm, MCEMConfig

    algo = MCEMAlgorithm(models.build("fa"), MCEMConfig(**settings, epochs=4))
    algo.prepare(train, (train.x[:32],))  # 4 steps per epoch: the decay spans steps 0..11
    lrs = [algo.lr_at(t) for t in range(16)]
    assert lrs[0] == pytest.approx(1e-2) and lrs[11] == pytest.approx(1e-3)
    assert lrs[12:] == pytest.approx([1e-3] * 4)
    assert all(a > b for a, b in zip(lrs[:11], lrs[1:12]))


def test_a_decay_needs_its_length():
    x = torch.randn(40, 3)
    with pytest.raises(ConfigError, match="lr_decay_epochs"):
        # (left out, lr_decay_epochs would come from FA's recipe; None is "no length")
        inference.mcem_fit(
            models.build("fa"), None, x, lr_decay=0.1, lr_decay_epochs=None, proposal_epochs=0
        )
    with pytest.raises(ConfigError, match="lr_decay: must be > 0"):
        inference.mcem_fit(models.build("fa"), None, x, lr_decay=0.0, proposal_epochs=0)


def test_resuming_a_finished_mcem_run_restores_its_proposal(tmp_path):
    """The proposal q(z|x) is part of the run: resuming with nothing left to train restores
    it as it was (it is not fitted again), and ``evaluate`` gives the same numbers."""
    from aevb.inference.saved import evaluate_run

    train, test = data.load("fa-synthetic")
    settings = dict(epochs=2, batch_size=32, proposal_epochs=2, seed=0)
    out = tmp_path / "run"

    def run(resume=False):
        pyro.set_rng_seed(0)
        fa = models.build("fa")
        return inference.mcem_fit(
            fa, None, train.subset(128), test=test.subset(50), out=out, resume=resume, **settings
        )

    first = run()
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    csv = (out / "proposal_history.csv").read_text()
    scored = evaluate_run(out, 50, test=test.subset(50))
    again = run(resume=True)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), params[name]), name
    assert (out / "proposal_history.csv").read_text() == csv
    pd.testing.assert_frame_equal(again.extra["proposal_history"], first.extra["proposal_history"])
    rescored = evaluate_run(out, 50, test=test.subset(50))
    assert rescored["test_log_likelihood"] == scored["test_log_likelihood"]


def test_the_old_argument_order_is_refused_with_the_new_one_named():
    """Every method takes (model, guide, train): data passed where the guide belongs is an
    error that says so, not a guide."""
    x = torch.randn(40, 3)
    with pytest.raises(ConfigError, match=r"\(model, guide, train\): pass train="):
        inference.mcem_fit(models.build("fa"), x, epochs=1, proposal_epochs=0)
    with pytest.raises(ConfigError, match="fit needs training data"):
        inference.mcem_fit(models.build("fa"), epochs=1)
    with pytest.raises(ConfigError, match=r"unknown MCEM setting\(s\) \['epoch'\]; MCEMConfig"):
        inference.mcem_fit(models.build("fa"), None, x, epoch=1)
    assert inference.SVIConfig is inference.FitConfig
