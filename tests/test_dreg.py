"""Doubly reparameterised gradients (aevb.inference.objectives.dreg) on factor analysis: the
loss and the decoder gradient equal RenyiELBO's on the same draws; at the exact posterior every
draw's encoder gradient is zero; off it, the encoder gradient's mean equals RenyiELBO's within
Monte Carlo error, with less variance near the optimum."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb.errors import ConfigError, ObjectiveError
from aevb.inference.objectives import check_alpha, check_compatible, make_objective
from tests.conftest import gradient_draws

#: (DReG objective, the RenyiELBO objective with the same bound, alpha)
PAIRS = [("iwae-dreg", "iwae", None), ("renyi-dreg", "renyi", 0.5)]


@pytest.mark.parametrize("dreg, plain, alpha", PAIRS)
def test_dreg_loss_and_decoder_gradient_equal_renyi_on_the_same_draws(fa, dreg, plain, alpha):
    truth, guide, x, V, L = fa
    truth.double(), guide.double()
    with torch.no_grad():
        guide.set_parameters(V + 0.3, L * 1.5)
    pyro.set_rng_seed(3)
    g_dreg, loss_dreg = gradient_draws(truth, guide, x, dreg, 3, k=5, alpha=alpha, prefix="fa")
    pyro.set_rng_seed(3)
    g_plain, loss_plain = gradient_draws(truth, guide, x, plain, 3, k=5, alpha=alpha, prefix="fa")
    assert loss_dreg == pytest.approx(loss_plain, rel=1e-12)
    torch.testing.assert_close(g_dreg, g_plain, rtol=1e-10, atol=1e-9)
    assert float(g_plain.abs().max()) > 1.0


@pytest.mark.parametrize("dreg, plain, alpha", PAIRS)
def test_dreg_encoder_gradient_is_zero_at_the_exact_posterior(fa, dreg, plain, alpha):
    """At q = p(z|x), log w = log p(x) for every z: the path term vanishes draw by draw,
    while RenyiELBO's score term does not."""
    truth, guide, x, _, _ = fa
    truth.double(), guide.double()
    V, L = truth.exact_posterior_parameters()
    with torch.no_grad():
        guide.set_parameters(V.detach(), L.detach())
    pyro.set_rng_seed(0)
    g_dreg, _ = gradient_draws(truth, guide, x, dreg, 5, k=5, alpha=alpha)
    pyro.set_rng_seed(0)
    g_plain, _ = gradient_draws(truth, guide, x, plain, 5, k=5, alpha=alpha)
    assert float(g_plain.abs().max()) > 1e-2
    assert float(g_dreg.abs().max()) < 1e-8 * max(1.0, float(g_plain.abs().max()))


@pytest.mark.parametrize("dreg, plain, alpha", PAIRS)
def test_dreg_encoder_gradient_is_unbiased_with_less_variance(fa, dreg, plain, alpha):
    truth, guide, x, V, L = fa
    with torch.no_grad():  # near the optimum, not at it: the expected gradient is not zero
        guide.set_parameters(V + 0.1, L * 1.2)
    truth.double(), guide.double()
    repeats = 400
    pyro.set_rng_seed(1)
    g_dreg, _ = gradient_draws(truth, guide, x, dreg, repeats, k=5, alpha=alpha)
    pyro.set_rng_seed(2)
    g_plain, _ = gradient_draws(truth, guide, x, plain, repeats, k=5, alpha=alpha)
    keep = g_plain.var(0) > 0  # L's upper triangle is fixed at zero
    diff = (g_dreg.mean(0) - g_plain.mean(0))[keep]
    se = ((g_dreg.var(0) + g_plain.var(0))[keep] / repeats).sqrt()
    # independent draws: each coordinate's difference is within 5 standard errors (a bug of
    # the size of the gradient would be ~20 or more away, checked by the next line)
    assert bool((diff.abs() <= 5 * se).all()), float((diff.abs() / se).max())
    assert float(g_plain.mean(0).abs().max()) > 20 * float(se.max())
    assert float(g_dreg.var(0).sum()) < 0.5 * float(g_plain.var(0).sum())


def test_dreg_refuses_what_it_cannot_train():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(y, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(p))

    x = torch.randn(4)
    for name in ("iwae-dreg", "renyi-dreg"):
        with pytest.raises(ObjectiveError, match="not reparameterised"):
            check_compatible(name, model, guide, x, alpha=0.5)
    with pytest.raises(ConfigError, match="needs --alpha"):
        make_objective("renyi-dreg", 5)
    with pytest.raises(ConfigError, match="takes none"):
        check_alpha("iwae-dreg", 0.5)
