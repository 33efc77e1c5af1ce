"""The HMC building blocks, deterministically, and every sampler's moments with power.

Deterministic checks run in float64 on a quadratic potential, where the leapfrog's properties
hold to rounding: time reversibility, volume preservation, second-order energy error, and the
Metropolis test of one transition recomputed independently here.

Statistical checks start many chains (thousands of copies of a few FA datapoints) at draws
from the exact posterior p(z|x) and run a fixed step size tuned to ~0.6 acceptance. A correct
kernel leaves p(z|x) invariant, so the state after every transition is an exact draw: across
N independent chains a moment's standard error is sd / sqrt(N), and averaging over the kept
transitions as well can only lower it (an average of identically distributed, correlated
estimates has at most the variance of one). At 0.6 acceptance an unadjusted or mis-integrated
kernel is far from invariant: a Metropolis test looser by 0.3 nats moved E|w|^2 by 16
standard errors with N = 5000, a leapfrog missing its last half momentum step by 13.
"""

import math

import pyro
import pytest
import torch

from aevb import data
from aevb.errors import ConfigError
from aevb.inference.diagnostics import measure_ess
from aevb.inference.samplers import (
    BatchedHMC,
    Latents,
    kinetic_energy,
    leapfrog,
    make_sampler,
    metropolis,
)

# --- a quadratic potential U(u) = u^T A u / 2 per chain, in float64 --------------------------

A = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)


def quadratic(u):
    return 0.5 * ((u @ A) * u).sum(-1), u @ A


def reference_leapfrog(u, r, eps, n, inv_mass=None):
    """A second, plainly written leapfrog (half kick, n drifts with n - 1 full kicks between
    them, half kick) to recompute the package's trajectories independently."""
    m = torch.ones_like(u) if inv_mass is None else inv_mass
    r = r - eps / 2 * (u @ A)
    for i in range(n):
        u = u + eps * m * r
        if i != n - 1:
            r = r - eps * (u @ A)
    r = r - eps / 2 * (u @ A)
    return u, r


def energy(u, r, inv_mass=None):
    m = torch.ones_like(u) if inv_mass is None else inv_mass
    return quadratic(u)[0] + 0.5 * (r * r * m).sum(-1)


@pytest.fixture
def start():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, 3, generator=g, dtype=torch.float64)
    r = torch.randn(64, 3, generator=g, dtype=torch.float64)
    inv_mass = 0.5 + torch.rand(64, 3, generator=g, dtype=torch.float64)
    return u, r, inv_mass


@pytest.mark.parametrize("with_mass", [False, True])
def test_leapfrog_is_time_reversible(start, with_mass):
    u, r, m = start
    m = m if with_mass else None
    _, g = quadratic(u)
    u1, r1, _, g1 = leapfrog(quadratic, u, r, g, 0.1, 25, m)
    u2, r2, _, _ = leapfrog(quadratic, u1, -r1, g1, 0.1, 25, m)
    torch.testing.assert_close(u2, u, rtol=0, atol=1e-12)
    torch.testing.assert_close(-r2, r, rtol=0, atol=1e-12)


def test_leapfrog_matches_an_independent_implementation(start):
    u, r, m = start
    for inv_mass in (None, m):
        u1, r1, U1, g1 = leapfrog(quadratic, u, r, quadratic(u)[1], 0.2, 7, inv_mass)
        u_ref, r_ref = reference_leapfrog(u, r, 0.2, 7, inv_mass)
        torch.testing.assert_close(u1, u_ref, rtol=0, atol=1e-13)
        torch.testing.assert_close(r1, r_ref, rtol=0, atol=1e-13)
        torch.testing.assert_close((U1, g1), quadratic(u1), rtol=0, atol=1e-13)


def test_leapfrog_preserves_volume(start):
    u, r, m = start
    for inv_mass in (None, m[:1]):

        def flow(state, inv_mass=inv_mass):
            uu, rr = state[:3].unsqueeze(0), state[3:].unsqueeze(0)
            u1, r1, _, _ = leapfrog(quadratic, uu, rr, quadratic(uu)[1], 0.3, 10, inv_mass)
            return torch.cat([u1[0], r1[0]])

        jac = torch.autograd.functional.jacobian(flow, torch.cat([u[0], r[0]]))
        assert abs(float(torch.linalg.det(jac)) - 1.0) < 1e-12


