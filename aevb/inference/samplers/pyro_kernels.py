"""Pyro's HMC and NUTS kernels as E-step samplers (``hmc``, ``nuts``), run through
``pyro.infer.MCMC`` on the potential of :mod:`aevb.inference.samplers.target`.

Pyro's kernels take U(u) = sum_i U_i(u_i) (``potential_fn``): the minibatch is then **one
joint chain** with one step size and one accept/reject (Pyro has no independent vectorised
chains, pyro#2539).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyro.poutine as poutine
import torch
from pyro.infer.mcmc import HMC, MCMC, NUTS

from aevb.inference.samplers.hmc import ChainState, adapted
from aevb.pyro_compat import mcmc_diagnostics


class _KeepsAcceptProb:
    """Keeps the run's mean Metropolis acceptance probability after ``MCMC`` has cleaned
    the kernel up (``cleanup()`` zeroes Pyro's own running mean)."""

    last_mean_accept_prob: float = float("nan")
    #: a diagonal inverse mass matrix to start from (a previous call's adapted one), and
    #: the one in use at the last draw
    given_inv_mass: torch.Tensor | None = None
    last_inv_mass: torch.Tensor | None = None

    def setup(self, warmup_steps, *args, **kwargs):
        super().setup(warmup_steps, *args, **kwargs)  # type: ignore[misc]
        if self.given_inv_mass is not None:  # setup() resets it to the identity
            adapter = self.mass_matrix_adapter  # type: ignore[attr-defined]
            adapter.inverse_mass_matrix = {("u",): self.given_inv_mass}

    def sample(self, params):
        out = super().sample(params)  # type: ignore[misc]
        self.last_mean_accept_prob = float(self._mean_accept_prob)  # type: ignore[attr-defined]
        self.last_inv_mass = self.inverse_mass_matrix[("u",)]  # type: ignore[attr-defined]
        return out


class RecordingNUTS(_KeepsAcceptProb, NUTS):
    """Pyro's NUTS, keeping its mean acceptance probability for the caller."""


class FixedStepsHMC(_KeepsAcceptProb, HMC):
    """Pyro's HMC with a number of leapfrog steps that stays fixed under step-size
    adaptation (Pyro recomputes it as trajectory_length / step_size; see PYRO_NOTES)."""

    def __init__(self, model=None, num_steps: int = 10, **kwargs):
        super().__init__(model, num_steps=num_steps, **kwargs)
        self._fixed_num_steps = num_steps

    @property
    def num_steps(self) -> int:
        return self._fixed_num_steps


@dataclass
class PyroKernelSampler:
    """Pyro's kernels through ``pyro.infer.MCMC`` (subclasses: :class:`PyroHMC`,
    :class:`PyroNUTS`, each building its kernel).

    The minibatch is one joint chain on U(u) = sum_i U_i(u_i). With ``warmup_steps`` > 0
    Pyro adapts the (shared) step size by dual averaging; with none the given step size is
    used as is and, if ``adapt_online``, nudged towards the target acceptance after
    the call (log eps += gain * (accept - target)) so an MCEM loop keeps it tuned without
    paying for a warm-up on every E-step.
    """

    target_accept_prob: float = 0.9
    adapt_gain: float = 0.5
    adapt_online: bool = False
    #: Pyro's own diagonal mass adaptation when a call's warm-up has at least
    #: ``mass_warmup`` transitions (as for batched-hmc; MCEM's burn-ins are shorter)
    adapt_mass: bool = True
    mass_warmup: int = 50
    per_datapoint: ClassVar[bool] = False
    name: ClassVar[str] = "pyro"

    def kernel(self, potential_fn, step_size: float, adapt: bool, adapt_mass: bool = False):
        """The Pyro kernel on ``potential_fn`` (see the subclasses)."""
        raise NotImplementedError

    def kernel_options(self, potential_fn, step_size: float, adapt: bool, adapt_mass: bool):
        """The keyword arguments every Pyro HMC-family kernel takes."""
        return dict(
            potential_fn=potential_fn,
            step_size=step_size,
            adapt_step_size=adapt,
            adapt_mass_matrix=adapt_mass,
            target_accept_prob=self.target_accept_prob,
        )

    def extra_diagnostics(self) -> dict:
        """Kernel-specific entries of
        :attr:`~aevb.inference.samplers.hmc.ChainState.diagnostics`."""
        return {}

    def initial_step_size(self, latents, args, u, step_size) -> torch.Tensor:
        """The given step size: Pyro adapts its shared one during warm-up."""
        return step_size

    def adaptation(self, warmup_steps: int, adapt: bool) -> tuple[bool, bool]:
        """(adapt the step size, adapt the mass matrix) for a call with ``warmup_steps``."""
        adapt = adapt and warmup_steps > 0
        return adapt, adapt and self.adapt_mass and warmup_steps >= self.mass_warmup

    def run_mcmc(
        self, latents, args, u, step_size, num_samples, warmup_steps=0, adapt=True, inv_mass=None
    ) -> MCMC:
        """The finished ``pyro.infer.MCMC`` run that :meth:`sample` reads (one chain on
        U(u) = sum_i U_i(u_i), its draws under the site name ``"u"``); ArviZ's
        ``az.from_pyro`` converts it (:mod:`aevb.inference.posterior`)."""

        def potential_fn(params):
            return -latents.log_joint(params["u"], args).sum()

        adapt, adapt_mass = self.adaptation(warmup_steps, adapt)
        eps = float(step_size.reshape(-1)[0])
        kernel = self.kernel(potential_fn, eps, adapt=adapt, adapt_mass=adapt_mass)
        if inv_mass is not None:
            kernel.given_inv_mass = inv_mass.reshape(-1)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            initial_params={"u": u.detach()},
            disable_progbar=True,
        )
        with poutine.block():  # Pyro's MCMC draws its own sites; keep them out of any trace
            mcmc.run()
        return mcmc

    def sample(
        self, latents, args, u, step_size, num_samples, warmup_steps=0, adapt=True, inv_mass=None
    ) -> ChainState:
        """See :class:`~aevb.inference.samplers.Sampler`; ``inv_mass`` [B, D] continues an
        adapted mass matrix."""
        mcmc = self.run_mcmc(
            latents, args, u, step_size, num_samples, warmup_steps, adapt, inv_mass
        )
        kernel = mcmc.kernel
        adapt, adapt_mass = self.adaptation(warmup_steps, adapt)
        samples = mcmc.get_samples()["u"]  # [S, B, D]
        # the kernel's own diagnostics (MCMC.diagnostics() also computes R-hat and ESS,
        # which need >= 4 draws; an MCEM E-step may take one)
        diag = mcmc_diagnostics(mcmc)
        accept = kernel.last_mean_accept_prob  # mean Metropolis probability of the run
        eps_new = float(kernel.step_size)
        if self.adapt_online and not adapt:
            eps_new = adapted(eps_new, accept, self.target_accept_prob, self.adapt_gain)
        info = {
            "accept_rate": float(diag["acceptance rate"]),
            "divergences": len(diag["divergences"]),
        }
        info.update(self.extra_diagnostics())
        return ChainState(
            samples,
            samples[-1],
            u.new_tensor(eps_new),
            u.new_full((u.shape[0],), accept),
            info,
            None if not (adapt_mass or inv_mass is not None) else _as_rows(kernel.last_inv_mass, u),
        )


