"""How far an importance-sampling estimate of log p(x) can be trusted, per datapoint.

From the S log weights log w_s = log p(x, z_s) - log q(z_s | x), z_s ~ q(z | x), of one
datapoint:

- **Pareto k̂** (Vehtari et al. 2024): the shape of a generalised Pareto distribution fitted to
  the largest weights, computed by ArviZ (``arviz_stats``' ``psislw``). The weights' variance is
  finite for k < 1/2; for k̂ above min(1 - 1/log10 S, 0.7) the IS estimate is unreliable at this
  S, and more draws help only slowly (Yao et al. 2018 apply it to variational posteriors).
  Weights that are all equal (q is the exact posterior) have no tail: k̂ = -inf.
- **the importance sampling ESS**, 1 / sum_s w~_s^2 with w~ the normalised weights (Kong 1992).
- **the Monte Carlo variance of log p̂(x)**, by the delta method:
  Var[log p̂] ~ Var[w] / (S E[w]^2) ~ sum_s w~_s^2 - 1/S = 1/ESS - 1/S.

:func:`summary` turns them into the numbers every table carries: the mean log-likelihood, its
standard error over datapoints and its Monte Carlo standard error, the share of datapoints
above the k̂ threshold, and a flag with one line saying what to do.

References:
    A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), Pareto Smoothed Importance
    Sampling, JMLR 25(72).
    Y. Yao, A. Vehtari, D. Simpson, A. Gelman (2018), Yes, but Did It Work?: Evaluating
    Variational Inference, ICML.
    A. Kong (1992), A Note on Importance Sampling using Standardized Weights, Tech. Rep. 348,
    University of Chicago.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: below this many draws per datapoint no tail is fitted (k̂ is NaN)
MIN_SAMPLES = 10
#: Vehtari et al.'s bound above which an IS estimate is unreliable whatever S
KHAT_BAD = 0.7
#: an estimate is flagged when more than this share of its test points have k̂ above the
#: threshold: one point in twenty whose estimate cannot be trusted moves a test-set mean by
#: an unknown amount (the default of ``[[evaluation]] khat_share`` and ``--khat-share``)
FLAG_SHARE = 0.05
#: log weights that spread over less than this (nats) are equal: the weights differ by under
#: 0.01%, float32 rounding of log p(x, z) included, and there is no tail to fit (k̂ = -inf)
FLAT = 1e-4


def khat_threshold(num_samples: int) -> float:
    """min(1 - 1/log10 S, 0.7): the k̂ above which S draws are too few (Vehtari et al. 2024,
    sec. 3.2.3)."""
    return min(1 - 1 / math.log10(num_samples), KHAT_BAD)


def pareto_khat(log_w: torch.Tensor) -> torch.Tensor:
    """k̂ per datapoint of log weights [S, B] (ArviZ's PSIS fit); -inf where the weights are
    equal (within :data:`FLAT`) or their largest ones are, NaN where S < :data:`MIN_SAMPLES`."""
    rows = log_w.detach().double().cpu().T.numpy()  # [B, S]
    khat = np.full(rows.shape[0], np.nan)
    if rows.shape[1] < MIN_SAMPLES:
        return torch.from_numpy(khat)
    flat = rows.max(1) - rows.min(1) <= FLAT
    khat[flat] = -np.inf
    if (~flat).any():
        khat[~flat] = _fit(rows[~flat])
    return torch.from_numpy(khat)


def _fit(rows: np.ndarray) -> np.ndarray:
    """ArviZ's k̂ of each row of log weights; a row whose largest weights are all equal
    (ArviZ refuses it) has no tail: -inf. ``arviz_stats``' ``psislw`` takes log-likelihood
    values, as PSIS-LOO does, and smooths their negatives: log weights go in negated."""
    from arviz_stats.base import array_stats

    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            return array_stats.psislw(-rows, r_eff=1, axis=-1)[1]
        except ValueError:  # one row without a tail: fit them one at a time
            out = np.empty(rows.shape[0])
            for i, row in enumerate(rows):
                try:
                    out[i] = array_stats.psislw(-row, r_eff=1, axis=-1)[1]
                except ValueError:
                    out[i] = -np.inf
            return out


def importance_ess(log_w: torch.Tensor) -> torch.Tensor:
    """1 / sum_s w~_s^2 per datapoint of log weights [S, B]: S for equal weights, 1 when one
    weight holds all the mass."""
    normalised = torch.softmax(log_w.double(), 0)
    return 1 / normalised.pow(2).sum(0)


def log_mean_variance(log_w: torch.Tensor) -> torch.Tensor:
    """The delta-method Monte Carlo variance of log((1/S) sum_s w_s) per datapoint,
    1/ESS - 1/S, from log weights [S, B]."""
    return (1 / importance_ess(log_w) - 1 / log_w.shape[0]).clamp(min=0)


def summary(
    log_likelihood: torch.Tensor,
    khat: torch.Tensor,
    mc_variance: torch.Tensor,
    ess: torch.Tensor,
    num_samples: int,
    flag_share: float,
) -> dict:
    """The trust keys of an IS estimate (``evaluation.json``, ``results.csv``, MLflow):

    - ``test_log_likelihood_se``: the standard error of the mean over datapoints;
    - ``test_log_likelihood_mcse``: its Monte Carlo standard error, sqrt(sum_i Var_i) / N;
    - ``khat_max``, ``khat_threshold``, ``khat_share_over_0_7``, ``khat_share_over_threshold``;
    - ``is_ess_median``: the median importance-sampling ESS per datapoint;
    - ``flagged``: the share over the threshold exceeds ``flag_share``; ``advice``: what to do.
    """
    n = log_likelihood.numel()
    finite = khat[torch.isfinite(khat)]
    threshold = khat_threshold(num_samples) if num_samples >= MIN_SAMPLES else float("nan")
    over = float((khat > threshold).double().mean()) if num_samples >= MIN_SAMPLES else 0.0
    out: dict = {
        "test_log_likelihood_se": float(log_likelihood.double().std() / math.sqrt(n))
        if n > 1
        else float("nan"),
        "test_log_likelihood_mcse": float(mc_variance.double().sum().sqrt() / n),
        "khat_max": float(finite.max()) if finite.numel() else None,
        "khat_threshold": threshold,
        "khat_share_over_0_7": float((khat > KHAT_BAD).double().mean()),
        "khat_share_over_threshold": over,
        "is_ess_median": float(ess.median()),
        "flagged": bool(over > flag_share),
    }
    out["advice"] = advice(out, num_samples) if out["flagged"] else ""
    return out


def advice(result: dict, num_samples: int) -> str:
    """One line for a flagged estimate: how bad, and what to do."""
    share = result["khat_share_over_threshold"]
    return (
        f"IS-{num_samples} is unreliable: Pareto k-hat exceeds {result['khat_threshold']:.2f} "
        f"on {share:.0%} of the test points (max {result['khat_max']:.2f}); take more samples "
        "only if k-hat < 0.7, else estimate by AIS (--estimator ais) or train a better "
        "proposal (guide)"
    )


__all__ = [
    "FLAG_SHARE",
    "KHAT_BAD",
    "MIN_SAMPLES",
    "advice",
    "importance_ess",
    "khat_threshold",
    "log_mean_variance",
    "pareto_khat",
    "summary",
]
