"""VRNN: reparameterised per-step latents, shapes under particles, masking, CLI smoke."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from aevb import guides, inference, models
from aevb.inference.objectives import make_objective


@pytest.fixture
def vrnn():
    model = models.build("vrnn", step_dim=6, seq_len=5, z_dim=2, rnn_dim=8, hidden=8)
    return model, guides.default_for(model)


def _x(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 5, 6), 0.3), generator=g)


def test_encoder_gets_the_reconstruction_gradient(vrnn):
    """With z_t = mu + sigma * eps (rsample) the reconstruction term E_q[log p(x|z)] has a
    gradient in the encoder's weights; a sample()-drawn z (the tutorial's bug) would not."""
    model, guide = vrnn
    x = _x()
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    recon = sum(
        site["fn"].log_prob(site["value"]).sum()
        for name, site in model_trace.nodes.items()
        if name.startswith("x_")
    )
    grads = torch.autograd.grad(recon, list(guide.net.parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("objective, k", [("trace", 1), ("meanfield", 1), ("iwae", 5)])
def test_every_objective_trains_the_encoder(vrnn, objective, k):
    model, guide = vrnn
    x = _x()
    elbo = make_objective(objective, k)
    pyro.clear_param_store()
    elbo.loss_and_grads(model, guide, x)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.net.parameters())


def test_shapes_under_vectorised_particles(vrnn):
    model, guide = vrnn
    w = inference.log_weights(model, guide, (_x(),), 5)
    assert w.shape == (5, 12) and torch.isfinite(w).all()


def test_masked_steps_do_not_count(vrnn):
    model, guide = vrnn
    x = _x(4)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 3:] = False  # sequence 0 has length 3
    y = x.clone()
    y[0, 3:] = 1 - y[0, 3:]  # change only its padding

    def lw(data):
        pyro.set_rng_seed(1)
        return inference.log_weights(lambda d: model(d, mask), lambda d: guide(d, mask), (data,), 3)

    a, b = lw(x), lw(y)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    # and the mask really removes terms: the unmasked sequence 0 scores differently
    pyro.set_rng_seed(1)
    full = inference.log_weights(model, guide, (x,), 3)
    assert not torch.allclose(full[:, 0], a[:, 0])
    torch.testing.assert_close(full[:, 1:], a[:, 1:])


def test_cli_smoke_on_a_subset(tmp_path):
    from aevb.cli import main
    from tests.test_cli import make_idx_folder

    folder = make_idx_folder(tmp_path)
    out = tmp_path / "vrnn"
    assert (
        main(
            [
                "train",
                "vrnn",
                "--data",
                str(folder),
                "--binarize",
                "threshold",
                "--epochs",
                "1",
                "--batch-size",
                "40",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "samples.png").exists() and (out / "history.csv").exists()


def test_ragged_sequences_load_and_train_through_the_cli(tmp_path, capsys):
    """A user's .npz of sequences [N, T, D] with a length mask goes the same path."""
    import json

    import numpy as np

    from aevb import data
    from aevb.cli import main

    g = np.random.default_rng(0)
    x = (g.random((40, 7, 3)) < 0.3).astype(np.float32)
    lengths = g.integers(3, 8, 40)
    mask = np.arange(7)[None, :] < lengths[:, None]
    x[~mask] = 0.0
    np.savez(tmp_path / "seqs.npz", x=x, mask=mask)
    train, test = data.load(str(tmp_path / "seqs.npz"))
    assert train.mask is not None and train.mask.shape == (36, 7)
    args = next(train.batches(5))
    assert len(args) == 2 and args[1].dtype == torch.bool
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "vrnn",
                "--data",
                str(tmp_path / "seqs.npz"),
                "--epochs",
                "1",
                "--batch-size",
                "12",
                "--z-dim",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "5", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_test"] == 4
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["config"]["seq_len"] == 7 and config["model"]["config"]["step_dim"] == 3
    np.savez(tmp_path / "bad.npz", x=x, mask=mask[:, :5])
    from aevb.errors import DataError

    with pytest.raises(DataError, match="mask must have shape"):
        data.load(str(tmp_path / "bad.npz"))