@dataclass
class PyroHMC(PyroKernelSampler):
    """Pyro's ``HMC`` with a fixed number of leapfrog steps (:class:`FixedStepsHMC`)."""

    #: 10 leapfrog steps per transition, Kingma & Welling's MCEM setting
    num_steps: int = 10
    name: ClassVar[str] = "hmc"

    def kernel(self, potential_fn, step_size: float, adapt: bool, adapt_mass: bool = False):
        """:class:`FixedStepsHMC` on ``potential_fn``."""
        options = self.kernel_options(potential_fn, step_size, adapt, adapt_mass)
        return FixedStepsHMC(num_steps=self.num_steps, **options)


@dataclass
class PyroNUTS(PyroKernelSampler):
    """Pyro's ``NUTS`` (:class:`RecordingNUTS`)."""

    #: Pyro's default bound on the tree depth
    max_tree_depth: int = 10
    name: ClassVar[str] = "nuts"

    def kernel(self, potential_fn, step_size: float, adapt: bool, adapt_mass: bool = False):
        """:class:`RecordingNUTS` on ``potential_fn``."""
        options = self.kernel_options(potential_fn, step_size, adapt, adapt_mass)
        return RecordingNUTS(max_tree_depth=self.max_tree_depth, **options)

    def extra_diagnostics(self) -> dict:
        """One tree of 2^depth - 1 leapfrog steps at most; Pyro keeps no per-draw depth."""
        return {"max_tree_depth": self.max_tree_depth}


def _as_rows(inv_mass: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor | None:
    """Pyro's flat diagonal inverse mass [B * D] as rows [B, D] like u."""
    return None if inv_mass is None else inv_mass.detach().reshape(u.shape)


__all__ = ["FixedStepsHMC", "PyroHMC", "PyroKernelSampler", "PyroNUTS", "RecordingNUTS"]
