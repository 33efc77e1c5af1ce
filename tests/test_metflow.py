"""MetFlow (aevb.inference.objectives.metflow) on factor analysis, whose evidence and posterior
are exact: the acceptance probability and the whole extended-space weight equal a brute-force
evaluation (autograd Jacobians, closed-form Gaussian densities) on the same draws; with every
proposal accepted the bound is the flow's own ELBO; the bound is below log p(x) at a poor
encoder and at the exact posterior. Then training: inference.fit and the command line."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb import inference
from aevb.errors import ConfigError, ObjectiveError
from aevb.inference.objectives import check_compatible, make_objective
from aevb.inference.objectives.mcvae import Target
from aevb.inference.objectives.metflow import (
    MetFlow_ELBO,
    MetFlowConfig,
    flow_forward,
    flow_inverse,
)


def _fa(fa, poor: bool):
    """FA in float64 with q(z|x) the exact posterior (or its mean and twice its scale)."""
    truth, guide, x, V, L = fa
    truth.double(), guide.double()
    with torch.no_grad():
        guide.set_parameters(V.double(), (2.0 if poor else 1.0) * L.double())
    return truth, guide, x


def _log_q0_log_p(truth, guide, x, u):
    """Closed forms: log q_0(u|x) of the linear-Gaussian guide and log N(u; 0, I) +
    log N(x; W u, diag sigma^2), rows particle-major copies of x's rows."""
    xs = x.repeat(u.shape[0] // x.shape[0], 1)
    q = dist.MultivariateNormal(xs @ guide.V.detach().T, scale_tril=guide.scale_tril.detach())
    prior = dist.Normal(torch.zeros_like(u), 1.0).log_prob(u).sum(-1)
    lik = dist.Normal(u @ truth.W.detach().T, truth.sigma.detach()).log_prob(xs).sum(-1)
    return q.log_prob(u), prior + lik


def _brute_map(flow, u, forward):
    """T_v(u) row by row: Pyro's own transform F, or the module's F^{-1} checked against F
    (F(F^{-1}(u)) = u), with log|det J_{T_v}(u)| from the autograd Jacobian."""
    rows, ladj = [], []
    for i in range(u.shape[0]):
        if bool(forward[i]):
            fn = flow
        else:
            fn = lambda r: flow_inverse(flow, r)[0]  # noqa: E731 (checked against F below)
        ui = u[i : i + 1].detach()
        out = fn(ui)
        if not bool(forward[i]):
            torch.testing.assert_close(flow(out), ui, rtol=0, atol=1e-10)
        jac = torch.autograd.functional.jacobian(lambda r, f=fn: f(r.unsqueeze(0))[0], ui[0])
        rows.append(out[0])
        ladj.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(rows).detach(), torch.stack(ladj).detach()


def _replayed(truth, guide, x, config, particles, seed):
    """The objective's log w and acceptance on ``seed``, and the same random stream replayed
    by brute force: (log w, alpha, expected log w, expected alpha)."""
    elbo = MetFlow_ELBO(particles, config)
    elbo.maps(torch.zeros(1, 2, dtype=x.dtype))  # the maps made before the seed
    pyro.set_rng_seed(seed)
    log_w, _, alpha = elbo.log_weights(Target(truth, guide, (x,), particles), False)
    pyro.set_rng_seed(seed)
    u = Target(truth, guide, (x,), particles).draw().detach()
    n = u.shape[0]
    directions = torch.rand(config.steps, n, dtype=u.dtype) < 0.5
    log_q0, log_p = _log_q0_log_p(truth, guide, x, u)
    expected, alphas, rho = -log_q0, [], config.decision_prior
    for k, flow in enumerate(elbo.flows):
        uniform = torch.rand(n, dtype=u.dtype)
        new, ladj = _brute_map(flow, u, directions[k])
        log_p_new = _log_q0_log_p(truth, guide, x, new)[1]
        a = torch.exp(log_p_new + ladj - log_p).clamp(max=1.0)  # eq. (1), with the Jacobian
        if config.force_accept:
            a = torch.ones_like(a)
        accept = uniform < a
        prob = torch.where(accept, a, 1 - a)
        m = torch.where(accept, torch.full_like(a, rho), torch.full_like(a, 1 - rho))
        if config.force_accept:
            m = torch.ones_like(a)
        expected = expected + torch.where(accept, ladj, 0.0) + m.log() - prob.log()
        u = torch.where(accept.unsqueeze(-1), new, u)
        log_p = torch.where(accept, log_p_new, log_p)
        alphas.append(a)
    return log_w.detach(), alpha, expected + log_p, torch.stack(alphas)


def test_the_flow_maps_are_pyros_transform_and_its_inverse():
    flow = MetFlow_ELBO(1).maps(torch.zeros(1, 3, dtype=torch.float64))[0]
    u = torch.randn(6, 3, dtype=torch.float64)
    y, ladj = flow_forward(flow, u)
    torch.testing.assert_close(y, flow(u))
    torch.testing.assert_close(ladj, flow.log_abs_det_jacobian(u, flow(u)))
    back, ladj_back = flow_inverse(flow, y)
    torch.testing.assert_close(back, u, rtol=0, atol=1e-12)
    torch.testing.assert_close(ladj_back, -ladj)


def test_the_acceptance_and_the_weight_equal_a_brute_force_evaluation(fa):
    """alpha_k = min(1, p(x, T_v(u)) |det J_{T_v}(u)| / p(x, u)) with the Jacobian from
    autograd, and log w = log p(x, u_K) - log q_0(u_0) + sum over accepted steps of
    log|det J| + sum_k log m(a_k) - log P(a_k), replayed on the same random stream."""
    truth, guide, x = _fa(fa, poor=True)
    x = x[:8]
    config = MetFlowConfig(steps=3)
    log_w, alpha, expected, expected_alpha = _replayed(truth, guide, x, config, 2, seed=5)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-9, atol=1e-12)
    assert 0.05 < float(alpha.mean()) < 0.95  # both decisions occur
    torch.testing.assert_close(log_w, expected, rtol=1e-10, atol=1e-9)


