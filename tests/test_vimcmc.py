"""MCMC-refined VI (aevb.inference.vimcmc) on factor analysis, whose posterior and evidence
are exact: HMC moves a poor encoder's draws onto the exact posterior; Fisher's identity holds
for the decoder loss at exact posterior draws, and the algorithm's decoder gradient at refined
draws equals the exact evidence's gradient; training reaches the true model's evidence and
resumes exactly."""

import math

import pyro
import torch

from aevb import data, guides
from aevb.data.dataset import as_dataset
from aevb.inference.vimcmc import VIMCMCAlgorithm, VIMCMCConfig


def _setup(n, mcmc_steps, shift=0.5, widen=2.0):
    """An FA model moved off the truth (so the evidence's gradient is far from zero), a
    guide far from its posterior, n training points (float64) and the algorithm prepared
    on them."""
    pyro.clear_param_store()
    truth = data.fa_truth().double()
    with torch.no_grad():
        truth.W.mul_(1.3)
        truth.rho.add_(0.3)
    guide = guides.default_for(truth).double()
    V, L = (t.detach() for t in truth.exact_posterior_parameters())
    with torch.no_grad():
        guide.set_parameters(V + shift, L * widen)
    train, _ = data.load("fa-synthetic")
    x = train.x[:n].double()
    alg = VIMCMCAlgorithm(truth, guide, VIMCMCConfig(mcmc_steps=mcmc_steps))
    alg.prepare(as_dataset(x), (x,))
    return truth, guide, x, alg


def _whitened(truth, x, u):
    """L^-1 (z - V x) per datapoint: N(0, I) exactly when z ~ p(z|x)."""
    V, L = (t.detach() for t in truth.exact_posterior_parameters())
    return torch.linalg.solve_triangular(L, (u - x @ V.T).T, upper=False).T


def _q_draws(guide, x):
    with torch.no_grad():
        return pyro.poutine.trace(guide).get_trace(x).nodes["z"]["value"]


def _matches_posterior(truth, x, z) -> bool:
    """Whitened draws with mean 0 and covariance I within 5 standard errors (1/sqrt(N) and
    sqrt(2/N) for N datapoints with one draw each)."""
    e, n = _whitened(truth, x, z), len(x)
    mean_ok = bool((e.mean(0).abs() < 5 / math.sqrt(n)).all())
    cov_ok = bool(((e.T @ e / n - torch.eye(2, dtype=e.dtype)).abs() < 5 * math.sqrt(2 / n)).all())
    return mean_ok and cov_ok


def test_refined_draws_have_the_exact_posterior_moments():
    """2000 datapoints, one chain each from a guide 0.5 off in V and 2x too wide: after 30
    transitions the draws have the exact posterior's moments; q's own draws do not."""
    truth, guide, x, alg = _setup(2000, 30)
    pyro.set_rng_seed(0)
    u = alg.refine((x,), torch.arange(len(x)))
    assert _matches_posterior(truth, x, u)
    assert not _matches_posterior(truth, x, _q_draws(guide, x))
    assert bool(alg.chains.visited.all()) and 0.5 < alg.epoch_diagnostics()["accept_prob"] < 1


def _theta_grad(loss, truth):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [truth.W, truth.rho])])


def test_fishers_identity_at_exact_posterior_draws():
    """E_{p(z|x)}[grad_theta log p(x, z)] = grad_theta log p(x): the decoder loss at exact
    posterior draws, averaged over 1600 draws, matches the exact evidence's gradient within 5
    standard errors per coordinate (while the largest coordinate is over 10 from zero)."""
    truth, _, x, alg = _setup(50, 1)
    exact = _theta_grad(-truth.log_evidence(x).sum(), truth)
    copies = 40  # each of 40 evaluations averages 40 draws per datapoint
    xs = x.repeat(copies, 1)
    posterior = truth.exact_posterior(xs)
    draws = torch.stack(
        [
            _theta_grad(alg.decoder_loss(posterior.sample(), (xs,)), truth) / copies
            for _ in range(40)
        ]
    )
    se = draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - exact).abs() <= 5 * se).all())
    assert float((exact.abs() / se).max()) > 10


def test_the_decoder_gradient_at_refined_draws_is_the_evidence_gradient():
    """The algorithm's own path (q's draws, 20 transitions, the decoder loss) on 40 copies of
    50 datapoints: the copies' gradients average to the exact evidence's within 5 standard
    errors; at q's unrefined draws they are over 20 standard errors off."""
    copies = 40
    truth, guide, x, _ = _setup(50, 20)
    xs = x.repeat(copies, 1)
    alg = VIMCMCAlgorithm(truth, guide, VIMCMCConfig(mcmc_steps=20))
    alg.prepare(as_dataset(xs), (xs,))
    exact = _theta_grad(-truth.log_evidence(x).sum(), truth)
    pyro.set_rng_seed(0)
    refined = alg.refine((xs,), torch.arange(len(xs))).reshape(copies, len(x), -1)
    raw = _q_draws(guide, xs).reshape(copies, len(x), -1)
    for draws, close in ((refined, True), (raw, False)):
        g = torch.stack([_theta_grad(alg.decoder_loss(u, (x,)), truth) for u in draws])
        z = (g.mean(0) - exact).abs() / (g.std(0) / math.sqrt(copies))
        assert bool((z <= 5).all()) if close else float(z.max()) > 20


