import json
import math

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from aevb import guides, inference, models
from aevb.errors import ConfigError, TrainingDiverged


def ppca_model(x):
    """A user's plain Pyro model: x = W z + noise, z ~ N(0, I_2)."""
    w = pyro.param("W", torch.zeros(x.shape[-1], 2) + 0.1)
    noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T, noise).to_event(1), obs=x)


def ppca_guide(x):
    v = pyro.param("V", torch.zeros(2, x.shape[-1]))
    s = pyro.param("s", torch.ones(2), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ v.T, s).to_event(1))


def ppca_data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 2, generator=g) * 2
    return torch.randn(n, 2, generator=g) @ w.T + 0.3 * torch.randn(n, 5, generator=g)


@pytest.mark.parametrize("objective, k", [("trace", 1), ("meanfield", 1), ("iwae", 5)])
def test_user_written_model_and_guide_train(objective, k):
    x = ppca_data()
    run = inference.fit(
        ppca_model,
        ppca_guide,
        x[:300],
        objective,
        test=x[300:],
        particles=k,
        epochs=8,
        batch_size=50,
        lr=0.05,
        seed=0,
    )
    h = run.history
    assert list(h["epoch"]) == list(range(1, 9))
    assert h["test_elbo"].iloc[-1] > h["test_elbo"].iloc[0] + 1.0
    assert {"W", "V", "noise", "s"} <= set(pyro.get_param_store().keys())
    # the user's pair is evaluated per datapoint like ours, against PPCA's closed form
    # p(x) = N(0, W W^T + noise^2 I) at the trained parameters
    store = pyro.get_param_store()
    w, noise = store["W"].detach(), store["noise"].detach()
    cov = w @ w.T + noise**2 * torch.eye(5)
    exact = dist.MultivariateNormal(torch.zeros(5), covariance_matrix=cov).log_prob(x[300:])
    b = inference.bounds(ppca_model, ppca_guide, x[300:], num_samples=2000)
    assert b.log_likelihood.shape == (100,)
    gap = exact - b.log_likelihood  # >= 0 in expectation, ~0 for IS-2000 with a fair guide
    se = float(gap.std()) / 10
    assert -3 * se < float(gap.mean()) < 0.05, (float(gap.mean()), se)
    assert float((exact - b.elbo).mean()) > 0.05  # while the guide's ELBO is visibly below


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize(
    "objective, k, binarize, schedule",
    [
        ("trace", 1, "none", "constant"),
        ("iwae", 3, "dynamic", "constant"),
        ("trace", 1, "none", "burda"),
    ],
)
def test_resume_matches_an_uninterrupted_run(
    tmp_path, binary_data, objective, k, binarize, schedule
):
    from aevb.data import Dataset

    # dynamic binarisation draws afresh every pass: resume must reproduce those draws too
    data = Dataset.from_arrays(binary_data * 0.8 + 0.1, binarize=binarize)
    if binarize == "none":
        data = Dataset.from_arrays(binary_data)

    def run(out, epochs, resume=False):
        model = models.build("vae", x_dim=16, z_dim=2, hidden=(8,))
        return inference.fit(
            model,
            None,
            data,
            objective,
            test=binary_data[:64],
            particles=k,
            epochs=epochs,
            batch_size=32,
            seed=4,
            out=out,
            resume=resume,
            lr_schedule=schedule,
        )

    straight = run(tmp_path / "a", 3)
    p_straight = _params()
    # stop at the schedule's first change (epoch 1 -> 2) so the resumed optimiser states,
    # saved at the old lr, must take the new one
    run(tmp_path / "b", 1 if schedule == "burda" else 2)
    resumed = run(tmp_path / "b", 3, resume=True)
    p_resumed = _params()
    assert p_straight.keys() == p_resumed.keys()
    for name in p_straight:
        torch.testing.assert_close(p_resumed[name], p_straight[name], rtol=0, atol=1e-6)
    pd.testing.assert_series_equal(resumed.history["test_elbo"], straight.history["test_elbo"])
    on_disk = pd.read_csv(tmp_path / "b" / "history.csv")
    assert list(on_disk["epoch"]) == [1, 2, 3]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["fit"]["seed"] == 4 and "pyro" in config["versions"]
    if schedule == "burda":  # epoch 1 at lr, epochs 2-4 at lr * 10^(-1/7)
        assert list(on_disk["lr"]) == pytest.approx(
            [1e-3, 1e-3 * 10 ** (-1 / 7)] + [1e-3 * 10 ** (-1 / 7)]
        )