def test_with_every_proposal_accepted_the_bound_is_the_flows_own_elbo(fa):
    """force_accept: u_K = T_K o ... o T_1(u_0) and log w = log p(x, u_K) - log q_0(u_0) +
    sum_k log|det J_{T_k}(u_{k-1})| (change of variables), on one seed, exactly."""
    truth, guide, x = _fa(fa, poor=True)
    x = x[:8]
    config = MetFlowConfig(steps=3, force_accept=True)
    elbo = MetFlow_ELBO(1, config)
    elbo.maps(torch.zeros(1, 2, dtype=x.dtype))
    pyro.set_rng_seed(3)
    log_w, log_decisions, alpha = elbo.log_weights(Target(truth, guide, (x,), 1), False)
    pyro.set_rng_seed(3)
    u0 = Target(truth, guide, (x,), 1).draw().detach()
    directions = torch.rand(3, u0.shape[0], dtype=u0.dtype) < 0.5
    u, log_det = u0, torch.zeros(u0.shape[0], dtype=u0.dtype)
    for k, flow in enumerate(elbo.flows):
        u, ladj = _brute_map(flow, u, directions[k])
        log_det = log_det + ladj
    log_q0 = _log_q0_log_p(truth, guide, x, u0)[0]
    flow_elbo = _log_q0_log_p(truth, guide, x, u)[1] - log_q0 + log_det
    torch.testing.assert_close(log_w.detach(), flow_elbo, rtol=1e-10, atol=1e-9)
    assert float(alpha.min()) == 1.0 and float(log_decisions.abs().max()) == 0.0


@pytest.mark.parametrize("poor", [True, False])
def test_the_bound_is_below_the_evidence(fa, poor):
    """Mean over independent draws <= log p(x) + 3 standard errors, at a poor encoder and at
    the exact posterior (where the kernel leaves q_0 = p(z|x) invariant, and only the
    decisions' target m keeps the bound from exceeding log p(x))."""
    truth, guide, x = _fa(fa, poor)
    exact = float(truth.log_evidence(x).sum().detach())
    elbo, repeats = MetFlow_ELBO(1, MetFlowConfig(steps=3)), 30
    elbo.maps(torch.zeros(1, 2, dtype=x.dtype))
    pyro.set_rng_seed(0)
    b = torch.tensor([-elbo.loss(truth, guide, x) for _ in range(repeats)], dtype=x.dtype)
    mean, se = float(b.mean()), float(b.std() / math.sqrt(repeats))
    print("poor" if poor else "exact posterior", round(mean, 2), round(se, 2), round(exact, 2))
    assert mean <= exact + 3 * se


def test_options_are_checked_and_reach_the_objective():
    elbo = make_objective("metflow", 1, None, 1, {"steps": 2, "decision_prior": 0.7})
    assert isinstance(elbo, MetFlow_ELBO)
    assert (elbo.config.steps, elbo.config.decision_prior) == (2, 0.7)
    with pytest.raises(ConfigError, match="decision_prior: must be < 1"):
        make_objective("metflow", 1, None, 1, {"decision_prior": 1.0})
    with pytest.raises(ConfigError, match="has no option 'step_size'"):
        make_objective("metflow", 1, None, 1, {"step_size": 0.1})


def test_discrete_latents_are_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(y, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(0.0, 1.0))

    with pytest.raises(ObjectiveError, match="metflow: .*'y' is discrete"):
        check_compatible("metflow", model, guide, torch.randn(4))


def test_fit_trains_fa_and_the_bound_improves():
    from aevb import data

    pyro.clear_param_store()
    train, _ = data.load("fa-synthetic")
    run = inference.fit(
        data.fa_truth(),
        None,
        train.x[:256],
        "metflow",
        epochs=4,
        batch_size=64,
        seed=0,
        lr=3e-2,
        progress=False,
    )
    losses = run.history["train_loss"].to_numpy()
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
    assert 0.0 < run.history["accept_prob"].iloc[-1] <= 1.0
    assert any(n.startswith("metflow$$$") for n in pyro.get_param_store().keys())


def test_the_command_line_trains_fa_with_metflow(tmp_path):
    from aevb.cli import main

    out = tmp_path / "fa"
    argv = ["train", "fa", "--data", "fa-synthetic", "--objective", "metflow", "--epochs", "1"]
    assert main([*argv, "--seed", "0", "--out", str(out), "--quiet"]) == 0
    assert (out / "history.csv").exists()
