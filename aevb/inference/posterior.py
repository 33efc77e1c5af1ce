"""Posterior draws of a trained model's test points as ArviZ's ``InferenceData``, saved as
``posterior.nc`` in the run directory (``aevb evaluate RUN --posterior``).

For each of the first N test points x_i, ``chains`` Markov chains sample p_theta(z_i | x_i)
with the run's model held fixed, each from its own prior draw (dispersed, as R-hat needs),
``warmup`` adapting transitions, then ``draws`` kept ones. The draws become an
``arviz.InferenceData`` laid out as ArviZ expects:

- ``posterior``: ``u`` with dims (chain, draw, datapoint, latent_dim): the sampler's
  unconstrained latents (z itself for real-valued latents, as in FA and the VAEs; log z for
  positive ones), one row per test point;
- ``sample_stats``: what the sampler records. batched-hmc (:func:`from_chain_state`):
  ``acceptance_rate`` (each transition's Metropolis probability) and ``step_size``, both
  (chain, draw, datapoint), since every test point has its own chain and step size; it does
  not detect divergences. Pyro's ``hmc`` and ``nuts`` (:func:`from_pyro_runs`): ArviZ's own
  ``az.from_pyro`` conversion of each ``pyro.infer.MCMC`` run (``diverging``), plus the
  adapted ``step_size`` (chain, draw) and the mean acceptance probability of each chain
  (``mean_accept_prob``, (chain,): Pyro keeps no per-draw value). Pyro's kernels move all N
  test points as one joint chain with one step size and one accept/reject (PYRO_NOTES).

``arviz`` (the legacy package with ``InferenceData`` and netCDF through h5netcdf) is an
optional dependency, ``pip install 'aevb[arviz]'``; the rest of aevb runs without it. R-hat
and ESS of the saved draws are :func:`aevb.inference.diagnostics.chain_diagnostics`' (ArviZ's
definitions, Vehtari et al. 2021); ``az.rhat(az.from_netcdf("posterior.nc"))`` gives the same.

References:
    A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Buerkner (2021),
    Rank-normalization, folding, and localization: an improved R-hat for assessing
    convergence of MCMC, Bayesian Analysis 16(2).
    R. Kumar, C. Carroll, A. Hartikainen, O. Martin (2019), ArviZ a unified library for
    exploratory analysis of Bayesian models in Python, JOSS 4(33).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from aevb.data.dataset import as_dataset
from aevb.devices import resolve_device
from aevb.errors import ConfigError
from aevb.inference import rundir
from aevb.inference.diagnostics import chain_diagnostics, has_rhat, sample_chains, summarise
from aevb.inference.samplers import SAMPLERS, Latents, PyroKernelSampler, make_sampler
from aevb.inference.samplers.hmc import ChainState
from aevb.inference.saved import load_run, recorded_test
from aevb.models.base import hooks
from aevb.settings import check_fields, setting

#: the posterior's dims after (chain, draw)
DIMS = ["datapoint", "latent_dim"]


@dataclass(frozen=True)
class PosteriorConfig:
    """What ``aevb evaluate RUN --posterior`` samples (``--posterior-points`` ...)."""

    points: int = setting(10, minimum=1, help="the first N test points whose posterior is sampled")
    chains: int = setting(
        4,
        minimum=1,
        help="chains per test point, each from its own prior draw: R-hat compares them "
        "(Vehtari et al. 2021 advise at least 4)",
    )
    draws: int = setting(
        500, minimum=4, help="kept draws per chain (ArviZ's R-hat and ESS need at least 4)"
    )
    warmup: int = setting(
        500,
        minimum=0,
        help="adapting transitions before the kept draws: the step size, and from 50 on a "
        "diagonal mass matrix",
    )
    sampler: str = setting(
        "batched-hmc",
        names=lambda: SAMPLERS,
        help="the sampler: batched-hmc (one chain and step size per test point) or Pyro's "
        "kernels (the test points as one joint chain, converted by az.from_pyro)",
    )

    def __post_init__(self):
        check_fields(self)


def import_arviz():
    """The ``arviz`` module, or a :class:`~aevb.errors.ConfigError` saying how to install it."""
    try:
        with warnings.catch_warnings():  # arviz 0.2x announces its refactor on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as exc:
        raise ConfigError(
            "saving posterior draws as InferenceData needs ArviZ (with xarray and h5netcdf), "
            "an optional dependency: pip install 'aevb[arviz]'"
        ) from exc
    return arviz


def _coords(num_points: int, dim: int) -> dict[str, np.ndarray]:
    return {"datapoint": np.arange(num_points), "latent_dim": np.arange(dim)}


def from_chain_state(state: ChainState, chains: int) -> Any:
    """The ``arviz.InferenceData`` of draws made by
    :func:`~aevb.inference.diagnostics.sample_chains`.

    ``state.samples`` [draws, chains * N, D], chain-major rows c * N + i (chain c of test
    point i), becomes ``posterior.u`` (chain, draw, datapoint, latent_dim); ``sample_stats``
    holds ``step_size`` and, where the sampler records each transition's Metropolis
    probability (``diagnostics["accept_probs"]``), ``acceptance_rate``, both (chain, draw,
    datapoint)."""
    az = import_arviz()
    draws, rows, dim = state.samples.shape
    if rows % chains:
        raise ConfigError(f"{rows} chain rows do not split into {chains} chains per datapoint")
    n = rows // chains

    def per_chain(values: torch.Tensor) -> np.ndarray:  # [draws, chains * N, ...] -> [C, S, N]
        grouped = values.detach().cpu().reshape(draws, chains, n, *values.shape[2:])
        return grouped.transpose(0, 1).numpy()

    stats: dict[str, np.ndarray] = {}
    probs = state.diagnostics.get("accept_probs")
    if probs is not None:
        stats["acceptance_rate"] = per_chain(probs)
    step = state.step_size.detach().reshape(-1).expand(rows)  # constant over the kept draws
    stats["step_size"] = per_chain(step.expand(draws, rows))
    return az.from_dict(
        posterior={"u": per_chain(state.samples)},
        sample_stats=stats,
        coords=_coords(n, dim),
        dims={"u": DIMS, "acceptance_rate": DIMS[:1], "step_size": DIMS[:1]},
    )


def from_pyro_runs(runs: list) -> Any:
    """One ``arviz.InferenceData`` of finished ``pyro.infer.MCMC`` runs of
    :meth:`~aevb.inference.samplers.PyroKernelSampler.run_mcmc`, one chain each: ArviZ's
    ``az.from_pyro`` of each (``posterior.u``, ``sample_stats.diverging``), with the kernel's
    adapted ``step_size`` (chain, draw) and ``mean_accept_prob`` (chain,) added, joined
    along ``chain``."""
    az = import_arviz()
    parts = []
    for mcmc in runs:
        n, dim = mcmc.get_samples()["u"].shape[1:]
        part = az.from_pyro(mcmc, coords=_coords(n, dim), dims={"u": DIMS})
        kernel, draws = mcmc.kernel, mcmc.num_samples
        stats = part.sample_stats
        stats["step_size"] = (("chain", "draw"), np.full((1, draws), float(kernel.step_size)))
        stats["mean_accept_prob"] = (("chain",), np.array([kernel.last_mean_accept_prob]))
        parts.append(part)
    joined = parts[0] if len(parts) == 1 else az.concat(*parts, dim="chain")
    for group in joined.groups():  # concat lists the parts' times: not a netCDF attribute
        joined[group].attrs.pop("previous_created_at", None)
    return joined


def sample_posterior(model, args: tuple, cfg: PosteriorConfig) -> Any:
    """``cfg.chains`` chains of ``cfg.sampler`` on p(z_i | x_i) for every datapoint of the
    minibatch ``args`` (the model's arguments: ``(x,)``, ``(x, y)``, ...) with the model
    fixed, as an ``arviz.InferenceData`` (see the module docstring). Pyro's kernels run one
    ``pyro.infer.MCMC`` per chain (the datapoints one joint chain), converted by
    ``az.from_pyro``; other samplers run every chain of every datapoint at once."""
    import_arviz()  # fail before sampling, not after
    sampler = make_sampler(cfg.sampler)
    if isinstance(sampler, PyroKernelSampler):
        latents = Latents(model, args)
        runs = []
        for _ in range(cfg.chains):
            u0 = latents.prior_draw(args)
            step = sampler.initial_step_size(latents, args, u0, u0.new_tensor(0.1))
            runs.append(sampler.run_mcmc(latents, args, u0, step, cfg.draws, cfg.warmup))
        return from_pyro_runs(runs)
    state, _ = sample_chains(model, args, cfg.sampler, cfg.warmup, cfg.draws, chains=cfg.chains)
    return from_chain_state(state, cfg.chains)


def posterior_summary(idata) -> dict:
    """R-hat and ESS of ``posterior.u`` (:func:`~aevb.inference.diagnostics.chain_diagnostics`
    per test point and latent dimension, summarised by
    :func:`~aevb.inference.diagnostics.summarise`)."""
    u = idata.posterior["u"].transpose("chain", "draw", *DIMS).values
    chains, draws = u.shape[:2]
    found = summarise(chain_diagnostics(u), rhat_defined=has_rhat(chains, draws))
    return {"chains": chains, "draws": draws, "points": u.shape[2], **found}


def save_posterior(
    run_dir: str | Path,
    cfg: PosteriorConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    test=None,
) -> dict:
    """Sample the posterior of the first ``cfg.points`` test points of the run in ``run_dir``
    (its recorded test set, or ``test``; binarised once with ``seed``, as the estimates'
    test sets are) on ``device`` with seed ``seed``, and save it as ``posterior.nc`` there
    (netCDF, written atomically). Returns where it is, what was sampled and the saved
    draws' R-hat and ESS (:func:`posterior_summary`)."""
    cfg = cfg or PosteriorConfig()
    az = import_arviz()
    run = load_run(run_dir, device)
    points = as_dataset(recorded_test(run.config, run_dir) if test is None else test)
    points = points.subset(cfg.points).fixed(seed)
    labels = hooks(run.model).uses_labels
    args = next(points.batches(len(points), labels=labels, device=resolve_device(device)))
    start = time.perf_counter()
    pyro.set_rng_seed(seed)
    idata = sample_posterior(run.model, args, cfg)
    seconds = time.perf_counter() - start
    idata.posterior.attrs.update(sampler=cfg.sampler, warmup=cfg.warmup, seed=seed)
    path = rundir.write_posterior(run_dir, lambda tmp: idata.to_netcdf(str(tmp)))
    summary = posterior_summary(az.from_netcdf(str(path)))
    return {"path": str(path), "sampler": cfg.sampler, **summary, "seconds": seconds}


__all__ = [
    "DIMS",
    "PosteriorConfig",
    "from_chain_state",
    "from_pyro_runs",
    "import_arviz",
    "posterior_summary",
    "sample_posterior",
    "save_posterior",
]
