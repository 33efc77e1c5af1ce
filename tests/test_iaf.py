"""The inverse autoregressive flow guide: its density against a brute-force Jacobian, T = 0
as the Gaussian encoder, every reparameterised objective, and factor analysis."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.util import detach

from aevb import guides, inference, models
from aevb.guides import IAFEncoder, IAFEncoderConfig
from aevb.guides.gaussian import GaussianEncoder, GaussianEncoderConfig
from aevb.inference.objectives import make_objective

SMALL = dict(x_dim=5, z_dim=3, hidden=(8,), flow_context=4, flow_hidden=(6, 6))


def _flow(steps: int = 3) -> IAFEncoder:
    torch.manual_seed(0)
    guide = IAFEncoder(IAFEncoderConfig(**SMALL, flow_steps=steps)).double()
    with torch.no_grad():  # bolder than the initialisation, so the steps move z visibly
        for p in guide.steps.parameters():
            p.mul_(3.0)
    return guide


@pytest.mark.parametrize("steps", [1, 3])
def test_log_q_is_the_base_density_minus_the_brute_force_log_determinant(steps):
    guide = _flow(steps)
    x = torch.rand(4, 5, dtype=torch.float64)
    q = guide.posterior(x)
    z0 = q.base_dist.sample()

    def push(u):
        for t in q.transforms:
            u = t(u)
        return u

    for i in range(4):
        # [4, 3, 4, 3] -> the datapoint's own 3 x 3 block (the flow acts per datapoint)
        jac = torch.autograd.functional.jacobian(push, z0)[i, :, i, :]
        expected = q.base_dist.log_prob(z0)[i] - torch.linalg.slogdet(jac).logabsdet
        z = push(z0)
        fresh = z.detach().clone()  # not the cached output: scored by inverting the steps
        torch.testing.assert_close(q.log_prob(fresh)[i], expected, rtol=1e-9, atol=1e-9)
        # each step is triangular in its own order, and the whole flow is not diagonal
        assert (jac - torch.diag(torch.diagonal(jac))).abs().max() > 1e-3
    z = q.rsample()
    torch.testing.assert_close(q.log_prob(z), q.log_prob(z.detach().clone()), rtol=1e-9, atol=1e-9)


def test_zero_steps_is_the_gaussian_encoder_exactly():
    fields = {k: v for k, v in SMALL.items() if k in GaussianEncoderConfig.__dataclass_fields__}
    gauss = GaussianEncoder(GaussianEncoderConfig(**fields))
    iaf = IAFEncoder(IAFEncoderConfig(**SMALL, flow_steps=0))
    iaf.load_state_dict(gauss.state_dict())  # same network: the state dicts fit each other
    x = torch.rand(7, 5)
    a, b = gauss.posterior(x), iaf.posterior(x)
    assert type(a) is type(b)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.stddev, b.stddev)
    draws = []
    for g in (gauss, iaf):
        pyro.set_rng_seed(3)
        draws.append(poutine.trace(g).get_trace(x).nodes["z"]["value"])
    assert torch.equal(*draws)


def test_the_flow_steps_alternate_their_variable_order():
    guide = _flow(3)
    orders = [step.nn.permutation.tolist() for step in guide.steps]
    assert orders == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]


def test_the_steps_see_the_encoders_context():
    """Moving only the context outputs of the encoder (not mu or sigma) changes the density
    of a fixed z: every step is conditioned on h."""
    guide = _flow(2)
    x = torch.rand(3, 5, dtype=torch.float64)
    z = torch.randn(3, 3, dtype=torch.float64)
    before = guide.posterior(x).log_prob(z)
    with torch.no_grad():
        guide.net[-1].bias[2 * 3 :] += 1.0  # the outputs after loc and scale: h
    after = guide.posterior(x).log_prob(z)
    assert (before - after).abs().min() > 1e-4


def test_detached_parameters_score_a_draw_as_the_cached_inverse_does():
    """stl, iwae-dreg and rws re-score the guide's draw with its parameters detached (a deep
    copy, without the cache): the inversion gives the same value, and its gradient reaches
    the draw but no parameter."""
    guide = _flow(2)
    q = guide.posterior(torch.rand(3, 5, dtype=torch.float64))
    z = q.rsample()
    torch.testing.assert_close(detach(q).log_prob(z), q.log_prob(z), rtol=1e-9, atol=1e-9)
    fixed = z.detach().requires_grad_(True)
    frozen = detach(q).log_prob(fixed).sum()
    params = list(guide.parameters())
    assert all(g is None for g in torch.autograd.grad(frozen, params, allow_unused=True))
    (gz,) = torch.autograd.grad(detach(q).log_prob(fixed).sum(), fixed)
    assert torch.isfinite(gz).all() and gz.abs().sum() > 0


REPARAMETERISED = [
    ("trace", 1, None),
    ("meanfield", 1, None),
    ("iwae", 3, None),
    ("renyi", 3, 0.5),
    ("stl", 1, None),
    ("iwae-dreg", 3, None),
    ("renyi-dreg", 3, 0.5),
    ("rws", 3, None),
]


@pytest.mark.parametrize("objective, k, alpha", REPARAMETERISED)
def test_every_reparameterised_objective_trains_the_flow(objective, k, alpha):
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = models.build("vae", x_dim=12, z_dim=3, hidden=(8,))
    guide = guides.build("iaf", model, flow_steps=2)
    x = (torch.rand(16, 12) < 0.5).float()
    loss = make_objective(objective, k, alpha=alpha)
    value = loss.loss_and_grads(model, guide, x)  # the loss, gradients on the parameters
    assert torch.isfinite(torch.tensor(value))
    flow = [p.grad for p in guide.steps.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in flow)
    assert sum(float(g.abs().sum()) for g in flow) > 0


def test_trace_and_stl_losses_agree_on_one_seed():
    """STL drops the score term from the gradient, not from the value."""
    model = models.build("vae", x_dim=12, z_dim=3, hidden=(8,))
    guide = guides.build("iaf", model)
    x = (torch.rand(16, 12) < 0.5).float()
    values = []
    for objective in ("trace", "stl"):
        pyro.set_rng_seed(5)
        values.append(make_objective(objective, 1).loss(model, guide, x))
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_an_iaf_run_is_evaluated_by_is_and_rebuilt_from_its_directory(tmp_path):
    from aevb.cli import main
    from aevb.inference.saved import evaluate_run, load_run

    out = tmp_path / "iaf"
    argv = ["train", "fa", "--data", "fa-synthetic", "--guide", "iaf", "--flow-steps", "3"]
    assert main([*argv, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    guide = load_run(out).guide
    assert isinstance(guide, IAFEncoder) and len(guide.steps) == 3
    r = evaluate_run(out, 200)
    assert r["test_elbo"] <= r["test_log_likelihood"] + 0.05 <= r["test_log_evidence_exact"] + 0.1


def test_flow_steps_belong_to_the_iaf_guide():
    from aevb.errors import ConfigError
    from aevb.spec import RunSpec

    with pytest.raises(ConfigError, match=r"'gaussian' guide has no setting 'flow_steps'.*iaf"):
        RunSpec.from_flat({"model": "vae", "flow_steps": 2})
    with pytest.raises(ConfigError, match="must be >= 0"):
        RunSpec.from_flat({"model": "vae", "guide": "iaf", "flow_steps": -1})
    spec = RunSpec.from_flat({"model": "vae", "guide": "iaf", "flow_steps": 0})
    assert RunSpec.from_dict(spec.to_dict()) == spec


def test_on_a_correlated_fa_posterior_the_flow_beats_every_diagonal_gaussian():
    """A fixed FA model whose posterior has correlation -0.95: no diagonal Gaussian q can get
    closer to log p(x) than the mean-field KL, 0.5 (sum_i log Lambda_ii - log det Lambda) for
    the posterior precision Lambda (1.16 nats here); trained the same way (the model frozen),
    the diagonal encoder stays above that bound, the IAF gets within a quarter of it, and
    closer than the full-covariance linear guide trained alike (``scripts/iaf_fa.py``
    measured 1.256, 0.102 and 1.590 nats; it also shows the linear guide, which contains the
    posterior, ending closer at a larger learning rate and more epochs)."""
    torch.manual_seed(0)
    W, sigma = torch.tensor([[2.0, 1.5], [2.0, 1.8], [1.5, 2.0]]), torch.full((3,), 0.5)
    truth = models.build("fa").set_parameters(W, sigma)
    precision = torch.linalg.inv(truth.exact_posterior(torch.zeros(1, 3)).covariance_matrix[0])
    bound = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    assert bound > 1.0
    x, test = truth.generate(1000).detach(), truth.generate(500).detach()
    gaps = {}
    for name in ("gaussian", "iaf", "linear-gaussian"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model = models.build("fa").set_parameters(W, sigma)
        guide = guides.build(name, model)
        inference.fit(
            model,
            guide,
            x,
            "trace",
            epochs=100,
            batch_size=100,
            seed=0,
            lr=1e-2,
            freeze=("fa",),
            reset=False,
        )
        assert torch.equal(model.W.detach(), W)
        elbo = inference.elbo(model, guide, test, num_samples=1000).mean().item()
        gaps[name] = model.log_evidence(test).mean().item() - elbo
    # 500 points x 1000 draws: the ELBO estimates' standard error is below 0.01 nats
    assert gaps["gaussian"] >= bound - 0.03, (gaps, bound)
    assert 0 <= gaps["iaf"] <= bound / 4, (gaps, bound)
    # at this equal budget the flow is at least as close as the full-covariance linear guide
    # (at lr 3e-2 and 300 epochs the linear guide ends closer: scripts/iaf_fa.py)
    assert gaps["iaf"] <= gaps["linear-gaussian"], gaps
