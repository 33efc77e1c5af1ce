"""The enumerated ELBO with analytic KL (``enum-meanfield``) against a closed form.

Toy mixture: y ~ Cat(pi), z | y ~ N(mu_y, s_y^2) (2-d), x | z ~ N(z, 1); guide q(y) q(z | y)
with free per-datapoint parameters. Its ELBO is available exactly:

    sum_y q(y) [ log pi_y - log q(y) - KL(q(z|y) || p(z|y))
                 + sum_d ( -log(2 pi)/2 - ((x_d - m_yd)^2 + sd_yd^2) / 2 ) ]
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from aevb.inference.objectives import OBJECTIVES, make_objective

B, C, D = 3, 4, 2


def toy_params():
    g = torch.Generator().manual_seed(0)
    p = {
        "pi_logits": torch.randn(C, generator=g),
        "mu": torch.randn(C, D, generator=g),
        "s_raw": torch.randn(C, D, generator=g) * 0.3,
        "q_logits": torch.randn(B, C, generator=g),
        "m": torch.randn(B, C, D, generator=g),
        "sd_raw": torch.randn(B, C, D, generator=g) * 0.3 - 0.5,
    }
    return {k: v.requires_grad_() for k, v in p.items()}, torch.randn(B, D, generator=g)


def toy_model(p, x):
    with pyro.plate("data", B):
        y = pyro.sample("y", dist.OneHotCategorical(logits=p["pi_logits"]))
        z = pyro.sample("z", dist.Normal(y @ p["mu"], F.softplus(y @ p["s_raw"])).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def toy_guide(p, x):
    with pyro.plate("data", B):
        y = pyro.sample("y", dist.OneHotCategorical(logits=p["q_logits"]))
        # y: [..., B, C] one-hot (enumerated: [C, B, C] with expand=True)
        loc = (y.unsqueeze(-1) * p["m"]).sum(-2)
        sd = (y.unsqueeze(-1) * F.softplus(p["sd_raw"])).sum(-2)
        pyro.sample("z", dist.Normal(loc, sd).to_event(1))


def exact_elbo(p, x):
    q = F.softmax(p["q_logits"], -1)  # [B, C]
    log_pi = F.log_softmax(p["pi_logits"], -1)
    sd = F.softplus(p["sd_raw"])
    kl = kl_divergence(
        dist.Normal(p["m"], sd).to_event(1),
        dist.Normal(p["mu"], F.softplus(p["s_raw"])).to_event(1),
    )  # [B, C]
    rec = (-0.5 * math.log(2 * math.pi) - 0.5 * ((x.unsqueeze(1) - p["m"]) ** 2 + sd**2)).sum(-1)
    return (q * (log_pi - q.log() - kl + rec)).sum()


def draws(name, p, x, n):
    elbo = make_objective(name)
    guide = OBJECTIVES[name].prepare_guide(toy_guide)
    values, grads = [], []
    for _ in range(n):
        loss = elbo.differentiable_loss(toy_model, guide, p, x)
        values.append(-loss.detach())
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(-loss, list(p.values()))]))
    return torch.stack(values), torch.stack(grads)


@pytest.mark.parametrize("name", ["enum", "enum-meanfield"])
def test_enumerated_elbos_are_unbiased_in_value_and_gradient(name):
    pyro.set_rng_seed(1)
    p, x = toy_params()
    exact = exact_elbo(p, x)
    exact_grad = torch.cat(
        [g.flatten() for g in torch.autograd.grad(exact, list(p.values()))]
    ).detach()
    n = 1500
    values, grads = draws(name, p, x, n)
    se = values.std() / math.sqrt(n)
    assert abs(values.mean() - exact.detach()) < 4 * se + 1e-5
    gse = grads.std(0) / math.sqrt(n)
    # Bonferroni over the gradient coordinates: 4.5 sigma each
    assert torch.all((grads.mean(0) - exact_grad).abs() < 4.5 * gse + 1e-5)


def test_analytic_kl_lowers_the_variance():
    pyro.set_rng_seed(2)
    p, x = toy_params()
    sampled, _ = draws("enum", p, x, 400)
    analytic, _ = draws("enum-meanfield", p, x, 400)
    # only E log p(x|z) is sampled in the second: its variance must be clearly smaller
    assert analytic.var() < 0.7 * sampled.var()


def test_enum_meanfield_is_meanfield_on_a_reparameterised_guide():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1), obs=x)

    loc, raw = torch.randn(5, 2), torch.randn(5, 2)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    x = torch.randn(5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no sites configured for enumeration"
        pyro.set_rng_seed(3)
        a = make_objective("enum-meanfield").loss(model, guide, x)
    pyro.set_rng_seed(3)
    b = make_objective("meanfield").loss(model, guide, x)
    assert a == pytest.approx(b, rel=1e-6)
