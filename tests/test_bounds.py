"""The IS-k estimates obey Burda et al.'s Theorem 1 on a trained model:
E[L_1] <= E[L_5] <= E[L_50] <= E[IS-1000] <= log p(x)."""

import math

import pytest
import torch

from aevb import guides, inference, models
from tests.conftest import prototype_data


@pytest.fixture(scope="module")
def trained():
    x = prototype_data(512, d=16, seed=1)
    torch.manual_seed(0)
    model = models.build("vae", x_dim=16, z_dim=2, hidden=(32,))
    guide = guides.default_for(model)
    inference.fit(model, guide, x, "trace", epochs=15, batch_size=32, lr=3e-3, seed=0)
    return model, guide, x[:200]


def test_importance_sampled_bounds_increase_with_k(trained):
    model, guide, x = trained
    est = {k: inference.bounds(model, guide, x, k, seed=k).log_likelihood for k in (1, 5, 50, 1000)}
    # E[L_1] is the ELBO: averaging 400 draws per datapoint estimates it with little noise.
    elbo = inference.bounds(model, guide, x, 400, seed=11).elbo
    assert abs(elbo.mean() - est[1].mean()) < 4 * est[1].std() / math.sqrt(len(x))
    est[1] = elbo
    for lo, hi in [(1, 5), (5, 50), (50, 1000)]:
        d = est[hi] - est[lo]  # per-datapoint differences, independent draws
        se = d.std() / math.sqrt(len(d))
        assert d.mean() > -3 * se, (lo, hi, d.mean().item(), se.item())
    # The gap ELBO -> IS-1000 is real, not noise (the guide is not the exact posterior).
    d = est[1000] - est[1]
    assert d.mean() > 5 * d.std() / math.sqrt(len(d))


def test_is_estimate_is_reproducible_and_chunk_invariant(trained, monkeypatch):
    model, guide, x = trained
    a = inference.bounds(model, guide, x, 300, seed=3)
    assert torch.equal(
        a.log_likelihood, inference.bounds(model, guide, x, 300, seed=3).log_likelihood
    )
    from aevb.inference import evaluate

    monkeypatch.setattr(evaluate, "MAX_ELEMENTS", 16 * 64 * 7)  # force several chunks
    b = inference.bounds(model, guide, x, 300, seed=3, batch_size=64)
    # different chunking draws different samples: equal only within MC error
    d = a.log_likelihood - b.log_likelihood
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(len(d)) + 1e-6


def test_active_units(trained):
    model, guide, x = trained
    means = inference.posterior_means(guide, x)
    assert means.shape == (200, 2)
    n = inference.active_units(guide, x)
    assert n == int((means.var(0) > 0.01).sum())
    assert 1 <= n <= 2


@pytest.mark.parametrize("max_elements, batch_size", [(None, 64), (16 * 30 * 7, 30)])
def test_is_k_is_logsumexp_of_the_log_weights_minus_log_k(
    trained, monkeypatch, max_elements, batch_size
):
    """Draw for draw under one seed: the datapoints in order, per batch the particles in
    chunks of at most MAX_ELEMENTS / (B * D), IS-k = logsumexp(w) - log k, ELBO = mean(w)."""
    import pyro

    from aevb.inference import evaluate

    model, guide, x = trained
    x = x[:64]
    k = 40
    if max_elements is not None:  # several batches and several particle chunks
        monkeypatch.setattr(evaluate, "MAX_ELEMENTS", max_elements)
    got = inference.bounds(model, guide, x, k, seed=3, batch_size=batch_size)
    chunk = min(k, evaluate.MAX_ELEMENTS // (batch_size * x.shape[1]))
    torch.manual_seed(3)
    parts = []
    with pyro.validation_enabled(False):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            sizes = [min(chunk, k - done) for done in range(0, k, chunk)]
            parts.append(
                torch.cat([inference.log_weights(model, guide, (batch,), s) for s in sizes])
            )
    w = torch.cat(parts, 1)  # [k, N]
    assert w.shape == (k, len(x))
    # float32 sums of k terms of size ~50: a few ulps of 50, ~1e-5
    torch.testing.assert_close(
        got.log_likelihood, torch.logsumexp(w, 0) - math.log(k), rtol=0, atol=5e-5
    )
    torch.testing.assert_close(got.elbo, w.mean(0), rtol=0, atol=5e-5)
