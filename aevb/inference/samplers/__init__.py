"""Samplers of p_theta(z | x) for Monte Carlo EM: Pyro's HMC and NUTS, and a batched HMC;
the sampler protocol (:class:`Sampler`) and the registry of ``--sampler`` names
(:data:`SAMPLERS`).

Every sampler works on the same target, the posterior of a model's local latents given a
minibatch, through :class:`~aevb.inference.samplers.target.Latents`. ``hmc`` and ``nuts``
(:mod:`aevb.inference.samplers.pyro_kernels`) hand U(u) = sum_i U_i(u_i) to Pyro's kernels:
the minibatch is then **one joint chain** with one step size and one accept/reject.
``batched-hmc`` (:mod:`aevb.inference.samplers.hmc`) runs B independent chains in one
vectorised leapfrog, as Kingma & Welling (2013, sec. 5) describe for their MCEM baseline.
The per-datapoint chain state MCEM and MCMC-refined VI keep between visits is
:mod:`aevb.inference.samplers.chains`.

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 5.
    R. M. Neal (2011), MCMC using Hamiltonian dynamics, Handbook of MCMC, ch. 5.
    M. D. Hoffman, A. Gelman (2014), The No-U-Turn Sampler, JMLR 15.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Protocol

import torch

from aevb.errors import ConfigError
from aevb.inference.samplers.hmc import (
    BatchedHMC,
    ChainState,
    adapted,
    find_step_size,
    kinetic_energy,
    leapfrog,
    log_step_change,
    metropolis,
)
from aevb.inference.samplers.pyro_kernels import (
    FixedStepsHMC,
    PyroHMC,
    PyroKernelSampler,
    PyroNUTS,
    RecordingNUTS,
)
from aevb.inference.samplers.target import Latents, potential, potential_and_grad
from aevb.registry import lookup, put


class Sampler(Protocol):
    """What MCEM, AIS and :func:`aevb.inference.diagnostics.measure_ess` need of a sampler
    (see :data:`SAMPLERS`)."""

    @property
    def name(self) -> str:
        """The sampler's registry name."""
        ...

    #: one chain, step size and accept/reject per datapoint (True), or the minibatch as one
    #: joint chain with one step size (False)
    per_datapoint: bool
    #: the Robbins-Monro gain of the online step-size update
    #: (:func:`~aevb.inference.samplers.hmc.log_step_change`)
    adapt_gain: float
    #: the acceptance probability the step sizes are tuned towards
    target_accept_prob: float

    def initial_step_size(
        self, latents: Latents, args: tuple, u: torch.Tensor, step_size: torch.Tensor
    ) -> torch.Tensor:
        """A starting step size for chains at u [B, D] (before any warm-up)."""
        ...

    def sample(
        self,
        latents: Latents,
        args: tuple,
        u: torch.Tensor,
        step_size: torch.Tensor,
        num_samples: int,
        warmup_steps: int = 0,
        adapt: bool = True,
        inv_mass: torch.Tensor | None = None,
    ) -> ChainState:
        """Run ``warmup_steps`` discarded transitions (adapting the step size if ``adapt``),
        then ``num_samples`` kept ones, from u [B, D]; ``inv_mass`` [B, D] continues a
        previously adapted diagonal mass matrix (``ChainState.inv_mass``)."""
        ...


#: ``--sampler`` names: the E-step samplers of Monte Carlo EM (each a dataclass of its own
#: settings)
SAMPLERS: dict[str, type] = {
    "hmc": PyroHMC,
    "nuts": PyroNUTS,
    "batched-hmc": BatchedHMC,
}


def register(name: str, cls: type) -> type:
    """Add the sampler class ``cls`` (a dataclass of its settings following :class:`Sampler`)
    under ``name``: MCEM's ``sampler``, ``aevb train --sampler`` and diagnostics take it."""
    if not is_dataclass(cls):
        raise ConfigError(f"a sampler is a dataclass of its settings, got {cls!r}")
    return put(SAMPLERS, name, cls, "sampler")


def make_sampler(name: str, **kwargs) -> Sampler:
    """The sampler registered as ``name`` (a key of :data:`SAMPLERS`) with its settings."""
    return lookup(SAMPLERS, name, "sampler")(**kwargs)


#: sampler fields a run's caller sets itself (MCEM adapts online), not a user's option
_SET_BY_CALLER = ("adapt_online",)


def sampler_options(name: str) -> set[str]:
    """The options a user may give sampler ``name``: its dataclass fields."""
    return {f.name for f in fields(SAMPLERS[name])} - set(_SET_BY_CALLER)


def check_sampler_options(name: str, options, where: str = "sampler options") -> None:
    """Refuse an option that sampler ``name`` does not have (the closest ones named);
    unknown sampler names pass (they fail where the sampler is made)."""
    from aevb.settings import close_keys

    if name not in SAMPLERS:
        return
    valid = sampler_options(name)
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"{where}: {name} has no option {key!r}{close_keys(key, valid)} (its options: "
                f"{', '.join(sorted(valid))})"
            )


def sampler_from_options(name: str, options, **overrides) -> Sampler:
    """The sampler ``name`` with the user's ``options`` (checked) and the caller's
    ``overrides`` (e.g. ``adapt_online=True``)."""
    sampler = lookup(SAMPLERS, name, "sampler")
    check_sampler_options(name, options)
    return sampler(**dict(options), **overrides)


__all__ = [
    "register",
    "SAMPLERS",
    "BatchedHMC",
    "ChainState",
    "FixedStepsHMC",
    "Latents",
    "PyroHMC",
    "PyroKernelSampler",
    "PyroNUTS",
    "RecordingNUTS",
    "find_step_size",
    "kinetic_energy",
    "leapfrog",
    "adapted",
    "log_step_change",
    "make_sampler",
    "check_sampler_options",
    "sampler_from_options",
    "sampler_options",
    "metropolis",
    "potential",
    "potential_and_grad",
]
