"""Monte Carlo VAEs (aevb.inference.objectives.mcvae) on factor analysis, whose evidence and
posterior are exact: L-MCVAE's bound is below log p(x) and tightens with K at a fixed poor
encoder; K = 0 is the IWAE bound of the same draws; the reverse kernel and the whole weight
equal a brute-force Gaussian evaluation; with q the exact posterior, every AIS increment of
A-MCVAE is (beta_k - beta_{k-1}) log p(x). Then training: inference.fit, a user's own program
with a constrained latent, and the command line."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb import inference
from aevb.errors import ObjectiveError
from aevb.inference.objectives import check_compatible, make_objective
from aevb.inference.objectives.mcvae import (
    MALAMCVAE_ELBO,
    SCHEDULE_LOGITS,
    LangevinMCVAE_ELBO,
    MCVAEConfig,
    Target,
    betas,
    leave_one_out,
    ula_log_density,
)


def _poor_encoder(fa):
    """FA in float64 with q(z|x) the exact posterior's mean and twice its scale."""
    truth, guide, x, V, L = fa
    truth.double(), guide.double()
    with torch.no_grad():
        guide.set_parameters(V.double(), 2.0 * L.double())
    return truth, guide, x


def _bounds(elbo, truth, guide, x, repeats):
    """``repeats`` draws of the bound summed over the batch."""
    return torch.tensor([-elbo.loss(truth, guide, x) for _ in range(repeats)], dtype=x.dtype)


def test_l_mcvae_is_below_the_evidence_and_tightens_as_k_grows(fa):
    truth, guide, x = _poor_encoder(fa)
    exact = float(truth.log_evidence(x).sum().detach())
    repeats, means, ses = 50, {}, {}
    pyro.set_rng_seed(0)
    for steps in (0, 3, 15):
        cfg = MCVAEConfig(steps=steps, step_size=0.05, adapt_gain=0.0)
        b = _bounds(LangevinMCVAE_ELBO(1, cfg), truth, guide, x, repeats)
        means[steps], ses[steps] = float(b.mean()), float(b.std() / math.sqrt(repeats))
    print({k: (round(means[k], 2), round(ses[k], 2)) for k in means}, "exact", round(exact, 2))
    for steps in means:  # a valid bound: at most 3 standard errors above the evidence
        assert means[steps] <= exact + 3 * ses[steps]
    for lo, hi in ((0, 3), (3, 15)):  # independent draws: the gain is > 3 standard errors
        assert means[hi] - means[lo] > 3 * math.hypot(ses[hi], ses[lo])
    assert means[15] < exact  # and still short of it at K = 15


def test_with_no_steps_the_bound_is_iwae_on_the_same_draws(fa):
    truth, guide, x = _poor_encoder(fa)
    for k in (1, 5):
        pyro.set_rng_seed(7)
        plain = make_objective("iwae" if k > 1 else "trace", k).loss(truth, guide, x)
        pyro.set_rng_seed(7)
        ours = LangevinMCVAE_ELBO(k, MCVAEConfig(steps=0)).loss(truth, guide, x)
        assert ours == pytest.approx(plain, rel=1e-10)


def test_the_ula_density_is_the_gaussian_transition():
    g = torch.Generator().manual_seed(0)
    u0, u1, grad = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    eta = 0.07
    cov = 2 * eta * torch.eye(3, dtype=torch.float64)
    brute = dist.MultivariateNormal(u0 + eta * grad, covariance_matrix=cov).log_prob(u1)
    torch.testing.assert_close(ula_log_density(u0, u1, grad, eta), brute, rtol=1e-12, atol=0)


