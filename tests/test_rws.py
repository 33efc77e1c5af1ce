"""Reweighted wake-sleep (aevb.inference.objectives.rws): wake-theta is IWAE's decoder gradient
on the same draws; wake-phi converges to the exact gradient of the inclusive KL on factor
analysis; FA trained by rws reaches the true model's evidence; a GMVAE's discrete y trains
under it."""

import math

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F

from aevb import inference, models
from aevb.guides import default_for
from aevb.models.gmvae import cluster_accuracy
from tests.conftest import gradient_draws


def test_wake_theta_is_the_iwae_decoder_gradient_on_the_same_draws(fa):
    truth, guide, x, V, L = fa
    truth.double(), guide.double()
    with torch.no_grad():
        guide.set_parameters(V + 0.3, L * 1.5)
    pyro.set_rng_seed(4)
    g_rws, loss_rws = gradient_draws(truth, guide, x, "rws", 3, k=5, prefix="fa")
    pyro.set_rng_seed(4)
    g_iwae, loss_iwae = gradient_draws(truth, guide, x, "iwae", 3, k=5, prefix="fa")
    assert loss_rws == pytest.approx(loss_iwae, rel=1e-12)  # the value is the IWAE bound
    torch.testing.assert_close(g_rws, g_iwae, rtol=1e-10, atol=1e-9)
    assert float(g_iwae.abs().max()) > 1.0


def _inclusive_kl_gradient(truth, guide, x):
    """The exact gradient, in the guide's (L_raw, V), of the loss -sum_n E_{p(z|x_n)}[log
    q(z|x_n)] (the inclusive KL up to a constant), for q(z|x) = N(V x, L L^T)."""
    V_p, L_p = (t.detach() for t in truth.exact_posterior_parameters())
    V = guide.V.detach().clone().requires_grad_()
    L_raw = guide.L_raw.detach().clone().requires_grad_()
    L = torch.tril(L_raw, -1) + torch.diag(F.softplus(L_raw.diagonal()))
    precision = torch.cholesky_inverse(L)
    gap = x @ (V_p - V).T
    quad = torch.einsum("nd,de,ne->n", gap, precision, gap)
    trace = torch.trace(precision @ L_p @ L_p.T)
    expected_log_q = (-0.5 * trace - 0.5 * quad - torch.log(L.diagonal()).sum()).sum()
    g_L, g_V = torch.autograd.grad(-expected_log_q, [L_raw, V])
    return torch.cat([g_L.flatten(), g_V.flatten()])  # the parameters' sorted-name order


def test_wake_phi_estimates_the_inclusive_kl_gradient(fa):
    """sum_i w~_i grad log q(z_i|x) is self-normalised importance sampling of
    E_p[grad log q]: biased by O(1/k), so with k = 1000 near the optimum its mean over 200
    draws matches the closed form within 5 standard errors per coordinate."""
    truth, guide, x, V, L = fa
    truth.double(), guide.double()
    with torch.no_grad():
        guide.set_parameters(V + 0.02, L * 1.05)
    exact = _inclusive_kl_gradient(truth, guide, x)
    repeats = 200
    pyro.set_rng_seed(5)
    g, _ = gradient_draws(truth, guide, x, "rws", repeats, k=1000)
    se = g.std(0) / math.sqrt(repeats)
    keep = se > 0  # L's upper triangle is fixed at zero
    assert bool(((g.mean(0) - exact)[keep].abs() <= 5 * se[keep]).all())
    assert float(exact.abs().max()) > 100 * float(se.max())  # a wrong weight is far outside


def test_fa_trained_by_rws_reaches_the_true_model_evidence(tmp_path):
    from aevb.cli import main
    from aevb.inference.saved import evaluate_run

    out = tmp_path / "fa"
    argv = ["train", "fa", "--data", "fa-synthetic", "--objective", "rws", "--epochs", "35"]
    assert main([*argv, "--seed", "0", "--out", str(out), "--quiet"]) == 0
    r = evaluate_run(out, 1000)
    assert abs(r["test_log_evidence_exact"] - r["true_model_log_evidence"]) <= 0.02
    assert 0 <= r["test_log_evidence_exact"] - r["test_elbo"] <= 0.02


def test_a_gmvae_trains_its_discrete_clusters_under_rws():
    """Four noisy binary prototypes: q(y|x) trained by wake-phi alone (no gradient passes
    through the discrete y) finds them well above chance (0.25) in most seeds."""
    g = np.random.default_rng(0)
    protos = g.random((4, 16)) < 0.5
    which = g.integers(0, 4, 512)
    x = torch.as_tensor((protos[which] ^ (g.random((512, 16)) < 0.1)).astype(np.float32))
    accuracies = []
    for seed in range(3):
        pyro.clear_param_store()
        model = models.build("gmvae", x_dim=16, z_dim=2, hidden=(16,), num_clusters=4)
        guide = default_for(model)
        inference.fit(model, guide, x, "rws", epochs=25, batch_size=32, seed=seed, lr=1e-2)
        with torch.no_grad():
            pred = guide.cluster_probs(x).argmax(-1).numpy()
        accuracies.append(cluster_accuracy(pred, which))
    assert sorted(accuracies)[1] > 0.6, accuracies
