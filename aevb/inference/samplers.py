"""Samplers of p_theta(z | x) for Monte Carlo EM: Pyro's HMC and NUTS, and a batched HMC.

Every sampler works on the same target, the posterior of a model's local latents given a
minibatch, through :class:`Latents`: it finds the model's latent sites inside its data plate,
maps them to one unconstrained vector u_i in R^D per datapoint (z = T(u) with
``biject_to(support)``), and evaluates::

    log p_theta(x_i, z_i) + log |det dT/du_i|        one value per datapoint i,

by running the model conditioned on z (``poutine.condition``) under ``poutine.trace``: Pyro's
own log-density of the conditioned model, not a second copy of it. The potential energy is
U_i(u_i) = -(that), and theta is held fixed (gradients are taken with respect to u only).

``hmc`` and ``nuts`` hand U(u) = sum_i U_i(u_i) to Pyro's kernels (``potential_fn``): the
minibatch is then **one joint chain** with one step size and one accept/reject (Pyro has no
independent vectorised chains, pyro#2539). ``batched-hmc`` runs B independent chains in one
vectorised leapfrog: per-datapoint momentum, Metropolis test, and step size adapted towards a
target acceptance, as Kingma & Welling (2013, sec. 5) describe for their MCEM baseline.

HMC follows Neal (2011): momentum r ~ N(0, I), ``num_steps`` leapfrog steps of size eps on
``H(u, r) = U(u) + |r|^2 / 2``, accept with probability min(1, exp(H_old - H_new)).

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 5.
    R. M. Neal (2011), MCMC using Hamiltonian dynamics, Handbook of MCMC, ch. 5.
    M. D. Hoffman, A. Gelman (2014), The No-U-Turn Sampler, JMLR 15.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import pyro
import pyro.ops.jit
import pyro.poutine as poutine
import torch
from pyro.infer.mcmc import HMC, MCMC, NUTS
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import biject_to

from aevb.errors import ConfigError, ObjectiveError
from aevb.inference.jit import quiet_trace, signature
from aevb.models.base import hooks
from aevb.pyro_compat import mcmc_diagnostics
from aevb.registry import lookup


@dataclass(frozen=True)
class _Site:
    name: str
    #: per-datapoint shape of the constrained value (the data-plate axis removed)
    shape: tuple[int, ...]
    #: where the data-plate axis sits in the site's value
    axis: int
    event_dim: int
    size: int
    transform: torch.distributions.Transform


class Latents:
    """The local latent sites of ``model(*args)``, one unconstrained row u_i per datapoint.

    :param model: a Pyro model whose latent sites all sit in one vectorised data plate of
        size B = ``args[0].shape[0]``; discrete latents are refused (HMC needs gradients).
    :param args: a prototype minibatch (only the structure is used).
    :param jit: evaluate the log-density through a ``torch.jit.trace`` of the conditioned
        model (one per argument shape), which removes Pyro's per-call Python work (~0.8 ms
        a call on a 784-200-200-50 decoder at B=20, most of a leapfrog step). None: when the
        model declares ``jit_compatible`` (static structure, see :mod:`aevb.inference.jit`).

    Example (one chain per datapoint on the exact FA posterior):
        >>> import torch
        >>> from aevb import data, models
        >>> from aevb.inference.samplers import BatchedHMC, Latents
        >>> _, test = data.load("fa-synthetic")
        >>> model, x = models.build("fa"), test.x[:4]
        >>> latents = Latents(model, (x,))
        >>> latents.dim                                  # z is 2-d per datapoint
        2
        >>> u0 = latents.prior_draw((x,))
        >>> state = BatchedHMC().sample(latents, (x,), u0, torch.tensor(0.3), num_samples=50,
        ...                             warmup_steps=50)
        >>> state.samples.shape                          # [draws, datapoints, D]
        torch.Size([50, 4, 2])
    """

    def __init__(self, model, args: tuple, jit: bool | None = None):
        self.model = model
        self.jit = hooks(model).jit_compatible if jit is None else jit
        self._compiled: dict[tuple, Any] = {}
        batch = args[0].shape[0]
        with torch.no_grad(), poutine.block():
            trace = prune_subsample_sites(poutine.trace(model).get_trace(*args))
        self.plate: str | None = None
        sites = []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            fn: Any = site["fn"]
            if fn.support.is_discrete:
                raise ObjectiveError(
                    f"HMC (MCEM's E-step, AIS) moves latents along gradients; site {name!r} "
                    "is discrete. Marginalise it in the model, or train with SVI and score "
                    "with importance sampling (--estimator is) instead."
                )
            frame = self._data_frame(name, site, batch)
            value: Any = site["value"]
            event_dim = fn.event_dim
            batch_ndim = value.dim() - event_dim
            axis = batch_ndim + frame.dim
            shape = tuple(value.movedim(axis, 0).shape[1:])
            transform = biject_to(fn.support)
            size = math.prod(transform.inv.forward_shape(shape)) if shape else 1
            sites.append(_Site(name, shape, axis, event_dim, size, transform))
        if not sites:
            raise ObjectiveError("the model has no latent sample sites to sample")
        self.sites = sites
        #: D, the length of one datapoint's unconstrained vector
        self.dim = sum(s.size for s in sites)

    def _data_frame(self, name: str, site: Any, batch: int):
        frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.size == batch]
        if self.plate is not None:
            frames = [f for f in frames if f.name == self.plate]
        if not frames:
            raise ObjectiveError(
                f"latent site {name!r} is not inside the data plate of size {batch}: MCEM "
                "keeps one chain per datapoint, so every latent must be local to a datapoint"
            )
        self.plate = frames[0].name
        return frames[0]

    def unflatten(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """u [B, D] -> ({site: constrained value in the model's layout}, log|det J| [B])."""
        values, ladj = {}, u.new_zeros(u.shape[0])
        start = 0
        for s in self.sites:
            part = u[:, start : start + s.size]
            start += s.size
            t = s.transform
            unc = part.reshape((u.shape[0],) + tuple(t.inv.forward_shape(s.shape)))
            z = t(unc)
            j = t.log_abs_det_jacobian(unc, z)
            # sum the Jacobian over the event dims the transform leaves per element
            ladj = ladj + j.reshape(u.shape[0], -1).sum(-1)
            values[s.name] = z.movedim(0, s.axis)
        return values, ladj

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`unflatten`: {site: value} -> u [B, D]."""
        parts = []
        for s in self.sites:
            z = values[s.name].movedim(s.axis, 0)
            parts.append(s.transform.inv(z).reshape(z.shape[0], -1))
        return torch.cat(parts, -1)

    def prior_draw(self, args: tuple) -> torch.Tensor:
        """u [B, D] from one run of the model (z ~ p(z)): the chains' starting point."""
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(self.model).get_trace(*args)
        return self.flatten({s.name: trace.nodes[s.name]["value"] for s in self.sites})

    def log_joint(self, u: torch.Tensor, args: tuple) -> torch.Tensor:
        """log p(x_i, z_i) + log|det J_i| per datapoint [B], differentiable in u."""
        prior, likelihood = self.log_parts(u, args)
        return prior + likelihood

    def log_parts(self, u: torch.Tensor, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(z_i) + log|det J_i|, log p(x_i | z_i)) per datapoint, each [B]: the latent
        sites' terms and the observed sites' terms (AIS anneals the second)."""
        if not self.jit:
            return self._log_parts(u, *args)
        # a graph traced under no_grad records in-place ops that autograd cannot replay, so
        # the grad mode is part of the key (AIS first scores its chains without gradients)
        key = (torch.is_grad_enabled(), signature((u, *args)))
        if key not in self._compiled:
            with quiet_trace():
                fn = pyro.ops.jit.trace(self._log_parts, ignore_warnings=True)
                out = fn(u, *args)
            self._compiled[key] = fn
            return out
        # the profiling executor's optimisations cost more than they save on these small
        # graphs (B=20: 0.46 vs 0.54 ms per potential and gradient; B=100: 1.01 vs 1.16)
        with torch.jit.optimized_execution(False):
            return self._compiled[key](u, *args)

    def traces_cleanly(self, u: torch.Tensor, args: tuple) -> bool:
        """Whether ``torch.jit.trace`` of the log-density at ``u`` takes no Python value
        from a tensor (a branch on a latent's value would: the trace would freeze that
        branch), i.e. raises no ``TracerWarning``. A float parameter of a distribution
        (``Normal(loc, 0.5)``) is a true constant and passes."""
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("error", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated")
            warnings.filterwarnings("ignore", "torch.tensor results are registered as constants")
            try:
                strict = pyro.ops.jit.trace(self._log_parts, ignore_warnings=False)
                strict(u.detach().requires_grad_(True), *args)
            except torch.jit.TracerWarning:
                return False
        return True

    def _log_parts(self, u: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
        values, prior = self.unflatten(u)
        likelihood = torch.zeros_like(prior)
        # sample sites stay private; param sites stay visible (the M-step collects them).
        # Validation is off: a diverging leapfrog trajectory reaches inf/NaN states, whose
        # (non-finite) potential rejects the proposal rather than raising.
        with poutine.block(hide_types=["sample"]), pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(*args)
            trace = prune_subsample_sites(trace)
            trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            frames = [f for f in site["cond_indep_stack"] if f.name == self.plate]
            lp = site["log_prob"]
            if not frames:
                raise ObjectiveError(f"site {name!r} is outside the data plate {self.plate!r}")
            lp = lp.movedim(lp.dim() + int(frames[0].dim or 0), 0).reshape(u.shape[0], -1).sum(-1)
            if site["is_observed"] and name not in values:
                likelihood = likelihood + lp
            else:
                prior = prior + lp
        return prior, likelihood


def potential_and_grad(latents: Latents, u: torch.Tensor, args: tuple, beta: float = 1.0):
    """U_i(u_i) = -log p(z_i) - log|J_i| - beta log p(x_i | z_i) [B] and dU/du [B, D];
    beta = 1 is the posterior, beta < 1 an annealed intermediate (AIS)."""
    u = u.detach().requires_grad_(True)
    with torch.enable_grad():
        prior, likelihood = latents.log_parts(u, args)
        U = -(prior + beta * likelihood) if beta != 1.0 else -(prior + likelihood)
        (grad,) = torch.autograd.grad(U.sum(), u)
    return U.detach(), grad


def potential(latents: Latents, args: tuple, beta: float = 1.0):
    """u -> (U(u) [B], dU/du [B, D]) for :func:`potential_and_grad` at fixed data and beta."""
    return lambda u: potential_and_grad(latents, u, args, beta)


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
    diagnostics: dict
    #: the diagonal of the inverse mass matrix per datapoint [B, D] (None: identity)
    inv_mass: torch.Tensor | None = None


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
    #: the Robbins-Monro gain of the online step-size update (:func:`log_step_change`)
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
        """See :class:`Sampler`; ``inv_mass`` [B, D] continues an adapted mass matrix."""
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
        return ChainState(
            torch.stack(samples),
            u,
            eps,
            torch.stack(probs).mean(0),
            # U [B] at the start and at the last state (vi-mcmc's refine_gain is their difference)
            {
                "accept_rate": float(accepted.mean() / num_samples),
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
        """Kernel-specific entries of :attr:`ChainState.diagnostics`."""
        return {}

    def initial_step_size(self, latents, args, u, step_size) -> torch.Tensor:
        """The given step size: Pyro adapts its shared one during warm-up."""
        return step_size

    def sample(
        self, latents, args, u, step_size, num_samples, warmup_steps=0, adapt=True, inv_mass=None
    ) -> ChainState:
        """See :class:`Sampler`; ``inv_mass`` [B, D] continues an adapted mass matrix."""

        def potential_fn(params):
            return -latents.log_joint(params["u"], args).sum()

        eps = float(step_size.reshape(-1)[0])
        adapt = adapt and warmup_steps > 0
        adapt_mass = adapt and self.adapt_mass and warmup_steps >= self.mass_warmup
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


#: ``--sampler`` names: the E-step samplers of Monte Carlo EM (each a dataclass of its own
#: settings)
SAMPLERS: dict[str, type] = {
    "hmc": PyroHMC,
    "nuts": PyroNUTS,
    "batched-hmc": BatchedHMC,
}


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
    import difflib

    if name not in SAMPLERS:
        return
    valid = sampler_options(name)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}: {name} has no option {key!r}{hint} (its options: "
                f"{', '.join(sorted(valid))})"
            )


def sampler_from_options(name: str, options, **overrides) -> Sampler:
    """The sampler ``name`` with the user's ``options`` (checked) and the caller's
    ``overrides`` (e.g. ``adapt_online=True``)."""
    sampler = lookup(SAMPLERS, name, "sampler")
    check_sampler_options(name, options)
    return sampler(**dict(options), **overrides)


__all__ = [
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