def _fa_log_densities(truth, guide, x, u):
    """Closed forms: log q(u|x) under the linear-Gaussian guide, log N(u; 0, I) +
    log N(x; W u, diag sigma^2); the rows of u are particle-major copies of x's rows."""
    xs = x.repeat(u.shape[0] // x.shape[0], 1)
    q = dist.MultivariateNormal(xs @ guide.V.detach().T, scale_tril=guide.scale_tril.detach())
    prior = dist.Normal(torch.zeros_like(u), 1.0).log_prob(u).sum(-1)
    lik = dist.Normal(u @ truth.W.T, truth.sigma).log_prob(xs).sum(-1)
    return q.log_prob(u), prior + lik


def test_the_l_mcvae_weight_equals_a_brute_force_evaluation(fa):
    """Two annealed ULA steps written out with torch.distributions on the same draws:
    log w = log p(x, u_2) - log q(u_0) + sum_k log N(u_{k-1}; u_k + eta g_k(u_k), 2 eta I)
    - log N(u_k; u_{k-1} + eta g_k(u_{k-1}), 2 eta I), g_k = grad log q^(1-b_k) p^(b_k)."""
    truth, guide, x = _poor_encoder(fa)
    x = x[:6]
    eta, steps = 0.05, 2
    elbo = LangevinMCVAE_ELBO(3, MCVAEConfig(steps=steps, step_size=eta))
    pyro.set_rng_seed(11)
    target = Target(truth, guide, (x,), 3)
    log_w, _, _ = elbo.log_weights(target, create_graph=False)

    def grad_log_pi(u, beta):
        u = u.detach().requires_grad_(True)
        lq, lp = _fa_log_densities(truth, guide, x, u)
        return torch.autograd.grad(((1 - beta) * lq + beta * lp).sum(), u)[0]

    pyro.set_rng_seed(11)
    u = Target(truth, guide, (x,), 3).draw().detach()
    expected = -_fa_log_densities(truth, guide, x, u)[0]
    cov = 2 * eta * torch.eye(2, dtype=x.dtype)
    for beta in (0.5, 1.0):  # beta_k = k / K
        forward = u + eta * grad_log_pi(u, beta)
        new = forward + math.sqrt(2 * eta) * torch.randn_like(u)
        back = new + eta * grad_log_pi(new, beta)
        expected = expected + dist.MultivariateNormal(back, covariance_matrix=cov).log_prob(u)
        expected = expected - dist.MultivariateNormal(forward, covariance_matrix=cov).log_prob(new)
        u = new
    expected = expected + _fa_log_densities(truth, guide, x, u)[1]
    torch.testing.assert_close(log_w.detach(), expected.detach(), rtol=1e-10, atol=1e-9)


def test_a_mcvae_increments_are_beta_steps_of_the_evidence_at_the_exact_posterior(fa):
    """q = p(z|x): log p(x, z) - log q(z|x) = log p(x) at every z, so each increment is
    (beta_k - beta_{k-1}) log p(x) and the weight is log p(x), whatever MALA accepted."""
    truth, guide, x, _, _ = fa
    truth.double(), guide.double()
    V, L = truth.exact_posterior_parameters()  # in float64
    with torch.no_grad():
        guide.set_parameters(V, L)
    elbo = MALAMCVAE_ELBO(4, MCVAEConfig(steps=3, step_size=0.01))
    pyro.set_rng_seed(2)
    target = Target(truth, guide, (x,), 4)
    log_w, log_decisions, accept = elbo.log_weights(target, create_graph=False)
    exact = truth.log_evidence(x).repeat(4)
    torch.testing.assert_close(log_w.detach(), exact, rtol=1e-10, atol=1e-9)
    assert betas(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert accept.shape == (3, 200) and 0.2 < float(accept.mean()) < 1.0
    assert bool(torch.isfinite(log_decisions).all())


def test_a_mcvae_is_below_the_evidence_at_a_poor_encoder(fa):
    truth, guide, x = _poor_encoder(fa)
    exact = float(truth.log_evidence(x).sum().detach())
    pyro.set_rng_seed(3)
    repeats = 20
    b0 = _bounds(MALAMCVAE_ELBO(1, MCVAEConfig(steps=0)), truth, guide, x, repeats)
    cfg = MCVAEConfig(steps=5, step_size=0.1, adapt_gain=0.0)
    b5 = _bounds(MALAMCVAE_ELBO(1, cfg), truth, guide, x, repeats)
    se5 = float(b5.std() / math.sqrt(repeats))
    se0 = float(b0.std() / math.sqrt(repeats))
    assert float(b5.mean()) <= exact + 3 * se5
    assert float(b5.mean()) - float(b0.mean()) > 3 * math.hypot(se0, se5)


def test_the_leave_one_out_baseline_replaces_one_weight_by_the_others_geometric_mean():
    log_w = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    e = math.exp
    expected = torch.tensor(
        [
            math.log((e(2.0) + e(1.0) + e(3.0)) / 3),  # w_0 replaced by exp((1 + 3) / 2)
            math.log((e(0.0) + e(1.5) + e(3.0)) / 3),
            math.log((e(0.0) + e(1.0) + e(0.5)) / 3),
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(leave_one_out(log_w).squeeze(-1), expected)
    assert float(leave_one_out(log_w[:1]).abs().max()) == 0.0


def test_the_step_size_moves_towards_the_target_acceptance(fa):
    truth, guide, x = _poor_encoder(fa)
    elbo = LangevinMCVAE_ELBO(1, MCVAEConfig(steps=2, step_size=2.0, adapt_gain=0.5))
    pyro.set_rng_seed(0)
    elbo.loss_and_grads(truth, guide, x)
    assert elbo.accept_prob < 0.8 and elbo.step_size < 2.0  # too big: shrinks
    elbo = LangevinMCVAE_ELBO(1, MCVAEConfig(steps=2, step_size=1e-4, adapt_gain=0.5))
    elbo.loss_and_grads(truth, guide, x)
    assert elbo.accept_prob > 0.8 and elbo.step_size > 1e-4  # too small: grows


def test_discrete_latents_and_a_guide_missing_a_latent_are_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(y, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(0.0, 1.0))

    x = torch.randn(4)
    for name in ("l-mcvae", "a-mcvae"):
        with pytest.raises(ObjectiveError, match="need continuous latents.*'y' is discrete"):
            check_compatible(name, model, guide, x)

    def model2(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + u, 1.0), obs=x)

    def guide2(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ObjectiveError, match="exactly the model's latents"):
        check_compatible("l-mcvae", model2, guide2, x)


@pytest.mark.parametrize("objective", ["l-mcvae", "a-mcvae"])
def test_fit_trains_fa_and_the_bound_improves(objective):
    from aevb import data

    pyro.clear_param_store()
    train, _ = data.load("fa-synthetic")
    model = data.fa_truth()
    run = inference.fit(
        model,
        None,
        train.x[:256],
        objective,
        epochs=4,
        batch_size=64,
        seed=0,
        lr=3e-2,
        progress=False,
    )
    losses = run.history["train_loss"].to_numpy()
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize(
    "method",
    [
        {"objective": "l-mcvae", "particles": 2},
        {"objective": "a-mcvae"},
        {"objective": "metflow"},
        {"encoder_refined": 1.0, "mcmc_steps": 2},
    ],
    ids=["l-mcvae", "a-mcvae", "metflow", "vi-mcmc-refined"],
)
def test_a_users_own_program_trains(method):
    """Plain Pyro functions, as the README's own-model example writes them: a Laplace prior
    (docs/examples/my_models.py), networks captured in closures; through ``inference.fit``
    (``inference.vimcmc_fit`` for vi-mcmc) under each method that puts MCMC inside the
    variational family."""
    w = torch.randn(2, 3)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(2)
            z = pyro.sample("z", dist.Laplace(zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        out = encoder(x)
        with pyro.plate("data", x.shape[0]):
            scale = torch.nn.functional.softplus(out[..., 2:])
            pyro.sample("z", dist.Normal(out[..., :2], scale).to_event(1))

    pyro.clear_param_store()
    torch.manual_seed(0)
    decoder, encoder = torch.nn.Linear(2, 3), torch.nn.Linear(3, 4)
    x = torch.randn(128, 2) @ w + 0.3 * torch.randn(128, 3)
    kw = dict(epochs=3, batch_size=32, seed=0, lr=3e-2, progress=False)
    fit = inference.vimcmc_fit if "mcmc_steps" in method else inference.fit
    run = fit(model, guide, x, **method, **kw)
    losses = run.history["train_loss"].to_numpy()
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)


def test_a_positive_latent_moves_on_its_logarithm_and_the_bound_holds():
    """s ~ LogNormal(0, 1), x | s ~ LogNormal(log s, 1): log x ~ N(0, 2), so
    p(x) = N(log x; 0, 2) / x exactly. The moves run on u = log s with the Jacobian in both
    densities; the bound stays below log p(x) and improves on the ELBO's."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.LogNormal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.LogNormal(s.log(), 1.0), obs=x)

    def guide(x):  # the exact posterior of log s is N(log x / 2, 1/2): this one is too wide
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.LogNormal(0.5 * x.log(), 1.5))

    g = torch.Generator().manual_seed(0)
    x = torch.exp(math.sqrt(2.0) * torch.randn(100, generator=g, dtype=torch.float64))
    exact = float((dist.Normal(0.0, math.sqrt(2.0)).log_prob(x.log()) - x.log()).sum())
    pyro.set_rng_seed(0)
    repeats, found = 30, {}
    for steps in (0, 5):
        cfg = MCVAEConfig(steps=steps, step_size=0.1, adapt_gain=0.0)
        b = _bounds(LangevinMCVAE_ELBO(1, cfg), model, guide, x, repeats)
        found[steps] = (float(b.mean()), float(b.std() / math.sqrt(repeats)))
    print(found, "exact", round(exact, 2))
    for mean, se in found.values():
        assert mean <= exact + 3 * se
    assert found[5][0] - found[0][0] > 3 * math.hypot(found[0][1], found[5][1])


def test_the_command_line_trains_fa_with_l_mcvae(tmp_path):
    from aevb.cli import main

    out = tmp_path / "fa"
    argv = ["train", "fa", "--data", "fa-synthetic", "--objective", "l-mcvae", "--epochs", "1"]
    assert main([*argv, "--seed", "0", "--out", str(out), "--quiet"]) == 0
    assert (out / "history.csv").exists()


def test_the_objectives_own_settings_come_from_a_spec_and_are_checked(tmp_path):
    """``objective_options`` (a spec file's or grid's table) reaches the objective: K and eta
    recorded in the run, a name the objective does not have refused with the close ones."""
    from aevb import runs
    from aevb.errors import ConfigError
    from aevb.inference import rundir
    from aevb.inference.objectives import make_objective
    from aevb.spec import RunSpec

    flat = {"model": "fa", "data": "fa-synthetic", "subset": 64, "test_subset": 20}
    flat |= {"objective": "a-mcvae", "epochs": 1}
    elbo = make_objective("a-mcvae", 1, None, 1, {"step_size": 0.02})
    assert (elbo.config.steps, elbo.config.step_size) == (3, 0.02)  # a-mcvae's own K = 3
    spec = RunSpec.from_flat({**flat, "objective_options": {"steps": 2, "adapt_gain": 0.0}})
    runs.train(spec, tmp_path / "run", progress=False, figures=False)
    fit = rundir.read_config(tmp_path / "run")["fit"]
    assert fit["objective_options"] == {"steps": 2, "adapt_gain": 0.0}
    history = rundir.read_history(tmp_path / "run")
    assert history["step_size"].iloc[-1] == 0.01  # gain 0: eta stays at its setting
    with pytest.raises(ConfigError, match="has no option 'stpes'; did you mean steps"):
        RunSpec.from_flat({**flat, "objective_options": {"stpes": 2}})
    with pytest.raises(ConfigError, match="steps: must be >= 0"):
        RunSpec.from_flat({**flat, "objective_options": {"steps": -1}})
    with pytest.raises(ConfigError, match="'trace' has no options of its own"):
        RunSpec.from_flat({**flat, "objective": "trace", "objective_options": {"steps": 2}})


def _one_d_model(x):
    """z ~ N(0, 1), x | z ~ N(z, 1), one z per datapoint."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _one_d_guide(x):
    """q(z|x) = N(m, s), the same for every datapoint (m, s: the two parameters)."""
    m = pyro.param("m", torch.tensor(0.2, dtype=x.dtype))
    s = pyro.param("s", torch.tensor(1.5, dtype=x.dtype), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(m.expand(x.shape), s))


def _mean_gradient(elbo, x, repeats):
    """The objective's gradient of the bound per datapoint, in (m, s): mean and standard
    error over ``repeats`` batches."""
    grads = []
    for _ in range(repeats):
        pyro.clear_param_store()
        elbo.loss_and_grads(_one_d_model, _one_d_guide, x)
        store = pyro.get_param_store()
        grads.append([float(-store["m"].grad) / len(x), _s_grad(store) / len(x)])
    g = torch.tensor(grads, dtype=torch.float64)
    return g.mean(0), g.std(0) / math.sqrt(repeats)


def _s_grad(store) -> float:
    """d/ds of the loss from the unconstrained parameter's gradient (s = exp(log s))."""
    return float(-store.get_param("s").unconstrained().grad / store["s"].detach())


def _finite_difference(elbo, x, h, seeds):
    """(L(theta + h e_i) - L(theta - h e_i)) / 2h of the mean bound per datapoint for
    theta = (m, s), one batch per side with common random numbers, repeated over ``seeds``:
    mean and standard error."""
    rows = []
    for seed in range(seeds):
        row = []
        for name, centre in (("m", 0.2), ("s", 1.5)):
            sides = []
            for sign in (1, -1):
                pyro.clear_param_store()
                pyro.param(name, torch.tensor(centre + sign * h, dtype=x.dtype))
                pyro.set_rng_seed(seed)
                sides.append(-elbo.loss(_one_d_model, _one_d_guide, x) / len(x))
            row.append((sides[0] - sides[1]) / (2 * h))
        rows.append(row)
    fd = torch.tensor(rows, dtype=torch.float64)
    return fd.mean(0), fd.std(0) / math.sqrt(seeds)


@pytest.mark.parametrize("particles", [1, 2])
def test_the_a_mcvae_gradient_is_unbiased_and_needs_its_score_term(particles):
    """On a 1-D Gaussian model with a Gaussian q(z) = N(m, s): the A-MCVAE gradient (1
    particle, whose baseline is the start's ELBO sample, or 2 with the leave-one-out one; 2
    MALA steps at a fixed step size, about 18% of moves rejected) averaged
    over 40 batches of 4000 datapoints equals a central finite difference of the bound
    (h = 0.05, 8 seeds of 100 000 datapoints per side; its O(h^2) bias is far below the
    errors) within 4 standard errors of the two; without the score term of the accept/reject
    decisions (the pathwise part alone) it is over 4 off (about 25 in s when written)."""
    pyro.set_rng_seed(0)
    cfg = MCVAEConfig(steps=2, step_size=0.8, adapt_gain=0.0)
    elbo = MALAMCVAE_ELBO(particles, cfg)
    x = torch.full((4000,), 1.0, dtype=torch.float64)
    mean, se = _mean_gradient(elbo, x, 40)
    fd, fd_se = _finite_difference(elbo, torch.full((100_000,), 1.0, dtype=torch.float64), 0.05, 8)
    z = (mean - fd).abs() / torch.sqrt(se**2 + fd_se**2)
    assert bool((z < 4).all()), (mean, se, fd)

    class Pathwise(MALAMCVAE_ELBO):
        def log_weights(self, target, create_graph):
            log_w, _, accept = super().log_weights(target, create_graph)
            return log_w, None, accept

    pyro.set_rng_seed(0)
    path, path_se = _mean_gradient(Pathwise(particles, cfg), x, 40)
    assert float(((path - fd).abs() / torch.sqrt(path_se**2 + fd_se**2)).max()) > 4, (path, fd)


@pytest.mark.parametrize("cls", [LangevinMCVAE_ELBO, MALAMCVAE_ELBO])
def test_a_learnt_schedule_starts_linear_and_trains_on_the_bound(fa, cls):
    """learn_schedule: at zero logits the bound is the linear schedule's (same seed, same
    draws); its gradient reaches the logits; a poor encoder's bound then trains them, and
    the schedule stays increasing from 0 to 1 and still bounds the evidence."""
    truth, guide, x = _poor_encoder(fa)
    fixed = MCVAEConfig(steps=3, step_size=0.05, adapt_gain=0.0)
    learnt = MCVAEConfig(steps=3, step_size=0.05, adapt_gain=0.0, learn_schedule=True)
    pyro.set_rng_seed(3)
    plain = cls(2, fixed).loss(truth, guide, x)
    pyro.set_rng_seed(3)
    elbo = cls(2, learnt)
    assert elbo.loss_and_grads(truth, guide, x) == pytest.approx(plain, rel=1e-10)
    logits = pyro.get_param_store().get_param(SCHEDULE_LOGITS)
    assert logits.grad is not None and float(logits.grad.abs().max()) > 0
    optim = torch.optim.Adam([logits], lr=0.05)
    for _ in range(30):
        optim.zero_grad()
        elbo.loss_and_grads(truth, guide, x)
        truth.zero_grad(), guide.zero_grad()
        optim.step()
    steps = 4 if cls is MALAMCVAE_ELBO else 3
    schedule = torch.tensor([float(torch.as_tensor(b).detach()) for b in elbo.schedule(steps, x)])
    assert float(logits.detach().abs().max()) > 0.1  # moved off linear
    assert bool((schedule.diff() > 0).all()) and schedule[0] == 0 and schedule[-1] == 1
    exact = float(truth.log_evidence(x).sum().detach())
    b = _bounds(elbo, truth, guide, x, 20)
    assert float(b.mean()) <= exact + 3 * float(b.std() / math.sqrt(20))


def test_the_score_terms_warm_in_starts_at_zero_and_reaches_full_weight():
    """score_warmup = 4: the first step's gradient is the pathwise part alone (same seed),
    the weight then grows by 1/4 per step and stays at 1; the step count is checkpointed."""
    cfg = MCVAEConfig(steps=2, step_size=0.8, adapt_gain=0.0, score_warmup=4)
    x = torch.full((200,), 1.0, dtype=torch.float64)

    class Pathwise(MALAMCVAE_ELBO):
        def log_weights(self, target, create_graph):
            log_w, _, accept = super().log_weights(target, create_graph)
            return log_w, None, accept

    grads = []
    for elbo in (MALAMCVAE_ELBO(2, cfg), Pathwise(2, cfg)):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        elbo.loss_and_grads(_one_d_model, _one_d_guide, x)
        grads.append(_s_grad(pyro.get_param_store()))
    assert grads[0] == pytest.approx(grads[1], rel=1e-12)
    elbo = MALAMCVAE_ELBO(2, cfg)
    weights = []
    for _ in range(6):
        weights.append(elbo.score_weight())
        elbo.loss_and_grads(_one_d_model, _one_d_guide, x)
    assert weights == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    resumed = MALAMCVAE_ELBO(2, cfg)
    resumed.load_state_dict(elbo.state_dict())
    assert resumed.steps_taken == 6 and resumed.score_weight() == 1.0


def test_mala_moves_leave_the_posterior_invariant():
    """From exact posterior draws of the 1-D model (q = p(z|x) = N(x/2, 1/2)), 5 MALA moves
    on pi_1 at a large step size (eta = 0.8: about a quarter rejected) keep the mean and the
    variance within 5 standard errors over 40 000 chains; the accept/reject test corrects the
    Langevin proposal's bias, which alone would shrink or inflate the variance."""
    from aevb.inference.objectives.mcvae import mala_step

    pyro.clear_param_store()
    x = torch.full((40_000,), 1.0, dtype=torch.float64)
    pyro.param("m", torch.tensor(0.5, dtype=x.dtype))
    pyro.param("s", torch.tensor(math.sqrt(0.5), dtype=x.dtype))
    pyro.set_rng_seed(0)
    target = Target(_one_d_model, _one_d_guide, (x,), 1)
    point = target.point(target.draw(), create_graph=False)
    accepted = []
    for _ in range(5):
        point, _, log_a = mala_step(target, point, 1.0, 0.8, create_graph=False)
        accepted.append(float(log_a.exp().mean()))
    u = point.u.detach().squeeze(-1)
    n = len(u)
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(0.5 / n)
    assert abs(float(u.var()) - 0.5) < 5 * 0.5 * math.sqrt(2 / n)
    assert 0.5 < sum(accepted) / 5 < 0.95