class _Recording(VIMCMCAlgorithm):
    """Keeps the draws refine() returned and those the decoder's loss was evaluated at."""

    def refine(self, args, index):
        self.refined = super().refine(args, index)
        return self.refined

    def decoder_loss(self, u, args):
        self.decoded = u
        return super().decoder_loss(u, args)


def test_a_step_trains_the_encoder_on_its_bound_and_the_decoder_on_the_refined_draws():
    truth, guide, x, _ = _setup(50, 3)
    alg = _Recording(truth, guide, VIMCMCConfig(mcmc_steps=3))
    alg.prepare(as_dataset(x), (x,))
    store = pyro.get_param_store()
    alg.encoder_step((x,))
    grads = {name: p.grad for name, p in store.named_parameters()}
    assert all(grads[n] is None for n in alg.model_params) and alg.model_params
    assert all(g is not None for n, g in grads.items() if n not in alg.model_params)
    for p in store.values():
        p.grad = None
    before = {name: p.detach().clone() for name, p in store.items()}
    alg.step((x,), torch.arange(len(x)))
    assert alg.decoded is alg.refined
    assert all(not torch.equal(before[n], p) for n, p in store.items())


def test_fa_trained_by_vi_mcmc_reaches_the_true_model_evidence():
    from aevb import inference, models

    train, test = data.load("fa-synthetic")
    pyro.clear_param_store()
    model = models.build("fa")
    inference.vimcmc_fit(model, None, train, mcmc_steps=2, leapfrog_steps=3, epochs=20, seed=0)
    truth = data.fa_truth()
    with torch.no_grad():
        gap = float(truth.log_evidence(test.x).mean() - model.log_evidence(test.x).mean())
    assert abs(gap) <= 0.03


def test_the_guides_log_density_at_a_draw_is_its_closed_form():
    """Latents.guide_log_density of FA's Gaussian guide q(z|x) = N(V x, L L^T) at any z equals
    the multivariate normal's own log-density (z is unconstrained: no Jacobian)."""
    truth, guide, x, alg = _setup(20, 1)
    V, L = (t.detach() for t in truth.exact_posterior_parameters())
    loc, scale_tril = x @ (V + 0.5).T, L * 2.0  # the guide _setup made
    z = torch.randn(len(x), 2, dtype=x.dtype)
    exact = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril).log_prob(z)
    assert alg.latents is not None
    got = alg.latents.guide_log_density(guide, z, (x,))
    assert torch.allclose(got, exact, atol=1e-10)


def _step_grads(encoder_refined: float):
    """The guide's and the model's gradients of one step, seed 0, at the same state."""
    truth, guide, x, _ = _setup(30, 2)
    alg = _Recording(truth, guide, VIMCMCConfig(mcmc_steps=2, encoder_refined=encoder_refined))
    alg.prepare(as_dataset(x), (x,))
    alg.optim.step = lambda *a, **k: None  # gradients kept: the step is not applied
    pyro.set_rng_seed(0)
    alg.step((x,), torch.arange(len(x)))
    store = pyro.get_param_store()
    return alg, guide, x, {n: p.grad.detach().clone() for n, p in store.named_parameters()}


def test_the_encoders_fit_to_the_refined_draws_adds_its_own_gradient():
    """With encoder_refined = lambda the guide's gradient gains exactly that of
    -lambda sum_i log q(z_i^K|x_i) at the refined draws (same seed, same draws) and the
    model's gradient is unchanged; the history records the mean log q at those draws."""
    _, _, _, plain = _step_grads(0.0)
    alg, guide, x, fitted = _step_grads(2.0)
    store = pyro.get_param_store()
    params = {n: p for n, p in store.named_parameters() if n not in alg.model_params}
    assert alg.latents is not None
    log_q = alg.latents.guide_log_density(guide, alg.refined, (x,))
    extra = torch.autograd.grad(-2.0 * log_q.sum(), list(params.values()))
    for (name, _), g in zip(params.items(), extra, strict=True):
        assert torch.allclose(fitted[name] - plain[name], g, rtol=1e-8, atol=1e-8), name
        assert float(g.abs().max()) > 1e-3  # the term is not negligible here
    for name in alg.model_params:
        assert torch.equal(fitted[name], plain[name])
    row = alg.epoch_diagnostics()
    assert math.isclose(row["refined_log_q"], float(log_q.detach().mean()), rel_tol=1e-9)