def test_bounds_against_the_evidence_by_numerical_integration():
    """With z_t of one dimension and two steps, p(x) = integral of p(x, z_1, z_2) over a grid
    (the model's own joint density, from ``Latents``; a finer, wider grid moves it by < 1e-4).
    After a short fit the guide is a fair proposal: IS-5000 lands on the integral (the
    spread over seeds is ~0.003) and the ELBO lies below it by its KL (0.01-0.04)."""
    from aevb.inference.samplers import Latents

    pyro.set_rng_seed(0)
    model = models.build("vrnn", step_dim=3, seq_len=2, z_dim=1, rnn_dim=4, hidden=6)
    guide = guides.default_for(model)
    g = torch.Generator().manual_seed(1)
    train = torch.bernoulli(torch.full((256, 2, 3), 0.4), generator=g)
    train[:128, :, :2] = train[:128, :1, :2]  # rows that repeat: something for z to carry
    inference.fit(model, guide, train, "iwae", particles=5, epochs=20, batch_size=32, lr=1e-2)
    x = train[[0, 1, 200]]
    grid = torch.linspace(-7.0, 7.0, 281)
    z = torch.cartesian_prod(grid, grid)  # [G^2, 2]: (z_0, z_1)
    h = float(grid[1] - grid[0])
    exact = []
    with torch.no_grad():
        for xi in x:
            rep = xi.expand(len(z), -1, -1)
            log_joint = Latents(model, (rep,)).log_joint(z, (rep,))
            exact.append(torch.logsumexp(log_joint.double(), 0) + 2 * math.log(h))
    exact = torch.stack(exact)
    b = inference.bounds(model, guide, x, 5000, seed=0)
    assert (b.log_likelihood.double() - exact).abs().max() < 0.012, (b.log_likelihood, exact)
    # the ELBO: below the evidence at each point, and in all by many standard errors
    w = inference.log_weights(model, guide, (x,), 40000).double()
    gap, se = exact - w.mean(0), w.std(0) / math.sqrt(40000)
    assert (gap > -3 * se).all(), (gap, se)
    assert gap.sum() > 5 * se.pow(2).sum().sqrt(), (gap, se)


def _loss_and_grads(model, guide, x, objective, k, share):
    """Loss and every parameter's gradient under seed 3, the guide's recurrence shared with
    the model (the default) or recomputed by the model (``share=False``)."""
    if not share:  # the model never finds the guide's recurrence
        model.__dict__["_take_shared"] = lambda x: None
    try:
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        loss = make_objective(objective, k).loss_and_grads(model, guide, x)
        params = list(model.parameters()) + list(guide.parameters())
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        return loss, grads
    finally:
        model.__dict__.pop("_take_shared", None)


@pytest.mark.parametrize("objective, k", [("trace", 1), ("iwae", 4)])
def test_the_model_reuses_the_guides_recurrence_exactly(vrnn, objective, k):
    """Taking the guide's h_t instead of recomputing it changes nothing: the same loss and
    the same gradients in float64 (the recurrence is the same function of the same z_t)."""
    model, guide = vrnn
    model.double(), guide.double()
    x = _x().double()
    shared = _loss_and_grads(model, guide, x, objective, k, share=True)
    recomputed = _loss_and_grads(model, guide, x, objective, k, share=False)
    assert shared[0] == pytest.approx(recomputed[0], rel=1e-12)
    for a, b in zip(shared[1], recomputed[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_other_latents_are_not_given_the_guides_recurrence(vrnn):
    """After the guide ran on x, the model replaying *other* draws of z computes its own
    recurrence: its log joint equals that of a model that never saw the guide."""
    model, guide = vrnn
    x = _x()
    other = poutine.trace(guide).get_trace(x)  # draws the model will replay
    poutine.trace(guide).get_trace(x)  # the guide runs again on the same x: new z_t

    def log_joint():
        replayed = poutine.trace(poutine.replay(model, trace=other)).get_trace(x)
        return replayed.log_prob_sum()

    got = log_joint()
    model.__dict__["_take_shared"] = lambda x: None
    try:
        expected = log_joint()
    finally:
        model.__dict__.pop("_take_shared")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_vrnn_is_compiled_and_its_compiled_objective_is_the_eager_one(vrnn):
    from aevb.inference.objectives import make_jit_objective, use_jit
    from aevb.inference.objectives.jit import compiled_matches_eager

    model, guide = vrnn
    assert use_jit("trace", model, guide, None)
    mask = torch.ones(12, 5, dtype=torch.bool)
    mask[:4, 3:] = False
    for args in ([(_x(),), (_x(seed=1),)], [(_x(), mask), (_x(seed=1), mask)]):
        compiled, eager = make_jit_objective("trace"), make_objective("trace")
        assert compiled_matches_eager(compiled, eager, model, guide, args) is None
