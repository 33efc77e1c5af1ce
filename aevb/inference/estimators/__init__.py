"""Estimators of the test log-likelihood of a trained run: a registry (:data:`ESTIMATORS`,
a plain dict) that :func:`aevb.inference.saved.evaluate_run` and the ``aevb evaluate``
command read.

Every evaluation makes one importance-sampling pass with the run's guide
(:func:`aevb.inference.evaluate.bounds`), which gives the test ELBO; an estimator says how
many draws per datapoint that pass takes (:meth:`Estimator.elbo_samples`) and turns it, or
its own computation, into its log-likelihood per datapoint and the extra keys it reports
(the per-datapoint values are kept in the run directory, so that two runs scored on the same
test points are compared pairwise: :mod:`aevb.experiments.paired`)::

    is    IS-k with the run's guide as proposal: the pass's own k = num_samples draws
          (Burda et al. 2015)
    ais   annealed importance sampling from the prior, num_samples chains and
          ais_temperatures temperatures (:mod:`aevb.inference.estimators.ais`); needs no
          guide, so the ELBO pass takes one draw

A new estimator (e.g. BDMC) is one more object with the same two methods; one with an algorithm
of its own puts it in a module of this package, as AIS does (:mod:`.ais`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from aevb.devices import fork_devices, resolve_device
from aevb.errors import ConfigError
from aevb.inference import psis
from aevb.inference.evaluate import Bounds
from aevb.registry import put


@dataclass(frozen=True)
class EstimateTask:
    """What an estimator is given: the run's model and guide (parameters loaded, on
    ``device``), the test set, and the evaluation's settings."""

    model: Any
    guide: Any
    test: Any  # a Dataset
    num_samples: int
    seed: int = 0
    batch_size: int = 100
    ais_temperatures: int = 500
    device: str | torch.device = "cpu"
    progress: bool = False
    #: an IS estimate is flagged when more than this share of the test points have a k-hat
    #: above the threshold (:func:`aevb.inference.psis.summary`)
    khat_share: float = psis.FLAG_SHARE


class Estimator(Protocol):
    """What :data:`ESTIMATORS` holds (its docstring's first clause is its ``--help`` line)."""

    #: one line for ``aevb evaluate --help``: what ``--num-samples`` counts
    samples_help: str
    #: ``num_samples`` where none is given
    default_samples: int

    def elbo_samples(self, num_samples: int) -> int:
        """Draws per datapoint of the importance-sampling pass that gives the test ELBO."""
        ...

    def estimate(self, task: EstimateTask, bounds: Bounds) -> tuple[torch.Tensor | float, dict]:
        """``(log-likelihood, extra result keys)``: the estimator's log p(x) per test point,
        a tensor [N] (nats), and the keys it adds to the result. A float (the mean over the
        test set) is accepted too; comparisons with such an estimate are then unpaired."""
        ...


class ImportanceSampling:
    """IS-k with the run's guide as proposal: the ELBO pass's own draws give it."""

    samples_help = "proposals per datapoint"
    #: a fifth of Burda et al.'s IS-5000's cost, for a quick score; tables use 5000
    default_samples = 1000

    def elbo_samples(self, num_samples: int) -> int:
        """The IS pass takes the estimator's own k draws per datapoint."""
        return num_samples

    def estimate(self, task: EstimateTask, bounds: Bounds) -> tuple[torch.Tensor, dict]:
        """The pass's IS-k per datapoint, and how far it can be trusted: its standard errors
        over datapoints and by Monte Carlo, the Pareto k-hat summary and a flag
        (:mod:`aevb.inference.psis`)."""
        return bounds.log_likelihood, bounds.trust(task.khat_share)


class AnnealedImportanceSampling:
    """AIS from the prior (:func:`aevb.inference.estimators.ais.ais_dataset`), seeded by the task's
    seed without touching the caller's random state; adds its standard error over the test
    set, the number of temperatures and the HMC acceptance."""

    samples_help = "chains per datapoint"
    default_samples = 16

    def elbo_samples(self, num_samples: int) -> int:
        """AIS needs no guide: the ELBO pass takes one draw per datapoint."""
        return 1

    def estimate(self, task: EstimateTask, bounds: Bounds) -> tuple[torch.Tensor, dict]:
        """AIS's log p(x) per datapoint and its standard errors, temperatures and acceptance."""
        from aevb.inference.estimators.ais import AISConfig, ais_dataset

        with torch.random.fork_rng(devices=fork_devices(resolve_device(task.device))):
            torch.manual_seed(task.seed)
            config = AISConfig(num_temperatures=task.ais_temperatures, num_chains=task.num_samples)
            a = ais_dataset(task.model, task.test, config, batch_size=task.batch_size)
        mcse = float(a.stderr.pow(2).sum().sqrt() / len(task.test))
        n = a.log_likelihood.numel()
        extra = {
            "test_log_likelihood_stderr": mcse,  # the name of aevb <= 0.1's records
            "test_log_likelihood_mcse": mcse,
            "test_log_likelihood_se": float(a.log_likelihood.double().std() / n**0.5)
            if n > 1
            else float("nan"),
            "ais_temperatures": task.ais_temperatures,
            "ais_accept_prob": a.accept_prob,
        }
        return a.log_likelihood, extra


class BidirectionalMonteCarlo(AnnealedImportanceSampling):
    """AIS on the test set, and its error bounded by a BDMC sandwich: forward and reverse AIS
    with the same schedule on as many points simulated from the model
    (:mod:`aevb.inference.estimators.bdmc`); three times AIS's cost."""

    def estimate(self, task: EstimateTask, bounds: Bounds) -> tuple[torch.Tensor, dict]:
        """AIS's estimates and keys, and the sandwich's: ``bdmc_lower``, ``bdmc_upper`` (means
        over the simulated points), ``bdmc_gap`` and ``bdmc_points``."""
        from aevb.inference.estimators.ais import AISConfig
        from aevb.inference.estimators.bdmc import bdmc

        ll, extra = super().estimate(task, bounds)
        config = AISConfig(num_temperatures=task.ais_temperatures, num_chains=task.num_samples)
        template = task.test.x[:1]
        r = bdmc(task.model, template, len(task.test), config, seed=task.seed)
        sandwich = {
            "bdmc_lower": float(r.lower.mean()),
            "bdmc_upper": float(r.upper.mean()),
            "bdmc_gap": r.gap,
            "bdmc_points": len(r.lower),
            "bdmc_seconds": r.seconds,
        }
        return ll, {**extra, **sandwich}


#: estimators of log p(x) by name (``aevb evaluate --estimator``, ``[[evaluation]]`` tables)
ESTIMATORS: dict[str, Estimator] = {
    "is": ImportanceSampling(),
    "ais": AnnealedImportanceSampling(),
    "bdmc": BidirectionalMonteCarlo(),
}


def register(name: str, estimator: Estimator) -> Estimator:
    """Add ``estimator`` (an object following :class:`Estimator`) under ``name``: ``aevb
    evaluate --estimator``, ``[[evaluation]]`` tables and grids' ``[evaluate]`` take it."""
    missing = [a for a in ("samples_help", "default_samples", "elbo_samples", "estimate")]
    missing = [a for a in missing if not hasattr(estimator, a)]
    if missing:
        raise ConfigError(f"{estimator!r} cannot be an estimator: it has no {missing}")
    return put(ESTIMATORS, name, estimator, "estimator")


__all__ = [
    "register",
    "ESTIMATORS",
    "AnnealedImportanceSampling",
    "EstimateTask",
    "Estimator",
    "ImportanceSampling",
]
