"""Samplers of p_theta(z | x) for Monte Carlo EM: Pyro's HMC and NUTS, and a batched HMC.

Every sampler works on the same target, the posterior of a model's local latents given a
minibatch, through :class:`Latents`: it finds the model's latent sites inside its data plate,
maps them to one unconstrained vector u_i in R^D per datapoint (z = T(u) with
``biject_to(support)``), and evaluates

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
H(u, r) = U(u) + |r|^2 / 2, accept with probability min(1, exp(H_old - H_new)).

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 5.
    R. M. Neal (2011), MCMC using Hamiltonian dynamics, Handbook of MCMC, ch. 5.
    M. D. Hoffman, A. Gelman (2014), The No-U-Turn Sampler, JMLR 15.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.mcmc import HMC, MCMC, NUTS
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import biject_to

from aevb.errors import ConfigError, ObjectiveError


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
    """

    def __init__(self, model, args: tuple):
        self.model = model
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
                    f"MCEM samples latents with HMC, which needs gradients; site {name!r} is "
                    "discrete. Marginalise it in the model or train with SVI instead."
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


class Sampler(Protocol):
    @property
    def name(self) -> str: ...

    def sample(
        self,
        latents: Latents,
        args: tuple,
        u: torch.Tensor,
        step_size: torch.Tensor,
        num_samples: int,
        warmup_steps: int = 0,
        adapt: bool = True,
    ) -> ChainState:
        """Run ``warmup_steps`` discarded transitions (adapting the step size if ``adapt``),
        then ``num_samples`` kept ones, from u [B, D]."""
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
    name: str = "batched-hmc"

    def transition(self, potential_fn, u, U, grad, eps):
        """One HMC transition per chain on ``potential_fn: u -> (U [B], dU/du)``; returns
        (u, U, grad, accept_prob, accepted)."""
        r = torch.randn_like(u)
        h0 = U + 0.5 * (r * r).sum(-1)
        e = (eps * (1.0 + self.jitter * (2.0 * torch.rand_like(eps) - 1.0))).unsqueeze(-1)
        u1, g1 = u, grad
        r1 = r - 0.5 * e * g1
        for step in range(self.num_steps):
            u1 = u1 + e * r1
            U1, g1 = potential_fn(u1)
            if step < self.num_steps - 1:
                r1 = r1 - e * g1
        r1 = r1 - 0.5 * e * g1
        h1 = U1 + 0.5 * (r1 * r1).sum(-1)
        log_a = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
        accept = torch.rand_like(log_a).log() < log_a
        keep = accept.unsqueeze(-1)
        u = torch.where(keep, u1, u)
        grad = torch.where(keep, g1, grad)
        U = torch.where(accept, U1, U)
        return u, U, grad, log_a.exp(), accept

    def sample(
        self, latents, args, u, step_size, num_samples, warmup_steps=0, adapt=True
    ) -> ChainState:
        u = u.detach().clone()
        eps = step_size.detach().clone().expand(u.shape[0]).clone()
        target = potential(latents, args)
        U, grad = target(u)
        samples, probs = [], []
        accepted = torch.zeros(u.shape[0])
        for t in range(warmup_steps + num_samples):
            u, U, grad, a, acc = self.transition(target, u, U, grad, eps)
            warm = t < warmup_steps
            if (warm and adapt) or (not warm and self.adapt_online):
                gain = self.adapt_gain / math.sqrt(t + 1) if warm else self.adapt_gain
                eps = eps * torch.exp(gain * (a - self.target_accept_prob))
            if not warm:
                samples.append(u)
                probs.append(a)
                accepted += acc.float()
        return ChainState(
            torch.stack(samples),
            u,
            eps,
            torch.stack(probs).mean(0),
            {"accept_rate": float(accepted.mean() / num_samples)},
        )