def test_leapfrog_energy_error_is_second_order(start):
    """At a fixed trajectory length the energy error shrinks 4x when the step halves (a
    first-order integrator, e.g. one missing a half momentum step, shrinks it 2x)."""
    u, r, m = start
    for inv_mass in (None, m):
        h0 = energy(u, r, inv_mass)
        errors = []
        for n in (20, 40, 80):
            u1, r1, _, _ = leapfrog(quadratic, u, r, quadratic(u)[1], 2.0 / n, n, inv_mass)
            errors.append(float((energy(u1, r1, inv_mass) - h0).abs().mean()))
        for coarse, fine in zip(errors, errors[1:]):
            assert 3.5 < coarse / fine < 4.5, errors


def test_leapfrog_needs_a_step():
    u = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(ConfigError, match="num_steps"):
        leapfrog(quadratic, u, u, u, 0.1, 0)


def test_kinetic_energy_uses_the_inverse_mass():
    r = torch.tensor([[1.0, 2.0]])
    assert kinetic_energy(r, None).item() == 5.0
    assert kinetic_energy(r, torch.tensor([[0.5, 0.25]])).item() == 1.5


@pytest.mark.parametrize("with_mass", [False, True])
def test_one_transition_accepts_exactly_when_log_u_is_below_h0_minus_h1(start, with_mass):
    """The same seed replays the transition's draws (momentum, jitter, uniforms); the energies
    are recomputed here with the reference leapfrog."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    inv_mass = 0.5 + torch.rand(4000, 3, generator=g, dtype=torch.float64) if with_mass else None
    eps = torch.full((4000,), 0.9, dtype=torch.float64)
    U, grad = quadratic(u)
    hmc = BatchedHMC(num_steps=5)
    torch.manual_seed(7)
    u_new, U_new, g_new, prob, accepted = hmc.transition(quadratic, u, U, grad, eps, inv_mass)

    torch.manual_seed(7)
    r = torch.randn_like(u)
    if inv_mass is not None:
        r = r / inv_mass.sqrt()
    e = (eps * (1.0 + hmc.jitter * (2.0 * torch.rand_like(eps) - 1.0))).unsqueeze(-1)
    u1, r1 = reference_leapfrog(u, r, e, 5, inv_mass)
    h0, h1 = energy(u, r, inv_mass), energy(u1, r1, inv_mass)
    log_v = torch.rand_like(h0).log()
    expected = log_v < h0 - h1
    assert 0.2 < expected.double().mean() < 0.8  # both branches are exercised
    assert torch.equal(accepted, expected)
    torch.testing.assert_close(prob, torch.exp(h0 - h1).clamp(max=1.0), rtol=1e-10, atol=0)
    want_u = torch.where(expected.unsqueeze(-1), u1, u)
    torch.testing.assert_close(u_new, want_u, rtol=0, atol=1e-12)
    torch.testing.assert_close((U_new, g_new), quadratic(want_u), rtol=0, atol=1e-12)


def test_metropolis_rejects_nan_energies_and_accepts_downhill_moves():
    h0 = torch.tensor([1.0, 1.0, 1.0])
    log_a, accept = metropolis(h0, torch.tensor([float("nan"), 0.0, 1e3]))
    assert accept.tolist() == [False, True, False]
    assert log_a.tolist() == [-math.inf, 0.0, -999.0]


# --- moments of every sampler on the exact FA posterior --------------------------------------


@pytest.fixture(scope="module")
def fa_posterior():
    truth = data.fa_truth()
    _, test = data.load("fa-synthetic")
    return truth, test.x[:4]


def _whitened(truth, x, samples):
    """Draws [S, N, 2] mapped by the exact posterior to N(0, I) if they are exact draws."""
    post = truth.exact_posterior(x)
    dev = (samples - post.mean.detach()).unsqueeze(-1)
    return torch.linalg.solve_triangular(post.scale_tril.detach(), dev, upper=False).squeeze(-1)


def _assert_standard_normal(w: torch.Tensor, tolerance_se: float = 4.5):
    """w [S, N, 2]: each transition's N chains are N independent N(0, I) draws."""
    n = w.shape[1]
    mean = w.mean((0, 1))
    assert (mean.abs() < tolerance_se / math.sqrt(n)).all(), mean
    second = (w.unsqueeze(-1) * w.unsqueeze(-2)).mean((0, 1))  # E[w w^T] = I
    # sd of w_i^2 is sqrt(2), of w_1 w_2 is 1
    se = torch.tensor([[math.sqrt(2), 1.0], [1.0, math.sqrt(2)]]) / math.sqrt(n)
    assert ((second - torch.eye(2)).abs() < tolerance_se * se).all(), second
    r2 = (w**2).sum(-1).mean()  # E|w|^2 = 2, sd 2
    assert abs(float(r2) - 2.0) < tolerance_se * 2.0 / math.sqrt(n), r2


