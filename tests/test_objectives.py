import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from aevb import guides, inference, models
from aevb.errors import ConfigError, DataError, ObjectiveError
from aevb.inference.objectives import OBJECTIVES, check_compatible, make_objective


def small_vae(d=16, z=3):
    model = models.build("vae", x_dim=d, z_dim=z, hidden=(12,))
    return model, guides.default_for(model)


@pytest.mark.parametrize("k", [1, 7])
def test_iwae_objective_is_the_per_datapoint_logsumexp(binary_data, k):
    model, guide = small_vae()
    x = binary_data[:10]
    elbo = make_objective("iwae", num_particles=k)
    pyro.set_rng_seed(3)
    loss = elbo.loss(model, guide, x)
    pyro.set_rng_seed(3)
    w = inference.log_weights(model, guide, (x,), k)  # same draws: [k, B]
    direct = (torch.logsumexp(w, 0) - math.log(k)).sum()
    assert loss == pytest.approx(-direct.item(), rel=1e-5)


def test_iwae_k1_is_trace_elbo(binary_data):
    model, guide = small_vae()
    x = binary_data[:20]
    iwae, trace = make_objective("iwae", 1), make_objective("trace", 1)
    # With the same draw the two estimators coincide exactly...
    pyro.set_rng_seed(5)
    a = iwae.loss(model, guide, x)
    pyro.set_rng_seed(5)
    b = trace.loss(model, guide, x)
    assert a == pytest.approx(b, rel=1e-6)
    # ...and hence in expectation: means over independent draws agree within MC error.
    la = torch.tensor([iwae.loss(model, guide, x) for _ in range(200)])
    lb = torch.tensor([trace.loss(model, guide, x) for _ in range(200)])
    se = math.sqrt(la.var() / 200 + lb.var() / 200)
    assert abs(la.mean() - lb.mean()) < 4 * se


def test_objective_registry_errors():
    with pytest.raises(ConfigError, match="unknown objective"):
        make_objective("kl")
    with pytest.raises(ConfigError, match="alpha"):
        make_objective("renyi", 5)
    with pytest.raises(ConfigError, match="num_particles"):
        make_objective("trace", 0)
    assert {"trace", "meanfield", "iwae", "renyi"} <= set(OBJECTIVES)
    assert isinstance(make_objective("renyi", 3, alpha=0.5), pyro.infer.RenyiELBO)


def _global_latent_model(x):
    s = pyro.sample("s", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(s, 1.0), obs=x[:, 0])


def _global_latent_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("s", dist.Normal(loc, 1.0))


def _local_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])


def _local_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0))


def _subsampled_model(x):
    with pyro.plate("data", 1000, subsample=torch.arange(x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])


def _subsampled_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", 1000, subsample=torch.arange(x.shape[0])):
        pyro.sample("z", dist.Normal(loc, 1.0))


def test_renyi_refuses_models_where_its_bound_is_not_per_datapoint():
    x = torch.randn(8, 2)
    with pytest.raises(ObjectiveError, match="data plate"):
        check_compatible("iwae", _global_latent_model, _global_latent_guide, x)
    with pytest.raises(ObjectiveError, match="unscaled"):
        check_compatible("iwae", _subsampled_model, _subsampled_guide, x)
    scaled = poutine.scale(_local_model, scale=0.5)
    with pytest.raises(ObjectiveError, match="scale"):
        check_compatible("renyi", scaled, _local_guide, x)
    # The same models are fine for the ELBO, and a local-latent model is fine for iwae.
    check_compatible("trace", _global_latent_model, _global_latent_guide, x)
    check_compatible("iwae", _local_model, _local_guide, x)
    with pytest.raises(ObjectiveError):
        inference.fit(_global_latent_model, _global_latent_guide, x, "iwae", epochs=1, batch_size=8)


def test_per_datapoint_estimates_need_local_latents():
    x = torch.randn(8, 2)
    with pytest.raises(ObjectiveError, match="per-datapoint"):
        inference.log_weights(_global_latent_model, _global_latent_guide, (x,), 4)


def test_bernoulli_vae_refuses_non_binary_data():
    model, guide = small_vae(d=4)
    with pytest.raises(DataError, match=r"\{0, 1\}"):
        inference.fit(model, guide, torch.rand(10, 4), epochs=1)
    with pytest.raises(DataError, match=r"shape \[N, 4\]"):
        inference.fit(model, guide, torch.ones(10, 5), epochs=1)


def _feature_plate_model(x):
    """z is shared by every datapoint: its only plate runs over the D features."""
    with pyro.plate("features", x.shape[1]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0).expand(x.shape), obs=x)  # batch shape [B, D]


def _feature_plate_guide(x):
    loc = pyro.param("loc", torch.zeros(x.shape[1]))
    with pyro.plate("features", x.shape[1]):
        pyro.sample("z", dist.Normal(loc, 1.0))


def test_renyi_refuses_a_plate_that_does_not_run_over_the_datapoints():
    x = torch.randn(8, 3)  # B = 8 datapoints, D = 3 features
    for name in ("iwae", "renyi"):
        with pytest.raises(ObjectiveError, match="batch's size 8.*features\\(3\\)"):
            check_compatible(name, _feature_plate_model, _feature_plate_guide, x, alpha=0.5)
    check_compatible("trace", _feature_plate_model, _feature_plate_guide, x)
    with pytest.raises(ObjectiveError, match="data plate"):
        inference.fit(_feature_plate_model, _feature_plate_guide, x, "iwae", epochs=1)


def _discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(c.float(), 1.0), obs=x[:, 0])


def _discrete_guide(x):
    logits = pyro.param("logits", torch.zeros(3))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Categorical(logits=logits))


def test_a_users_discrete_guide_site_is_refused_where_it_would_get_no_gradient():
    """Decided from the guide's trace, so a user's model is protected like the GMVAE."""
    x = torch.randn(8, 1)
    with pytest.raises(ObjectiveError, match="'c' \\(Categorical\\).*zero gradient"):
        check_compatible("iwae", _discrete_model, _discrete_guide, x)
    with pytest.raises(ObjectiveError, match="zero gradient"):
        check_compatible("renyi", _discrete_model, _discrete_guide, x, alpha=0.0)
    with pytest.raises(ObjectiveError, match="fully reparameterised"):
        check_compatible("meanfield", _discrete_model, _discrete_guide, x)
    for name, alpha in (("trace", None), ("renyi", 0.5), ("enum", None)):
        check_compatible(name, _discrete_model, _discrete_guide, x, alpha=alpha)