class _KeepsAcceptProb:
    """Keeps the run's mean Metropolis acceptance probability after ``MCMC`` has cleaned
    the kernel up (``cleanup()`` zeroes Pyro's own running mean)."""

    last_mean_accept_prob: float = float("nan")

    def sample(self, params):
        out = super().sample(params)  # type: ignore[misc]
        self.last_mean_accept_prob = float(self._mean_accept_prob)  # type: ignore[attr-defined]
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
    """Pyro's ``HMC`` (fixed leapfrog steps) or ``NUTS`` through ``pyro.infer.MCMC``.

    The minibatch is one joint chain on U(u) = sum_i U_i(u_i). With ``warmup_steps`` > 0
    Pyro adapts the (shared) step size by dual averaging; with none the given step size is
    used as is and, if ``adapt_online``, nudged towards the target acceptance after
    the call (log eps += gain * (accept - target)) so an MCEM loop keeps it tuned without
    paying for a warm-up on every E-step.
    """

    kind: str = "hmc"
    num_steps: int = 10
    target_accept_prob: float = 0.9
    max_tree_depth: int = 10
    adapt_gain: float = 0.5
    adapt_online: bool = False

    @property
    def name(self) -> str:
        return self.kind

    def kernel(self, potential_fn, step_size: float, adapt: bool):
        common = dict(
            potential_fn=potential_fn,
            step_size=step_size,
            adapt_step_size=adapt,
            adapt_mass_matrix=False,
            target_accept_prob=self.target_accept_prob,
        )
        if self.kind == "hmc":
            return FixedStepsHMC(num_steps=self.num_steps, **common)
        if self.kind == "nuts":
            return RecordingNUTS(max_tree_depth=self.max_tree_depth, **common)
        raise ConfigError(f"unknown Pyro kernel {self.kind!r}")

    def sample(
        self, latents, args, u, step_size, num_samples, warmup_steps=0, adapt=True
    ) -> ChainState:
        def potential_fn(params):
            return -latents.log_joint(params["u"], args).sum()

        eps = float(step_size.reshape(-1)[0])
        adapt = adapt and warmup_steps > 0
        kernel = self.kernel(potential_fn, eps, adapt=adapt)
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
        diag = mcmc._diagnostics[0]
        accept = kernel.last_mean_accept_prob  # mean Metropolis probability of the run
        eps_new = float(kernel.step_size)
        if self.adapt_online and not adapt:
            eps_new *= math.exp(self.adapt_gain * (accept - self.target_accept_prob))
        info = {
            "accept_rate": float(diag["acceptance rate"]),
            "divergences": len(diag["divergences"]),
        }
        if self.kind == "nuts":
            # one tree of 2^depth - 1 leapfrog steps at most; Pyro keeps no per-draw depth
            info["max_tree_depth"] = self.max_tree_depth
        return ChainState(
            samples,
            samples[-1],
            torch.tensor(eps_new),
            torch.full((u.shape[0],), accept),
            info,
        )


def find_step_size(latents: Latents, args: tuple, u: torch.Tensor, eps: torch.Tensor, iters=8):
    """Per-datapoint starting step sizes: double eps_i while one leapfrog step's acceptance
    probability exceeds 1/2, halve it while below (Hoffman & Gelman 2014, Alg. 4, one
    step per iteration)."""
    eps = eps.detach().clone().expand(u.shape[0]).clone()
    U, g = potential_and_grad(latents, u, args)
    for _ in range(iters):
        r = torch.randn_like(u)
        e = eps.unsqueeze(-1)
        r1 = r - 0.5 * e * g
        u1 = u + e * r1
        U1, g1 = potential_and_grad(latents, u1, args)
        r1 = r1 - 0.5 * e * g1
        log_a = torch.nan_to_num(
            U + 0.5 * (r * r).sum(-1) - U1 - 0.5 * (r1 * r1).sum(-1), nan=-math.inf
        )
        eps = torch.where(log_a > math.log(0.5), eps * 2.0, eps / 2.0)
    return eps


#: ``--sampler`` names: the E-step samplers of Monte Carlo EM
SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "hmc": lambda **kw: PyroKernelSampler("hmc", **kw),
    "nuts": lambda **kw: PyroKernelSampler("nuts", **kw),
    "batched-hmc": lambda **kw: BatchedHMC(**kw),
}


def make_sampler(name: str, **kwargs) -> Sampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](**kwargs)


__all__ = [
    "SAMPLERS",
    "BatchedHMC",
    "ChainState",
    "FixedStepsHMC",
    "Latents",
    "PyroKernelSampler",
    "RecordingNUTS",
    "find_step_size",
    "make_sampler",
    "potential",
    "potential_and_grad",
]
