"""How well chains mix, as the ecosystem writes it (:mod:`aevb.inference.diagnostics`):
rank-normalised split R-hat and bulk and tail ESS equal ArviZ's on a known layout, they tell
mixed chains from stuck ones, every MCEM epoch reports them, and posterior draws become an
ArviZ ``InferenceData`` that survives netCDF (:mod:`aevb.inference.posterior`)."""

import math

import numpy as np
import pyro
import pytest
import torch
from arviz_stats.base import array_stats

from aevb import data, inference, models
from aevb.inference import diagnostics
from aevb.inference.diagnostics import EpochChainDiagnostics, chain_diagnostics
from aevb.inference.samplers.hmc import ChainState


def _ar1(shape, rho, seed=0) -> np.ndarray:
    """Draws [chain, draw, *rest] of AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t
    (stationary N(0, 1), started at stationarity)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(shape)
    x = np.empty(shape)
    x[:, 0] = e[:, 0]
    for t in range(1, shape[1]):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * e[:, t]
    return x


@pytest.fixture(scope="module")
def draws() -> np.ndarray:
    """[chain 4, draw 300, datapoint 3, latent 2]; chain 1 sits one sd higher (a
    disagreement that R-hat sees), and the chains are autocorrelated (ESS < 1200)."""
    x = _ar1((4, 300, 3, 2), rho=0.6)
    x[1] += 1.0
    return x


def test_rhat_and_ess_are_arvizs_on_the_chain_draw_layout(draws):
    """Every number is arviz_stats' own on the [chain, draw, ...] layout, the axes may be
    named anywhere, and reading the draw axis as the chain axis gives other numbers."""
    ours = chain_diagnostics(draws, chain_axis=0, draw_axis=1)
    x = np.moveaxis(draws, (0, 1), (-2, -1))  # arviz_stats' own defaults: chain -2, draw -1
    expected = {
        "rhat": array_stats.rhat(x, method="rank"),
        "ess_bulk": array_stats.ess(x, method="bulk"),
        "ess_tail": array_stats.ess(x, method="tail", prob=(0.05, 0.95)),
    }
    for key, value in expected.items():
        assert ours[key].shape == (3, 2)
        np.testing.assert_allclose(ours[key], value, rtol=1e-12, err_msg=key)
    moved = chain_diagnostics(np.moveaxis(draws, (0, 1), (2, 0)), chain_axis=2, draw_axis=0)
    for key in expected:
        np.testing.assert_allclose(moved[key], ours[key], rtol=1e-12)
    swapped = chain_diagnostics(draws.swapaxes(0, 1))  # 300 "chains" of 4 "draws"
    assert not np.allclose(swapped["rhat"], ours["rhat"], rtol=0.01)
    assert not np.allclose(swapped["ess_bulk"], ours["ess_bulk"], rtol=0.1)
    assert (ours["rhat"] > 1.01).all()  # the shifted chain
    assert (ours["ess_bulk"] < 0.5 * 1200).all()  # rho = 0.6: ESS ~ N (1 - rho) / (1 + rho)


def test_the_single_chain_rhat_is_the_split_of_its_halves():
    """One chain has ArviZ's split R-hat of its two halves: the same computation
    (:func:`~aevb.inference.diagnostics.rank_rhat_of_split`) is ArviZ's rank R-hat on the
    halves of several chains; a chain whose second half drifts fails, and fewer than 8
    draws have no R-hat."""
    x = _ar1((3, 101, 4), rho=0.3, seed=1)
    split = diagnostics.split_halves(x)
    assert split.shape == (6, 50, 4)
    np.testing.assert_allclose(
        diagnostics.rank_rhat_of_split(split), array_stats.rhat(x, 0, 1, method="rank")
    )
    one = _ar1((1, 2000, 3), rho=0.3, seed=2)
    assert (chain_diagnostics(one)["rhat"] < 1.01).all()
    drifting = one.copy()
    drifting[:, 1000:] += 1.0
    assert (chain_diagnostics(drifting)["rhat"] > 1.1).all()
    assert np.isnan(chain_diagnostics(one[:, :7])["rhat"]).all()
    assert np.isfinite(chain_diagnostics(one[:, :8])["rhat"]).all()
    assert np.isfinite(chain_diagnostics(one[:, :4])["ess_bulk"]).all()  # ESS: 4 draws


def test_well_mixed_chains_pass_and_a_shifted_chain_fails():
    rng = np.random.default_rng(3)
    iid = rng.standard_normal((4, 1000, 5))
    mixed = chain_diagnostics(iid)
    assert (mixed["rhat"] < 1.01).all()
    # iid draws are worth about as many independent ones: 4000 (sd of the estimate ~ 5%)
    assert ((mixed["ess_bulk"] > 3000) & (mixed["ess_bulk"] < 5000)).all()
    assert ((mixed["ess_tail"] > 2500) & (mixed["ess_tail"] < 5500)).all()
    shifted = iid.copy()
    shifted[2] += 2.0  # one chain two posterior sds away from the others
    assert (chain_diagnostics(shifted)["rhat"] > 1.1).all()
    scaled = iid.copy()
    scaled[2] *= 3.0  # same centre, three times as wide: only the folded R-hat sees it
    assert (chain_diagnostics(scaled)["rhat"] > 1.1).all()


def test_the_summary_counts_a_chain_that_never_moved_as_unmixed():
    x = np.random.default_rng(4).standard_normal((1, 40, 4, 2))
    x[0, :, 1, 0] = 0.5  # datapoint 1's first latent never moved
    found = diagnostics.summarise(chain_diagnostics(x))
    assert found["rhat_max"] == math.inf and found["rhat_share_over_1_01"] >= 1 / 8
    few = diagnostics.summarise(chain_diagnostics(x[:, :6]), rhat_defined=False)
    assert math.isnan(few["rhat_max"]) and math.isnan(few["rhat_share_over_1_01"])
    assert math.isfinite(few["ess_bulk"])  # 6 draws have an ESS


def test_epoch_diagnostics_take_the_first_datapoints_and_survive_a_checkpoint():
    """The accumulator keeps the datapoints with index below ``points`` only, and its state
    (a checkpoint written mid-epoch) gives the same summary after a round trip."""
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(8, 6, 2, generator=g)  # [S, B, D]
    acc = EpochChainDiagnostics(draws=8, points=3)
    acc.add(samples, torch.tensor([5, 0, 9, 2, 1, 7]))
    acc.add(samples[:, :2], torch.tensor([3, 4]))  # none of the first three
    kept = acc.draws_kept()
    assert kept is not None and torch.equal(kept, samples[:, [1, 3, 4]])  # datapoints 0, 2, 1
    direct = diagnostics.summarise(chain_diagnostics(samples[:, [1, 3, 4]].unsqueeze(0)))
    assert acc.summary() == {key: direct[key] for key in EpochChainDiagnostics.COLUMNS}
    again = EpochChainDiagnostics(draws=8, points=3)
    again.load_state_dict(acc.state_dict())
    assert again.summary() == acc.summary()
    acc.reset()
    assert all(math.isnan(v) for v in acc.summary().values())
    short = EpochChainDiagnostics(draws=1)
    short.add(samples[:1], torch.arange(6))
    assert short.draws_kept() is None


def test_every_mcem_epoch_reports_rhat_and_ess_and_resumes_them_exactly(tmp_path):
    """8 draws per E-step: each epoch's row has finite R-hat and ESS of the E-step chains
    (an ESS of 8 draws is at most 8 log10 8, ArviZ's cap); 1 epoch, then a resume to 2,
    gives the rows of 2 epochs in one go. One draw per E-step (the default) has none."""
    train, _ = data.load("fa-synthetic")
    settings = dict(batch_size=32, proposal_epochs=0, num_samples=8, seed=0)

    def fit(out, epochs, resume=False, **extra):
        pyro.set_rng_seed(0)
        fa = models.build("fa")
        options = {**settings, **extra, "epochs": epochs, "resume": resume}
        run = inference.mcem_fit(fa, None, train.subset(32), out=out, **options)
        return run.history

    straight = fit(tmp_path / "a", 2)
    columns = list(EpochChainDiagnostics.COLUMNS)
    assert np.isfinite(straight[columns].to_numpy()).all()
    assert (straight["rhat_max"] >= 1).all()
    assert straight["rhat_share_over_1_01"].between(0, 1).all()
    for key in ("ess_bulk", "ess_tail"):
        assert straight[key].between(0.5, 8 * math.log10(8) + 1e-9).all()
    fit(tmp_path / "b", 1)
    resumed = fit(tmp_path / "b", 2, resume=True)
    np.testing.assert_array_equal(resumed[columns].to_numpy(), straight[columns].to_numpy())
    one = fit(None, 1, num_samples=1)
    assert one[columns].isna().all().all()


def _coded_state(chains=3, draws=5, points=4, dim=2) -> ChainState:
    """Draws whose value says where they belong: 1000 c + 10 s + i + 0.1 d for chain c,
    draw s, datapoint i, latent d, in the sampler's rows c * N + i."""
    c, s, i, d = np.meshgrid(
        np.arange(chains), np.arange(draws), np.arange(points), np.arange(dim), indexing="ij"
    )
    coded = torch.from_numpy(1000.0 * c + 10 * s + i + 0.1 * d)  # [C, S, N, D]
    samples = coded.transpose(0, 1).reshape(draws, chains * points, dim)
    probs = samples[..., 0] / 1e4  # [S, C * N]: the code of latent 0, scaled
    step = torch.arange(chains * points, dtype=torch.float64) + 1
    return ChainState(samples, samples[-1], step, probs.mean(0), {"accept_probs": probs})


def test_inference_data_has_arvizs_dims_and_round_trips_through_netcdf(tmp_path):
    az = pytest.importorskip("arviz")
    from aevb.inference.posterior import from_chain_state

    idata = from_chain_state(_coded_state(), chains=3)
    u = idata.posterior["u"]
    assert u.dims == ("chain", "draw", "datapoint", "latent_dim") and u.shape == (3, 5, 4, 2)
    assert float(u.sel(chain=2, draw=3, datapoint=1, latent_dim=1)) == pytest.approx(2031.1)
    rate = idata.sample_stats["acceptance_rate"]
    assert rate.dims == ("chain", "draw", "datapoint")
    assert float(rate.sel(chain=1, draw=4, datapoint=3)) == pytest.approx(0.1043)
    step = idata.sample_stats["step_size"]
    assert float(step.sel(chain=1, draw=0, datapoint=2)) == 1 * 4 + 2 + 1  # row c * N + i
    path = tmp_path / "posterior.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert back.posterior["u"].dims == u.dims
    np.testing.assert_array_equal(back.posterior["u"].values, u.values)
    np.testing.assert_array_equal(back.sample_stats["step_size"].values, step.values)
    # ArviZ's own R-hat and ESS of the saved draws are ours
    noisy = _ar1((3, 40, 4, 2), rho=0.5, seed=5)
    idata = az.from_dict(posterior={"u": noisy}, dims={"u": ["datapoint", "latent_dim"]})
    ours = chain_diagnostics(noisy)
    np.testing.assert_allclose(az.rhat(idata)["u"].values, ours["rhat"], rtol=1e-12)
    np.testing.assert_allclose(az.ess(idata, method="tail")["u"].values, ours["ess_tail"])


def test_pyros_kernels_are_converted_by_az_from_pyro(tmp_path):
    az = pytest.importorskip("arviz")
    from aevb.inference.posterior import PosteriorConfig, sample_posterior

    _, test = data.load("fa-synthetic")
    cfg = PosteriorConfig(points=3, chains=2, draws=6, warmup=5, sampler="nuts")
    idata = sample_posterior(data.fa_truth(), (test.x[:3],), cfg)
    assert idata.posterior["u"].shape == (2, 6, 3, 2)
    stats = idata.sample_stats
    assert stats["diverging"].dims == ("chain", "draw") and stats["diverging"].dtype == bool
    assert stats["step_size"].shape == (2, 6) and stats["mean_accept_prob"].dims == ("chain",)
    assert (stats["mean_accept_prob"] > 0).all()
    idata.to_netcdf(str(tmp_path / "p.nc"))
    assert az.from_netcdf(str(tmp_path / "p.nc")).posterior["u"].shape == (2, 6, 3, 2)
