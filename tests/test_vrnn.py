"""VRNN: reparameterised per-step latents, shapes under particles, masking, CLI smoke."""

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
