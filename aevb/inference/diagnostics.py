"""How well a sampler mixes: effective samples per second and split-R-hat, per datapoint,
for the E-step samplers of :mod:`aevb.inference.samplers` (a benchmark and a diagnostic, kept
out of the samplers themselves).
"""

from __future__ import annotations

import time

import pyro
import torch
from pyro.ops.stats import effective_sample_size, split_gelman_rubin

from aevb.errors import ConfigError
from aevb.inference.samplers import Latents, make_sampler


def measure_ess(
    model,
    x: torch.Tensor,
    sampler: str,
    warmup: int = 100,
    draws: int = 300,
    seed: int = 0,
    options: dict | None = None,
    chains: int = 1,
) -> dict:
    """Effective samples per second of z | x for one sampler on the minibatch ``x``.

    Each datapoint gets ``chains`` independent chains, started from separate prior draws
    (dispersed relative to the posterior, as split-R-hat needs). For ``batched-hmc`` they are
    rows of one vectorised state [chains x B, D], each with its own step size and mass
    matrix; Pyro's kernels see the replicated minibatch as one joint chain. Chains run
    ``warmup`` adapting transitions (untimed), then ``draws`` timed ones at the adapted step
    size. The figure of merit is the median over datapoints of the worst latent dimension's
    ESS, pooled over the datapoint's chains (``pyro.ops.stats.effective_sample_size``, the
    multi-chain estimate of Gelman et al. 2013, sec. 11.5), divided by the timed seconds: per
    datapoint, because an E-step needs every datapoint's chain to move. ``options`` go to the
    sampler's constructor (e.g. ``{"adapt_mass": False}``).

    The result also carries split-R-hat (``pyro.ops.stats.split_gelman_rubin``) over the
    chains of each datapoint and latent dimension: its median, its maximum and the fraction
    below 1.01 (Vehtari et al. 2021's threshold).

    References:
        Gelman, Carlin, Stern, Dunson, Vehtari & Rubin (2013), Bayesian Data Analysis, 3rd ed.
        Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), Rank-normalization, folding,
        and localization: an improved R-hat for assessing convergence of MCMC.
    """
    if chains < 1:
        raise ConfigError(f"chains: must be >= 1, got {chains}")
    pyro.set_rng_seed(seed)
    batch = x.shape[0]
    state, seconds = _timed_chains(model, x, sampler, warmup, draws, options or {}, chains)
    # [S, C * B, D] -> [C, S, B, D]: chains of one datapoint side by side
    per_chain = state.samples.reshape(draws, chains, batch, -1).transpose(0, 1)
    ess = effective_sample_size(per_chain, chain_dim=0, sample_dim=1)  # [B, D], pooled
    per_point = ess.min(-1).values  # [B]: the slowest-mixing latent dimension
    rhat = split_gelman_rubin(per_chain, chain_dim=0, sample_dim=1)
    return {
        "sampler": sampler,
        "draws": draws,
        "batch": batch,
        "chains": chains,
        "seconds": seconds,
        "ess_per_datapoint_median": float(per_point.median()),
        "ess_per_second_per_datapoint": float(per_point.median()) / seconds,
        "accept_prob": float(state.accept_prob.mean()),
        "step_size": float(state.step_size.mean()),
        "rhat_median": float(rhat.median()),
        "rhat_max": float(rhat.max()),
        "rhat_fraction_below_1_01": float((rhat < 1.01).double().mean()),
    }


def _timed_chains(model, x, sampler: str, warmup: int, draws: int, options: dict, chains: int):
    """``chains`` chains per datapoint of ``x`` (chain-major rows c * B + i, from prior
    draws): ``warmup`` adapting transitions, then ``draws`` timed ones at the adapted step
    size; returns the final :class:`~aevb.inference.samplers.hmc.ChainState` and the seconds."""
    xs = x.repeat(chains, *([1] * (x.dim() - 1)))
    latents = Latents(model, (xs,))
    u = latents.prior_draw((xs,))
    kernel = make_sampler(sampler, **options)
    eps = kernel.initial_step_size(latents, (xs,), u, u.new_tensor(0.1))
    warm = kernel.sample(latents, (xs,), u, eps, 1, warmup_steps=warmup)
    t0 = time.perf_counter()
    state = kernel.sample(
        latents, (xs,), warm.u, warm.step_size, draws, adapt=False, inv_mass=warm.inv_mass
    )
    return state, time.perf_counter() - t0


__all__ = ["measure_ess"]
