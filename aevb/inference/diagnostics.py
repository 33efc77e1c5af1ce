"""How well Markov chains mix: rank-normalised split R-hat and bulk and tail effective
sample sizes as ArviZ computes them (:func:`chain_diagnostics`), their per-epoch summary for
an MCEM E-step (:class:`EpochChainDiagnostics`), and a sampler benchmark in effective samples
per second per datapoint (:func:`measure_ess`).

For draws theta_cs of a scalar, c = 1..M chains of N draws each (Vehtari et al. 2021):

- **split R-hat**: every chain is cut into halves (2M chains of n = N/2 draws; ArviZ drops
  the middle draw of an odd N), so that a chain that drifts differs from itself. With the
  between-chain variance B = n/(2M - 1) sum_c (mean_c - mean)^2 and the mean within-chain
  variance W, R-hat = sqrt(((n - 1)/n W + B/n) / W): 1 when the halves agree, above 1 when
  they sample different regions.
- **rank-normalised**: R-hat is computed on z = Phi^-1((r - 3/8) / (S + 1/4)), r the rank of a
  draw among all S = 2Mn (Blom's offsets), so it exists for heavy tails; and again on the
  draws folded about their median, ``|theta - median|``, which catches chains that agree on
  location but not on scale. The reported R-hat is the larger of the two; Vehtari et al.
  advise trusting the chains only below **1.01**.
- **bulk ESS**: the effective sample size (Geyer's initial monotone sequence over the
  chains' autocorrelations) of the rank-normalised split draws: how many independent draws
  the chains are worth for the centre of the distribution (means, medians).
- **tail ESS**: the smaller ESS of the indicators I(theta <= q_5%) and I(theta <= q_95%):
  how many independent draws they are worth for the 5% and 95% quantiles (intervals).

R-hat, bulk ESS and tail ESS are ``arviz_stats``' own (``array_stats.rhat(method="rank")``,
``array_stats.ess(method="bulk" | "tail")``), so aevb's numbers are ArviZ's, Stan's and
PyMC's. ArviZ needs at least 4 draws per chain and, for R-hat, two chains; a single chain
(an MCEM E-step keeps one per datapoint) has its split-R-hat computed here from its two halves
as Vehtari et al. define it, with ArviZ's plain R-hat (``method="identity"``) on the
rank-normalised and folded halves, so it needs at least 8 draws.

References:
    A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Buerkner (2021),
    Rank-normalization, folding, and localization: an improved R-hat for assessing
    convergence of MCMC, Bayesian Analysis 16(2).
    A. Gelman, J. B. Carlin, H. S. Stern, D. B. Dunson, A. Vehtari, D. B. Rubin (2013),
    Bayesian Data Analysis, 3rd ed., sec. 11.4-11.5.
    C. J. Geyer (1992), Practical Markov chain Monte Carlo, Statistical Science 7(4).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pyro
import torch
from scipy import stats

from aevb.errors import ConfigError
from aevb.inference.samplers import Latents, make_sampler

#: ArviZ's fewest draws per chain for R-hat and ESS (fewer: NaN)
MIN_DRAWS = 4
#: Vehtari et al.'s threshold: trust chains whose R-hat is below it
RHAT_GOOD = 1.01
#: the quantiles whose ESS is the tail ESS (ArviZ's and Stan's default)
TAIL_PROB = (0.05, 0.95)
#: Blom's offset of the rank normalisation (ArviZ's default)
_BLOM = 3 / 8


def chain_diagnostics(samples, chain_axis: int = 0, draw_axis: int = 1) -> dict[str, np.ndarray]:
    """Rank-normalised split R-hat, bulk ESS and tail ESS of every coordinate of ``samples``.

    :param samples: draws (a tensor or an array) with a chain axis and a draw axis, e.g.
        [chain, draw, datapoint, latent_dim] with the defaults.
    :returns: ``{"rhat", "ess_bulk", "ess_tail"}``, each an array of the remaining axes
        (float64, computed in the draws' own precision, as ArviZ does); NaN where there are
        too few draws: fewer than :data:`MIN_DRAWS` per chain, or, for R-hat of a single
        chain, fewer than 2 * :data:`MIN_DRAWS`.

    See the module docstring for the definitions (Vehtari et al. 2021). With two or more
    chains every number is ``arviz_stats.base.array_stats``' own; with one, R-hat compares
    the chain's two halves.

    Example:
        >>> import numpy as np
        >>> from aevb.inference.diagnostics import chain_diagnostics
        >>> draws = np.random.default_rng(0).standard_normal((4, 500, 3))  # [chain, draw, 3]
        >>> out = chain_diagnostics(draws)
        >>> out["rhat"].shape, bool((out["rhat"] < 1.01).all())
        ((3,), True)
        >>> bool((out["ess_bulk"] > 1000).all())      # iid draws: about 4 x 500
        True
    """
    from arviz_stats.base import array_stats

    x = _as_array(samples)
    x = np.moveaxis(x, (chain_axis, draw_axis), (0, 1))
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # chains that never moved: 0 / 0
        if x.shape[0] == 1:
            rhat = _single_chain_rhat(x)
        else:
            rhat = array_stats.rhat(x, chain_axis=0, draw_axis=1, method="rank")
        bulk = array_stats.ess(x, chain_axis=0, draw_axis=1, method="bulk")
        tail = array_stats.ess(x, chain_axis=0, draw_axis=1, method="tail", prob=TAIL_PROB)
    return {
        "rhat": np.asarray(rhat, dtype=float),
        "ess_bulk": np.asarray(bulk, dtype=float),
        "ess_tail": np.asarray(tail, dtype=float),
    }


def _as_array(samples) -> np.ndarray:
    """The draws as an array in their own precision (float32 or float64; anything else as
    float64): ArviZ folds and ranks float32 draws in float32, so a saved file of float32
    draws gets the same numbers from ``az.rhat`` as from here."""
    if isinstance(samples, torch.Tensor):
        t = samples.detach().cpu()
        return (t if t.dtype in (torch.float32, torch.float64) else t.double()).numpy()
    x = np.asarray(samples)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def split_halves(x: np.ndarray) -> np.ndarray:
    """Chains [M, N, ...] cut into their halves [2M, N // 2, ...]: the first halves of every
    chain, then the second halves (ArviZ's split; the middle draw of an odd N is left out)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def rank_normalised(x: np.ndarray) -> np.ndarray:
    """Draws [chains, draws, ...] replaced by the normal quantiles of their ranks among all
    draws of their coordinate: Phi^-1((r - 3/8) / (S + 1/4)) for S draws (Blom 1958;
    ties share their mean rank), as ArviZ rank-normalises."""
    pooled = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    ranks = stats.rankdata(pooled, method="average", axis=0)
    z = stats.norm.ppf((ranks - _BLOM) / (pooled.shape[0] - 2 * _BLOM + 1))
    return z.reshape(x.shape)


def rank_rhat_of_split(split: np.ndarray) -> np.ndarray:
    """max(R-hat of the rank-normalised draws, R-hat of the rank-normalised folded draws)
    for chains that are already split [chains, draws, ...] (Vehtari et al. 2021, eq. 4-6):
    ArviZ's plain R-hat (``method="identity"``) on what :func:`rank_normalised` makes.
    On the halves of two or more chains it is ArviZ's ``method="rank"`` R-hat."""
    from arviz_stats.base import array_stats

    folded = np.abs(split - np.median(split, axis=(0, 1)))
    bulk = array_stats.rhat(rank_normalised(split), chain_axis=0, draw_axis=1, method="identity")
    tail = array_stats.rhat(rank_normalised(folded), chain_axis=0, draw_axis=1, method="identity")
    return np.maximum(bulk, tail)


def _single_chain_rhat(x: np.ndarray) -> np.ndarray:
    """Split-R-hat of one chain [1, N, ...] from its halves; NaN for N < 2 * MIN_DRAWS."""
    if x.shape[1] < 2 * MIN_DRAWS:
        return np.full(x.shape[2:], np.nan)
    return rank_rhat_of_split(split_halves(x))


def summarise(diag: dict[str, np.ndarray], rhat_defined: bool = True) -> dict[str, float]:
    """The numbers a table carries of :func:`chain_diagnostics`' arrays [datapoint, latent]:

    - ``rhat_median``, ``rhat_max`` over every datapoint and latent dimension, and
      ``rhat_share_over_1_01``, the share not below :data:`RHAT_GOOD`. A coordinate whose
      chain never moved over its draws has no R-hat (ArviZ: 0 / 0 = NaN): it counts as
      infinite, i.e. as not converged. All NaN when ``rhat_defined`` is false (too few draws);
    - ``ess_bulk``, ``ess_tail``: the median over datapoints of the worst (smallest) ESS over
      the datapoint's latent dimensions: an E-step needs every coordinate to move, and the
      median keeps one unlucky datapoint from deciding the figure. NaN without ESS values.
    """
    rhat = np.asarray(diag["rhat"], dtype=float)
    nan = float("nan")
    out = {"rhat_median": nan, "rhat_max": nan, "rhat_share_over_1_01": nan}
    if rhat_defined and rhat.size:
        rhat = np.where(np.isnan(rhat), np.inf, rhat)
        out["rhat_median"] = float(np.median(rhat))
        out["rhat_max"] = float(rhat.max())
        out["rhat_share_over_1_01"] = float((rhat >= RHAT_GOOD).mean())
    for key in ("ess_bulk", "ess_tail"):
        out[key] = _median_of_worst(np.asarray(diag[key], dtype=float))
    return out


def _median_of_worst(ess: np.ndarray) -> float:
    """The median over datapoints (axis 0) of the smallest ESS over the other axes."""
    if ess.size == 0 or np.isnan(ess).all():
        return float("nan")
    worst = np.nanmin(ess.reshape(ess.shape[0], -1), axis=1)
    return float(np.nanmedian(worst))


#: MCEM diagnoses the E-step chains of the training datapoints with index below this (the
#: same ones every epoch, so the rows compare): enough for a median and a maximum, while
#: ArviZ's ~0.4 ms per coordinate stays a small part of an epoch (FA, 2 latents: ~25 ms)
DIAGNOSED_POINTS = 32


class EpochChainDiagnostics:
    """R-hat and ESS of an MCEM E-step's kept draws, collected over one epoch.

    Each E-step keeps ``draws`` transitions of one chain per datapoint (Pyro's kernels: one
    joint chain, whose coordinates are each datapoint's); :meth:`add` keeps those of the
    training datapoints with index below ``points`` (:data:`DIAGNOSED_POINTS`), each visited
    once an epoch, and :meth:`summary` diagnoses them in one call of
    :func:`chain_diagnostics` (one chain per datapoint: split-R-hat from its two halves),
    giving the epoch's history columns (:func:`summarise`): ``rhat_max``,
    ``rhat_share_over_1_01``, ``ess_bulk`` and ``ess_tail``. They are NaN when an E-step
    keeps too few draws: R-hat needs 8 (two halves of ArviZ's minimum of 4), ESS 4; MCEM's
    default of one draw per E-step (Kingma & Welling's) leaves nothing to diagnose and costs
    nothing. The draws diagnosed are those of one visit, at one theta: they say whether a
    chain mixes within an E-step, not across the epochs in which theta moves; with few draws
    R-hat is noisy (8 iid draws give R-hat over 1.01 more often than not).
    """

    #: the history columns of :meth:`summary`
    COLUMNS = ("rhat_max", "rhat_share_over_1_01", "ess_bulk", "ess_tail")

    def __init__(self, draws: int, points: int = DIAGNOSED_POINTS):
        self.draws, self.points = draws, points
        self.kept: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        """Forget the epoch's draws."""
        self.kept = []

    def add(self, samples: torch.Tensor, index: torch.Tensor) -> None:
        """Keep the draws [S, B, D] of the minibatch's datapoints ``index`` [B] that are
        diagnosed (a copy on the CPU)."""
        if samples.shape[0] < MIN_DRAWS:
            return
        keep = index < self.points
        if bool(keep.any()):
            self.kept.append(samples[:, keep].detach().cpu())

    def draws_kept(self) -> torch.Tensor | None:
        """The epoch's kept draws [S, datapoints, D] (None before any)."""
        return torch.cat(self.kept, dim=1) if self.kept else None

    def summary(self) -> dict[str, float]:
        """The epoch's history columns (see the class docstring)."""
        kept = self.draws_kept()
        if kept is None:
            return {key: float("nan") for key in self.COLUMNS}
        diag = chain_diagnostics(kept.unsqueeze(0))  # [1 chain, S, datapoints, D]
        out = summarise(diag, rhat_defined=has_rhat(1, self.draws))
        return {key: out[key] for key in self.COLUMNS}

    def state_dict(self) -> dict:
        """The epoch's draws so far (a checkpoint written mid-epoch continues them)."""
        return {"draws": self.draws_kept()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.kept = [] if state["draws"] is None else [state["draws"].cpu()]


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
    size. ``options`` go to the sampler's constructor (e.g. ``{"adapt_mass": False}``).

    Diagnostics are ArviZ's (:func:`chain_diagnostics`, Vehtari et al. 2021), over the
    chains of each datapoint and latent dimension, summarised by :func:`summarise`:

    - ``ess_bulk``, ``ess_tail``: the median over datapoints of the worst latent dimension's
      bulk / tail ESS, pooled over the datapoint's chains; ``ess_per_datapoint_median`` is
      ``ess_bulk``, and the figure of merit ``ess_per_second_per_datapoint`` is it over the
      timed seconds: **bulk** ESS, what the chains are worth for a posterior mean (per
      datapoint, because an E-step needs every datapoint's chain to move);
    - ``rhat_median``, ``rhat_max`` and ``rhat_fraction_below_1_01``: rank-normalised
      split-R-hat over every datapoint and latent dimension (one chain: its two halves), and
      the share below Vehtari et al.'s 1.01.
    """
    if chains < 1:
        raise ConfigError(f"chains: must be >= 1, got {chains}")
    pyro.set_rng_seed(seed)
    batch = x.shape[0]
    state, seconds = sample_chains(model, x, sampler, warmup, draws, options, chains)
    # [S, C * B, D] -> [C, S, B, D]: chains of one datapoint side by side
    per_chain = state.samples.reshape(draws, chains, batch, -1).transpose(0, 1)
    diag = chain_diagnostics(per_chain, chain_axis=0, draw_axis=1)  # each [B, D]
    found = summarise(diag, rhat_defined=has_rhat(chains, draws))
    return {
        "sampler": sampler,
        "draws": draws,
        "batch": batch,
        "chains": chains,
        "seconds": seconds,
        "ess_bulk": found["ess_bulk"],
        "ess_tail": found["ess_tail"],
        "ess_per_datapoint_median": found["ess_bulk"],
        "ess_per_second_per_datapoint": found["ess_bulk"] / seconds,
        "accept_prob": float(state.accept_prob.mean()),
        "step_size": float(state.step_size.mean()),
        "rhat_median": found["rhat_median"],
        "rhat_max": found["rhat_max"],
        "rhat_fraction_below_1_01": 1.0 - found["rhat_share_over_1_01"],
    }


def sample_chains(
    model, x, sampler: str, warmup: int, draws: int, options: dict | None = None, chains: int = 1
):
    """``chains`` chains per datapoint of the minibatch ``x`` (a tensor, or the model's
    argument tuple such as ``(x, y)``), in chain-major rows c * B + i, each from its own
    prior draw: ``warmup`` adapting transitions, then ``draws`` kept ones at the adapted step
    size and mass matrix. Returns the :class:`~aevb.inference.samplers.hmc.ChainState` of the
    kept draws (samples [draws, chains * B, D]) and their seconds (warm-up untimed)."""
    args = x if isinstance(x, tuple) else (x,)
    xs = tuple(a.repeat(chains, *([1] * (a.dim() - 1))) for a in args)
    latents = Latents(model, xs)
    u = latents.prior_draw(xs)
    kernel = make_sampler(sampler, **(options or {}))
    eps = kernel.initial_step_size(latents, xs, u, u.new_tensor(0.1))
    warm = kernel.sample(latents, xs, u, eps, 1, warmup_steps=warmup)
    t0 = time.perf_counter()
    state = kernel.sample(
        latents, xs, warm.u, warm.step_size, draws, adapt=False, inv_mass=warm.inv_mass
    )
    return state, time.perf_counter() - t0


def has_rhat(chains: int, draws: int) -> bool:
    """Whether ``chains`` chains of ``draws`` draws have an R-hat: ArviZ's 4 draws per chain,
    and for one chain 4 in each half."""
    return draws >= MIN_DRAWS * (2 if chains == 1 else 1)


__all__ = [
    "DIAGNOSED_POINTS",
    "MIN_DRAWS",
    "RHAT_GOOD",
    "TAIL_PROB",
    "EpochChainDiagnostics",
    "chain_diagnostics",
    "has_rhat",
    "measure_ess",
    "rank_normalised",
    "rank_rhat_of_split",
    "sample_chains",
    "split_halves",
    "summarise",
]
