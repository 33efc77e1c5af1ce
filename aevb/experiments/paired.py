"""Differences between the cells of a grid, with the standard error that pairing gives them.

Two cells evaluated on the same test points are compared point by point. With seeds
s = 1..S common to cells a and b, n test points and their per-point estimates
l_a^s(x_i), l_b^s(x_i) (``pointwise.npz`` in each run directory)::

    d_i^s = l_a^s(x_i) - l_b^s(x_i)          D_s = (1/n) sum_i d_i^s      D = (1/S) sum_s D_s

    se_points^2 = Var_i( (1/S) sum_s d_i^s ) / n       the test set's sampling error
    se_seeds^2  = Var_s( D_s ) / S                     training's (and Monte Carlo's)
                                                       variation between seeds; 0 for S = 1
    se^2        = se_points^2 + se_seeds^2

Pairing removes what the two cells share: a test point that is hard for one model is hard
for the other, and the per-point spread of log p(x) (tens of nats on MNIST) cancels in d_i.
An unpaired standard error, sqrt(se_a^2 + se_b^2) from each cell's own spread, is many times
larger and would call resolved differences unresolved. Where a run has no per-point values
(evaluated by an older aevb, or by an estimator that reports its mean only) or the two cells
scored different test points, the difference falls back to that unpaired error and says so.

A difference is *resolved* when \\|D\\| > 2 se (about 95% two-sided under a normal error).
A ranking orders cells by their mean estimate and says, for each neighbour, whether the
order is resolved.

References:
    Vehtari, Gelman & Gabry (2017), Practical Bayesian model evaluation using leave-one-out
    cross-validation and WAIC, Statistics and Computing 27: 1413-1432 (sec. 5.2, paired
    standard errors of differences in expected log predictive density).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aevb.inference import rundir

#: a difference is resolved when it exceeds this many standard errors
RESOLVED_SE = 2.0


@dataclass(frozen=True)
class Difference:
    """Cell a minus cell b under one estimator."""

    a: str
    b: str
    difference: float
    se: float
    se_points: float
    se_seeds: float
    seeds: int
    points: int
    paired: bool

    @property
    def resolved(self) -> bool:
        """\\|difference\\| > 2 standard errors (False where the error is unknown)."""
        return bool(math.isfinite(self.se) and abs(self.difference) > RESOLVED_SE * self.se)

    @property
    def verdict(self) -> str:
        """ "resolved" or "not resolved"."""
        return "resolved" if self.resolved else "not resolved"


def paired_difference(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float, float]:
    """(D, se_points, se_seeds) of per-point estimates ``a[s]``, ``b[s]`` [n] of the same
    test points under seeds s (the module's formulas)."""
    d = np.stack([np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b)])  # [S, n]
    per_seed = d.mean(1)
    n, seeds = d.shape[1], d.shape[0]
    se_points = float(d.mean(0).std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    se_seeds = float(per_seed.std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else 0.0
    return float(per_seed.mean()), se_points, se_seeds


def compare_cells(results: pd.DataFrame, a: str, b: str, estimator: str) -> Difference | None:
    """Cell ``a`` minus cell ``b`` by ``estimator`` (``is``, ``ais``, ... or ``elbo``) on
    the seeds both finished; paired where every run kept its per-point values of the same
    test points, unpaired otherwise. None where the two share no seed with the estimate."""
    column = _column(estimator)
    ok = results[(results["status"] == "ok") & results[column].notna()]
    ra, rb = (ok[ok["cell"] == c].set_index("seed") for c in (a, b))
    seeds = sorted(set(ra.index) & set(rb.index))
    if not seeds:
        return None
    pa = [_points(ra.loc[s], estimator) for s in seeds]
    pb = [_points(rb.loc[s], estimator) for s in seeds]
    found = [p for p in pa + pb if p is not None]
    # paired: every run kept its points, of one test set (one digest)
    if len(found) == 2 * len(seeds) and len({digest for _, digest in found}) == 1:
        values = [v for v, _ in found]
        mean, se_points, se_seeds = paired_difference(values[: len(seeds)], values[len(seeds) :])
        n, paired = len(values[0]), True
    else:
        mean, se_points, se_seeds = _unpaired(ra.loc[seeds], rb.loc[seeds], column)
        n, paired = int(ra.loc[seeds[0]].get("num_test", 0) or 0), False
    se = math.hypot(se_points, se_seeds)
    return Difference(a, b, mean, se, se_points, se_seeds, len(seeds), n, paired)


def ranking(results: pd.DataFrame, estimator: str) -> pd.DataFrame:
    """The cells ordered by their mean ``estimator`` estimate (best first), each compared
    with the next: ``difference``, its ``se``, whether it is ``paired`` and the verdict."""
    column = _column(estimator)
    ok = results[results["status"] == "ok"]
    if column not in ok or not ok[column].notna().any():
        return pd.DataFrame()
    means = ok.groupby("cell", sort=False)[column].mean().dropna().sort_values(ascending=False)
    rows = []
    for rank, (cell, mean) in enumerate(means.items(), 1):
        row = {"rank": rank, "cell": cell, column: round(float(mean), 4)}
        if rank < len(means):
            below = means.index[rank]
            diff = compare_cells(results, cell, below, estimator)
            if diff is not None:
                row.update(_describe(diff))
        rows.append(row)
    return pd.DataFrame(rows).set_index("rank")


def _describe(diff: Difference) -> dict:
    return {
        "vs. next": diff.b,
        "difference": round(diff.difference, 4),
        "se": round(diff.se, 4),
        "paired": "yes" if diff.paired else "no",
        "verdict": diff.verdict,
    }


def _column(estimator: str) -> str:
    return "test_elbo" if estimator == "elbo" else f"test_ll_{estimator}"


def _points(row: pd.Series, estimator: str) -> tuple[np.ndarray, str] | None:
    """One run's per-point values for ``estimator`` and the digest of the test points they
    score, or None where it kept none."""
    key, digest = row.get(f"{estimator}_key"), row.get(f"{estimator}_points")
    if not isinstance(key, str) or not isinstance(row.get("run_dir"), str):
        return None
    found = rundir.read_pointwise(row["run_dir"], key)
    values = found.get("elbo" if estimator == "elbo" else "log_likelihood")
    return None if values is None or not isinstance(digest, str) else (values, digest)


def _unpaired(ra: pd.DataFrame, rb: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """The difference of the seed means with each cell's own standard error over points
    (``COLUMN_se``) combined as if independent (not divided by the seeds: they score the
    same points), and the seeds' spread."""
    d = ra[column].to_numpy(float) - rb[column].to_numpy(float)
    se_col = f"{column}_se"
    if se_col in ra and se_col in rb:
        var = (ra[se_col].to_numpy(float) ** 2 + rb[se_col].to_numpy(float) ** 2).mean()
        se_points = float(math.sqrt(var))
    else:
        se_points = math.nan
    se_seeds = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se_points, se_seeds


__all__ = ["RESOLVED_SE", "Difference", "compare_cells", "paired_difference", "ranking"]