def test_burda_schedule_stages():
    from aevb.inference.svi import burda_lr

    # stage i lasts 3^i passes: epochs 1 | 2-4 | 5-13 | 14-40 | ... | 1094-3280
    stages = [round(-7 * math.log10(burda_lr(1.0, e))) for e in range(1, 3281)]
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert stages[0] == 0 and stages[1] == 1 and stages[4] == 2 and stages[-1] == 7


def test_existing_run_is_not_overwritten(tmp_path, binary_data):
    model = models.build("vae", x_dim=16, z_dim=2, hidden=(8,))
    inference.fit(model, None, binary_data, epochs=1, out=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        inference.fit(model, None, binary_data, epochs=1, out=tmp_path)
    with pytest.raises(ConfigError, match="different settings"):
        inference.fit(model, None, binary_data, epochs=2, lr=0.1, out=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, binary_data):
    calls = {"n": 0}
    vae = models.build("vae", x_dim=16, z_dim=2, hidden=(8,))

    def breaking_model(x):
        calls["n"] += torch.is_grad_enabled()  # training steps only (fit's probes: no_grad)
        vae(x)
        if calls["n"] > 9:  # 8 steps per epoch: epoch 1 is fine, epoch 2 breaks
            pyro.factor("boom", torch.tensor(-float("inf")))

    # it counts its own Python calls, which a compiled step does not make: it says so
    breaking_model.jit_compatible = False  # type: ignore[attr-defined]
    guide = guides.default_for(vae)
    with pytest.raises(TrainingDiverged, match="Last good checkpoint"):
        inference.fit(breaking_model, guide, binary_data, epochs=3, batch_size=32, out=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert [r["epoch"] for r in state["history"]] == [1]
    assert all(torch.isfinite(v).all() for v in state["params"]["params"].values())


def test_freeze_holds_parameters_fixed(binary_data):
    model = models.build("vae", x_dim=16, z_dim=2, hidden=(8,))
    guide = guides.default_for(model)
    inference.fit(model, guide, binary_data, epochs=1, freeze=("vae",))
    before = {k: v for k, v in _params().items()}
    inference.fit(model, guide, binary_data, epochs=2, freeze=("vae",), reset=False)
    after = _params()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("vae"))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("encoder"))


def test_unknown_setting_is_rejected(binary_data):
    model = models.build("vae", x_dim=16, z_dim=2, hidden=(8,))
    with pytest.raises(ConfigError, match="unknown fit setting"):
        inference.fit(model, None, binary_data, epoch=3)


@pytest.mark.parametrize("objective, k", [("iwae", 5), ("renyi", 5), ("trace", 1)])
def test_the_library_and_the_cli_default_to_the_objectives_particle_count(
    tmp_path, binary_data, objective, k
):
    from aevb.cli import main
    from aevb.inference.objectives import OBJECTIVES

    assert OBJECTIVES[objective].default_particles == k
    model = models.build("vae", x_dim=16, z_dim=2, hidden=(8,))
    alpha = {"alpha": 0.5} if objective == "renyi" else {}
    run = inference.fit(model, None, binary_data[:64], objective, epochs=1, batch_size=32, **alpha)
    assert run.config["fit"]["particles"] == k
    np.savez(tmp_path / "d.npz", x=binary_data.numpy())
    out = tmp_path / "run"
    argv = ["train", "vae", "--data", str(tmp_path / "d.npz"), "--objective", objective]
    argv += ["--z-dim", "2", "--hidden", "8", "--epochs", "1", "--out", str(out), "--quiet"]
    argv += ["--alpha", "0.5"] if alpha else []
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["fit"]["particles"] == k
