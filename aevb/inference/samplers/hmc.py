"""The shared HMC numerics (leapfrog, Metropolis test, Robbins-Monro step-size updates, the
initial step-size search), the batched HMC sampler built on them, and the state every sampler
hands back (:class:`ChainState`); AIS (:mod:`aevb.inference.estimators.ais`) runs the same
numerics.

HMC follows Neal (2011): momentum r ~ N(0, I), ``num_steps`` leapfrog steps of size eps on
``H(u, r) = U(u) + |r|^2 / 2``, accept with probability min(1, exp(H_old - H_new)).
``batched-hmc`` (:class:`BatchedHMC`) runs B independent chains in one vectorised leapfrog:
per-datapoint momentum, Metropolis test, and step size adapted towards a target acceptance,
as Kingma & Welling (2013, sec. 5) describe for their MCEM baseline.

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 5.
    R. M. Neal (2011), MCMC using Hamiltonian dynamics, Handbook of MCMC, ch. 5.
    M. D. Hoffman, A. Gelman (2014), The No-U-Turn Sampler, JMLR 15.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from aevb.errors import ConfigError
from aevb.inference.samplers.target import Latents, potential


@dataclass
class ChainState:
    """What an E-step hands back: the chains' last state and what the sampler saw."""

    #: samples [S, B, D] (unconstrained) and the last state [B, D]
    samples: torch.Tensor
    u: torch.Tensor
    #: step size: per datapoint [B] (batched-hmc) or one shared value
    step_size: torch.Tensor
    #: mean Metropolis acceptance probability per datapoint [B] (shared for Pyro's kernels)
    accept_prob: torch.Tensor
    #: what else the sampler saw: ``accept_rate`` (the share of kept transitions accepted);
    #: batched-hmc: ``accept_probs`` [S, B] (each kept transition's Metropolis probability),
    #: ``start_potential`` and ``potential`` [B]; Pyro's kernels: ``divergences``
    diagnostics: dict
    #: the diagonal of the inverse mass matrix per datapoint [B, D] (None: identity)
    inv_mass: torch.Tensor | None = None


