"""The sticking-the-landing objective (aevb.inference.objectives.stl) on factor analysis, where the
exact posterior is known: at q = p(z|x) every draw's guide gradient is exactly zero; off it,
the gradient's mean equals trace's within Monte Carlo error, with less variance."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb.errors import ObjectiveError
from aevb.inference.objectives import check_compatible
from tests.conftest import gradient_draws


def test_stl_guide_gradient_is_zero_at_the_exact_posterior(fa):
    truth, guide, x, V, L = fa
    truth.double(), guide.double()
    V, L = truth.exact_posterior_parameters()  # in float64, so q = p(z|x) to rounding
    with torch.no_grad():
        guide.set_parameters(V.detach(), L.detach())
    pyro.set_rng_seed(0)
    stl, _ = gradient_draws(truth, guide, x, "stl", 5)
    pyro.set_rng_seed(0)
    trace, _ = gradient_draws(truth, guide, x, "trace", 5)
    assert float(stl.abs().max()) < 1e-8 * max(1.0, float(trace.abs().max()))
    assert float(trace.abs().max()) > 1e-2  # the score term trace keeps is not zero per draw


def test_stl_is_unbiased_with_less_variance_than_trace(fa):
    truth, guide, x, V, L = fa
    with torch.no_grad():  # off the optimum, where the expected gradient is not zero
        guide.set_parameters(V + 0.3, L * 1.5)
    truth.double(), guide.double()
    repeats = 400
    pyro.set_rng_seed(1)
    stl, stl_loss = gradient_draws(truth, guide, x, "stl", repeats)
    pyro.set_rng_seed(1)
    trace, trace_loss = gradient_draws(truth, guide, x, "trace", repeats)
    assert stl_loss == pytest.approx(trace_loss, rel=1e-10)  # same draws, same loss values
    diff = stl.mean(0) - trace.mean(0)
    se = ((stl.var(0) + trace.var(0)) / repeats).sqrt()
    # the two means differ by less than 5 standard errors, coordinate by coordinate; a bug
    # of the size of the expected gradient would be far outside
    assert bool((diff.abs() <= 5 * se + 1e-9).all())
    assert float(trace.mean(0).abs().max()) > 20 * float(se.max())
    assert float(stl.var(0).sum()) < float(trace.var(0).sum())


def test_stl_refuses_a_guide_whose_site_depends_on_another_latent():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(loc + x, 1.0))
            pyro.sample("z2", dist.Normal(z1, 1.0))

    pyro.clear_param_store()
    x = torch.randn(4)
    with pytest.raises(ObjectiveError, match="depends on the latent 'z1'"):
        check_compatible("stl", model, guide, x)
    check_compatible("trace", model, guide, x)
