"""Every registered (model, objective) pair: one SVI step, or the clear error it deserves
(after Pyro's tests/infer/test_valid_models.py)."""

import numpy as np
import pyro
import pytest
import torch

from aevb import guides, inference, models
from aevb.errors import ObjectiveError
from aevb.inference.objectives import OBJECTIVES
from aevb.models.gmvae import cluster_accuracy

SMALL = {
    "vae": dict(x_dim=16, z_dim=2, hidden=(8,)),
    "cvae": dict(x_dim=16, z_dim=2, hidden=(8,), num_classes=3),
    "gmvae": dict(x_dim=16, z_dim=2, hidden=(8,), num_clusters=3),
    "gmvae-gumbel": dict(x_dim=16, z_dim=2, hidden=(8,), num_clusters=3, relaxed=True),
    "fa": dict(x_dim=16, z_dim=2),
    "m2": dict(x_dim=16, z_dim=2, hidden=(8,), num_classes=3),
}

#: the classification term needs a partially observed label (M2's)
_NO_LABEL_SITE = "no partially observed site"

#: (model, objective) pairs that must be refused, with a word the error must contain
REFUSED = {
    ("gmvae", "iwae"): "zero gradient",
    ("gmvae", "meanfield"): "reparameterised",
    ("gmvae", "iwae-dreg"): "reparameterised",
    ("gmvae", "renyi-dreg"): "reparameterised",
    ("gmvae-gumbel", "stl"): "depends on the latent",
    ("gmvae-gumbel", "iwae-dreg"): "depends on the latent",
    ("gmvae-gumbel", "renyi-dreg"): "depends on the latent",
    ("m2", "iwae"): "zero gradient",
    ("m2", "meanfield"): "reparameterised",
    ("m2", "iwae-dreg"): "reparameterised",
    ("m2", "renyi-dreg"): "reparameterised",
    # Langevin and MALA moves need a reparameterised draw of every latent (a discrete y has none)
    **{
        (name, o): "not reparameterised"
        for name in ("gmvae", "m2")
        for o in ("l-mcvae", "a-mcvae", "metflow")
    },
    **{(name, "semisupervised"): _NO_LABEL_SITE for name in SMALL if name != "m2"},
}