@dataclass
class BatchedHMC:
    """B independent HMC chains in one vectorised leapfrog (one per datapoint).

    Per datapoint i: its own momentum, its own Metropolis test and its own step size eps_i,
    adapted on the log scale by Robbins-Monro, log eps_i += gain * (a_i - target), during
    warm-up (and, with ``adapt_online``, while sampling too — what an online MCEM
    E-step does, as theta keeps moving).
    """

    #: 10 leapfrog steps per transition, Kingma & Welling's MCEM setting
    num_steps: int = 10
    #: 0.9, the acceptance rate Kingma & Welling tuned their step size to
    target_accept_prob: float = 0.9
    adapt_gain: float = 0.5
    adapt_online: bool = False
    #: each transition uses eps_i * U(1 - jitter, 1 + jitter): a fixed trajectory length
    #: can resonate with the target's periods and stop mixing (Neal 2011, sec. 5.4.2.2)
    jitter: float = 0.5
    name: ClassVar[str] = "batched-hmc"

    #: adapt a diagonal mass matrix per datapoint (the variance of its chain's u, Stan's
    #: windowed scheme) when a call's warm-up has at least ``mass_warmup`` transitions;
    #: MCEM's 10-transition burn-ins keep the identity
    adapt_mass: bool = True
    mass_warmup: int = 50
    per_datapoint: ClassVar[bool] = True

    def initial_step_size(self, latents, args, u, step_size) -> torch.Tensor:
        """Per-datapoint step sizes by :func:`find_step_size` (one leapfrog step's acceptance
        brought near 1/2)."""
        return find_step_size(latents, args, u, step_size)

    def transition(self, potential_fn, u, U, grad, eps, inv_mass=None):
        """One HMC transition per chain on ``potential_fn: u -> (U [B], dU/du)`` with kinetic
        energy ``|r|^2_{M^-1} / 2`` (``inv_mass`` [B, D] the diagonal of M^-1, None = identity);
        returns (u, U, grad, accept_prob, accepted).

        Random draws, in this order: the momentum r ~ N(0, M) (``randn_like(u)``), the step
        jitter (``rand_like(eps)``), then one uniform per chain for the Metropolis test
        (:func:`metropolis`)."""
        r = torch.randn_like(u)
        if inv_mass is not None:
            r = r / inv_mass.sqrt()
        h0 = U + 0.5 * kinetic_energy(r, inv_mass)
        e = (eps * (1.0 + self.jitter * (2.0 * torch.rand_like(eps) - 1.0))).unsqueeze(-1)
        u1, r1, U1, g1 = leapfrog(potential_fn, u, r, grad, e, self.num_steps, inv_mass)
        h1 = U1 + 0.5 * kinetic_energy(r1, inv_mass)
        log_a, accept = metropolis(h0, h1)
        keep = accept.unsqueeze(-1)
        u = torch.where(keep, u1, u)
        grad = torch.where(keep, g1, grad)
        U = torch.where(accept, U1, U)
        return u, U, grad, log_a.exp(), accept

    def sample(
        self, latents, args, u, step_size, num_samples, warmup_steps=0, adapt=True, inv_mass=None
    ) -> ChainState:
        """See :class:`~aevb.inference.samplers.Sampler`; ``inv_mass`` [B, D] continues an
        adapted mass matrix."""
        u = u.detach().clone()
        eps = step_size.detach().clone().expand(u.shape[0]).clone()
        target = potential(latents, args)
        U, grad = target(u)
        start_potential = U
        samples, probs = [], []
        accepted = u.new_zeros(u.shape[0])
        # Stan's windows: step size only for the first 15%, then the mass from the chains'
        # variance over the next 75%, then step size alone again for the last 10%
        window = (0, -1)
        if adapt and self.adapt_mass and warmup_steps >= self.mass_warmup:
            window = (int(0.15 * warmup_steps), int(0.9 * warmup_steps))
        moments = _Welford(u)
        t0 = 0  # restart of the step-size schedule
        for t in range(warmup_steps + num_samples):
            u, U, grad, a, acc = self.transition(target, u, U, grad, eps, inv_mass)
            warm = t < warmup_steps
            if (warm and adapt) or (not warm and self.adapt_online):
                gain = self.adapt_gain / math.sqrt(t - t0 + 1) if warm else self.adapt_gain
                eps = adapted(eps, a, self.target_accept_prob, gain)
            if window[0] <= t < window[1]:
                moments.add(u)
            if t == window[1] - 1:
                inv_mass = moments.shrunk_variance()
                eps = find_step_size(latents, args, u, eps, inv_mass=inv_mass)
                t0 = t + 1
            if not warm:
                samples.append(u)
                probs.append(a)
                accepted += acc.float()
        accept_probs = torch.stack(probs)
        return ChainState(
            torch.stack(samples),
            u,
            eps,
            accept_probs.mean(0),
            # U [B] at the start and at the last state (vi-mcmc's refine_gain is their difference)
            {
                "accept_rate": float(accepted.mean() / num_samples),
                "accept_probs": accept_probs,  # [S, B]: each kept transition's probability
                "start_potential": start_potential,
                "potential": U,
            },
            inv_mass,
        )


def log_step_change(accept_prob, target: float, gain: float):
    """The Robbins-Monro step-size update on the log scale, shared by every sampler, AIS
    and MCEM: log eps += gain * (a - target), for a mean acceptance ``accept_prob`` (a float
    or a tensor of one per chain). Returns the change of log eps."""
    return gain * (accept_prob - target)


def adapted(step_size, accept_prob, target: float, gain: float):
    """``step_size * exp(log_step_change(...))`` (floats stay floats, tensors tensors)."""
    change = log_step_change(accept_prob, target, gain)
    return step_size * (torch.exp(change) if torch.is_tensor(change) else math.exp(change))


