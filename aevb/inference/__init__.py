"""Inference: objectives (the :mod:`.objectives` package), the shared training loop
(:mod:`.loop`) run by SVI (:mod:`.svi`), Monte Carlo EM (:mod:`.mcem`, samplers in the
:mod:`.samplers` package) and MCMC-refined VI (:mod:`.vimcmc`), each saying only what differs
on the one path from a method to a run (:mod:`.method`, the registry of methods; per-datapoint
chains in :mod:`.samplers.chains`), and estimators of log p(x) (:mod:`.evaluate`, the registry
and AIS in the :mod:`.estimators` package); the run directory's layout lives in :mod:`.rundir`
alone, a saved run is rebuilt, loaded and evaluated by :mod:`.saved`, and what a run records
and when it may resume are :mod:`.record`'s."""

from aevb.inference.estimators import ESTIMATORS
from aevb.inference.estimators.ais import AISConfig, ais_dataset
from aevb.inference.evaluate import (
    Bounds,
    active_units,
    bounds,
    elbo,
    log_likelihood,
    log_weights,
    posterior_means,
)
from aevb.inference.mcem import MCEMConfig
from aevb.inference.mcem import fit as mcem_fit
from aevb.inference.method import METHODS, run_method
from aevb.inference.objectives import OBJECTIVES, check_compatible, make_objective
from aevb.inference.record import Run
from aevb.inference.samplers import SAMPLERS
from aevb.inference.saved import evaluate_run, load_run
from aevb.inference.svi import FitConfig, SVIConfig, fit
from aevb.inference.vimcmc import VIMCMCConfig
from aevb.inference.vimcmc import fit as vimcmc_fit

__all__ = [
    "ESTIMATORS",
    "METHODS",
    "OBJECTIVES",
    "SAMPLERS",
    "AISConfig",
    "Bounds",
    "FitConfig",
    "MCEMConfig",
    "Run",
    "SVIConfig",
    "VIMCMCConfig",
    "active_units",
    "ais_dataset",
    "bounds",
    "check_compatible",
    "elbo",
    "evaluate_run",
    "fit",
    "load_run",
    "log_likelihood",
    "log_weights",
    "make_objective",
    "mcem_fit",
    "posterior_means",
    "run_method",
    "vimcmc_fit",
]