def _data(name, n=24):
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, 16), 0.3), generator=g)
    if name == "fa":
        x = torch.randn(n, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    if name == "m2":  # every third label hidden
        y[::3] = -1
    return x, y


def _build(name):
    base = name.split("-")[0]
    return models.build(base, **SMALL[name])


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("name", sorted(SMALL))
def test_one_step_for_every_model_and_objective(name, objective):
    model = _build(name)
    guide = guides.default_for(model)
    x, y = _data(name)
    data = (x, y) if model.uses_labels else x
    k = 3 if objective == "trace" or OBJECTIVES[objective].default_particles > 1 else 1
    alpha = 0.5 if OBJECTIVES[objective].takes_alpha else None
    key = (name, objective)
    if key in REFUSED:
        with pytest.raises(ObjectiveError, match=REFUSED[key]):
            inference.fit(model, guide, data, objective, particles=k, alpha=alpha, epochs=1)
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = inference.fit(
        model, guide, data, objective, particles=k, alpha=alpha, epochs=1, batch_size=12
    )
    assert np.isfinite(run.history["train_loss"]).all()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, "no model parameter moved"
    b = inference.bounds(model, guide, data, 5)
    assert b.log_likelihood.shape == (24,) and torch.isfinite(b.log_likelihood).all()


def test_enum_is_the_exact_sum_over_clusters():
    """TraceEnum_ELBO's value equals sum_y q(y|x) [log p(y) - log q(y|x) + ELBO_z(x, y)],
    computed by hand with the same z draws per cluster (a single z particle, k=1)."""
    model = _build("gmvae")
    guide = guides.default_for(model)
    x, _ = _data("gmvae", 5)
    elbo = OBJECTIVES["enum"].make(1, None, 1)
    enum_guide = OBJECTIVES["enum"].prepare_guide(guide)
    values = torch.tensor([-elbo.loss(model, enum_guide, x) for _ in range(300)])
    # by hand: E_{q(y|x)}[log p(y) - log q(y|x)] + sum_y q(y|x) E_{q(z|x,y)}[...], MC in z
    with torch.no_grad():
        q = guide.cluster_probs(x)  # [B, C]
        h = guide.z_in_x(x)
        total = (q * (torch.log(torch.tensor(1 / 3)) - torch.log(q))).sum()
        eye = torch.eye(3)
        zs = []
        for _ in range(300):
            acc = 0.0
            for c in range(3):
                y = eye[c].expand(5, 3)
                qz = guide.z_posterior(h, y)
                z = qz.sample()
                w = model.decode(z).log_prob(x) + model.z_prior(y).log_prob(z) - qz.log_prob(z)
                acc = acc + (q[:, c] * w).sum()
            zs.append(total + acc)
        by_hand = torch.stack(zs)
    se = (values.var() / 300 + by_hand.var() / 300).sqrt()
    assert abs(values.mean() - by_hand.mean()) < 4 * se


def test_gumbel_temperature_anneals_and_evaluation_is_discrete():
    model = _build("gmvae-gumbel")
    guide = guides.default_for(model)
    x, _ = _data("gmvae")
    seen = []
    inference.fit(
        model,
        guide,
        x,
        "trace",
        epochs=2,
        batch_size=6,
        callback=lambda epoch, step, loss: seen.append(model.y_prior(x).temperature.item()),
    )
    assert seen[0] == 1.0 and seen[-1] < 1.0 and all(a >= b for a, b in zip(seen, seen[1:]))
    model.eval()
    trace = pyro.poutine.trace(guide).get_trace(x)
    assert isinstance(trace.nodes["y"]["fn"], pyro.distributions.OneHotCategorical)


def test_cluster_accuracy_matches_permuted_labels():
    labels = np.repeat(np.arange(4), 25)
    perm = np.array([2, 0, 3, 1])
    assert cluster_accuracy(perm[labels], labels) == 1.0
    noisy = perm[labels].copy()
    noisy[:10] = (noisy[:10] + 1) % 4
    assert cluster_accuracy(noisy, labels) == pytest.approx(0.9)


def test_cvae_needs_labels_and_uses_them():
    model = _build("cvae")
    guide = guides.default_for(model)
    x, y = _data("cvae")
    from aevb.errors import DataError

    with pytest.raises(DataError, match="needs labels"):
        inference.fit(model, guide, x, epochs=1)
    inference.fit(model, guide, (x, y), epochs=1)
    # the conditional evidence depends on the label
    lp = [
        inference.bounds(model, guide, (x, torch.full_like(y, c)), 50, seed=1).elbo
        for c in range(3)
    ]
    assert not torch.allclose(lp[0], lp[1])
    assert model.generate_per_class(4).shape == (3, 4, 16)


@pytest.mark.parametrize("name", ["cvae", "gmvae", "vrnn"])
def test_every_gaussian_head_takes_its_floor_from_the_config(name):
    """One diagonal Gaussian head (nets.diagonal_gaussian) with min_scale from the config:
    a raw scale driven to -inf gives exactly that floor."""
    from aevb.models.nets import diagonal_gaussian

    q = diagonal_gaussian(torch.zeros(3), torch.full((3,), -1e4), 0.25)
    assert torch.equal(q.base_dist.scale, torch.full((3,), 0.25))
    small = {"cvae": SMALL["cvae"], "gmvae": SMALL["gmvae"], "vrnn": dict(step_dim=4, seq_len=2)}
    model = models.build(name, **small[name], min_scale=0.25)
    guide = guides.default_for(model)
    assert model.config.min_scale == 0.25 and guide.config.min_scale == 1e-4
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-50.0)  # every softplus(raw) underflows to 0
    if name == "cvae":
        prior = model.conditional_prior(torch.eye(3))
    elif name == "gmvae":
        prior = model.z_prior(torch.eye(3))
    else:
        prior = model.step_prior(torch.zeros(1, model.config.rnn_dim))
    assert torch.allclose(prior.base_dist.scale, torch.tensor(0.25))


def test_the_gmvae_is_compiled_under_enum_and_its_compiled_bound_is_the_eager_one():
    """A discrete y is summed out by the compiled TraceEnum_ELBO exactly as by the eager one
    (under one seed, loss and gradients), so the GMVAE trains compiled by default; the
    relaxed variant, whose temperature anneals, stays eager."""
    from aevb.inference.objectives import OBJECTIVES, make_jit_objective, make_objective, use_jit
    from aevb.inference.objectives.jit import compiled_matches_eager

    model = models.build("gmvae", x_dim=16, z_dim=3, num_clusters=4, hidden=(8, 8))
    guide = guides.default_for(model)
    assert use_jit("enum", model, guide, None)
    relaxed = models.build("gmvae", x_dim=16, relaxed=True)
    assert not use_jit("enum", relaxed, guides.default_for(relaxed), None)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.bernoulli(torch.full((20, 16), 0.4), generator=g),) for _ in range(2)]
    why = compiled_matches_eager(
        make_jit_objective("enum"),
        make_objective("enum"),
        model,
        OBJECTIVES["enum"].prepare_guide(guide),
        batches,
    )
    assert why is None


def test_presets_are_declared_by_each_model_class():
    """``PRESETS`` reads every registered class's own ``presets`` (issue 34: it was a
    hand-kept copy): M2 does not inherit the VAE's, and a registered class's appear."""
    assert models.PRESETS["m2"] == {} and "tutorial-cb" in models.PRESETS["vae"]
    assert set(models.PRESETS) == set(models.MODELS)

    @models.register
    class Tiny(models.VAE):
        name = "tiny-vae-test"
        presets = {"small": models.VAEConfig(z_dim=1, hidden=(3,))}

    try:
        assert models.build("tiny-vae-test", "small").config.hidden == (3,)
        assert "small" in models.PRESETS["tiny-vae-test"]
    finally:
        models.MODELS.pop("tiny-vae-test")