def kinetic_energy(r: torch.Tensor, inv_mass: torch.Tensor | None) -> torch.Tensor:
    """r^T M^-1 r per chain [B] (twice the kinetic energy) for momenta r [B, D] and the
    diagonal ``inv_mass`` of M^-1 ([B, D]; None = identity)."""
    return (r * r).sum(-1) if inv_mass is None else (r * r * inv_mass).sum(-1)


def leapfrog(potential_fn, u, r, grad, step_size, num_steps: int, inv_mass=None):
    """``num_steps`` leapfrog steps of size ``step_size`` (a scalar or [B, 1]) on
    H(u, r) = U(u) + r^T M^-1 r / 2 (Neal 2011, eq. 5.18-5.20): a half step of the momentum,
    alternating full steps of position and momentum, a final half step of the momentum.

    :param potential_fn: u -> (U(u) [B], dU/du [B, D]).
    :param grad: dU/du at the starting ``u`` (carried between calls, so each step costs one
        potential-and-gradient evaluation).
    :returns: (u, r, U(u), dU/du) at the end of the trajectory.

    The map is volume-preserving and time-reversible: from the end point with the momentum
    negated, the same number of steps leads back to the start.
    """
    if num_steps < 1:
        raise ConfigError(f"a leapfrog trajectory needs num_steps >= 1, got {num_steps}")
    r = r - 0.5 * step_size * grad
    U = None
    for step in range(num_steps):
        u = u + step_size * (r if inv_mass is None else inv_mass * r)
        U, grad = potential_fn(u)
        if step < num_steps - 1:
            r = r - step_size * grad
    r = r - 0.5 * step_size * grad
    return u, r, U, grad


def metropolis(h0: torch.Tensor, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Metropolis test per chain for a move from energy ``h0`` to ``h1`` (both [B]):
    log a = min(0, h0 - h1) (a NaN energy counts as -inf, a rejection), and accept exactly
    when log v < log a for one uniform v ~ U(0, 1) per chain (``torch.rand_like``).
    Returns (log a, accepted)."""
    log_a = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
    accept = torch.rand_like(log_a).log() < log_a
    return log_a, accept


class _Welford:
    """Running per-chain mean and variance of u [B, D] (Welford's algorithm)."""

    def __init__(self, like: torch.Tensor):
        self.n, self.mean, self.m2 = 0, torch.zeros_like(like), torch.zeros_like(like)

    def add(self, u: torch.Tensor) -> None:
        self.n += 1
        delta = u - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (u - self.mean)

    def shrunk_variance(self) -> torch.Tensor:
        """Stan's regularised estimate: n/(n+5) var + 1e-3 * 5/(n+5)."""
        n = self.n
        var = self.m2 / max(n - 1, 1)
        return (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))


def find_step_size(
    latents: Latents,
    args: tuple,
    u: torch.Tensor,
    eps: torch.Tensor,
    iters: int = 8,
    inv_mass: torch.Tensor | None = None,
):
    """Per-datapoint starting step sizes: double eps_i while one leapfrog step's acceptance
    probability exceeds 1/2, halve it while below (Hoffman & Gelman 2014, Alg. 4, one
    step per iteration); ``inv_mass`` as in :meth:`BatchedHMC.transition`."""
    eps = eps.detach().clone().expand(u.shape[0]).clone()
    target = potential(latents, args)
    U, g = target(u)
    for _ in range(iters):
        r = torch.randn_like(u)
        if inv_mass is not None:
            r = r / inv_mass.sqrt()
        _, r1, U1, _ = leapfrog(target, u, r, g, eps.unsqueeze(-1), 1, inv_mass)
        log_a = torch.nan_to_num(
            U + 0.5 * kinetic_energy(r, inv_mass) - U1 - 0.5 * kinetic_energy(r1, inv_mass),
            nan=-math.inf,
        )
        eps = torch.where(log_a > math.log(0.5), eps * 2.0, eps / 2.0)
    return eps


__all__ = [
    "BatchedHMC",
    "ChainState",
    "adapted",
    "find_step_size",
    "kinetic_energy",
    "leapfrog",
    "log_step_change",
    "metropolis",
]