@pytest.mark.parametrize(
    "name, copies, step_size, with_mass",
    [
        ("batched-hmc", 2500, 0.3, False),
        ("batched-hmc", 2500, 0.6, True),
        ("hmc", 500, 0.068, False),
        ("nuts", 250, 0.07, False),
    ],
)
def test_sampler_leaves_the_exact_fa_posterior_invariant(
    fa_posterior, name, copies, step_size, with_mass
):
    truth, x0 = fa_posterior
    x = x0.repeat(copies, 1)  # 4 * copies independent targets
    pyro.set_rng_seed(0)
    u0 = truth.exact_posterior(x).sample().detach()
    latents = Latents(truth, (x,))
    inv_mass = None
    if with_mass:  # the posterior variances: the mass matrix adaptation's target
        cov = truth.exact_posterior(x).covariance_matrix.detach()
        inv_mass = torch.diagonal(cov, dim1=-2, dim2=-1).contiguous()
    sampler = make_sampler(name)
    state = sampler.sample(
        latents, (x,), u0, torch.tensor(step_size), 30, adapt=False, inv_mass=inv_mass
    )
    # the regime where a broken kernel's bias shows. Pyro's kernels run all 4 * copies
    # targets as one joint chain: 30 accept/reject decisions, whose mean acceptance varied
    # from 0.63 to 0.82 over seeds 0-3 (batched-hmc: 0.613-0.615 over 10,000 chains)
    low, high = (0.45, 0.8) if name == "batched-hmc" else (0.3, 0.95)
    assert low < float(state.accept_prob.mean()) < high
    _assert_standard_normal(_whitened(truth, x, state.samples))


def test_chains_per_datapoint_are_pooled_per_datapoint(fa_posterior):
    """measure_ess(chains=C) runs C chains for each datapoint and pools only those: on FA
    datapoints whose exact posteriors lie many posterior sds apart, pooling the wrong rows
    (another datapoint's chains) would put split-R-hat far above 1, and pooling C chains
    multiplies the effective sample size."""
    truth, x = fa_posterior
    x = 4 * x  # the posterior mean is linear in x, its covariance does not depend on x
    post = truth.exact_posterior(x)
    sd = torch.diagonal(post.covariance_matrix, dim1=-2, dim2=-1).sqrt().max()
    gaps = torch.cdist(post.mean, post.mean) + torch.eye(len(x)) * 1e9
    assert float(gaps.min()) > 2 * float(sd)  # the datapoints' posteriors are told apart
    one = measure_ess(truth, x, "batched-hmc", warmup=100, draws=200, chains=1)
    many = measure_ess(truth, x, "batched-hmc", warmup=100, draws=200, chains=8)
    assert many["chains"] == 8 and many["batch"] == len(x)
    assert many["rhat_max"] < 1.05, many
    assert many["rhat_fraction_below_1_01"] >= 0.5
    assert many["ess_per_datapoint_median"] > 4 * one["ess_per_datapoint_median"]
