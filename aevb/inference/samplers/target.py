"""The target every E-step sampler works on: the posterior of a model's local latents given
a minibatch, one unconstrained row per datapoint (:class:`Latents`), and its potential energy
(:func:`potential_and_grad`).

:class:`Latents` finds the model's latent sites inside its data plate, maps them to one
unconstrained vector u_i in R^D per datapoint (z = T(u) with ``biject_to(support)``), and
evaluates::

    log p_theta(x_i, z_i) + log |det dT/du_i|        one value per datapoint i,

by running the model conditioned on z (``poutine.condition``) under ``poutine.trace``: Pyro's
own log-density of the conditioned model, not a second copy of it. The potential energy is
U_i(u_i) = -(that), and theta is held fixed (gradients are taken with respect to u only).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.ops.jit
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import biject_to

from aevb.errors import ObjectiveError
from aevb.inference.objectives.jit import quiet_trace, signature
from aevb.models.base import hooks


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
        model declares ``jit_compatible`` (static structure, see
        :mod:`aevb.inference.objectives.jit`).

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

    def guide_log_density(self, guide, u: torch.Tensor, args: tuple) -> torch.Tensor:
        """log q(T(u)|x) + log|det dT/du| per row [B]: the guide's density of u, by the guide
        conditioned on T(u) (Pyro's own log-density of each guide site, summed over the
        site's elements in the row's datapoint)."""
        values, ladj = self.unflatten(u)
        with poutine.block(hide_types=["sample"]), pyro.validation_enabled(False):
            conditioned = poutine.trace(poutine.condition(guide, data=values))
            trace = prune_subsample_sites(conditioned.get_trace(*args))
            trace.compute_log_prob()
        n, total = u.shape[0], ladj
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.size == n]
            if not frames:
                raise ObjectiveError(f"guide site {name!r} is outside the data plate")
            lp = site["log_prob"]
            total = total + lp.movedim(lp.dim() + int(frames[0].dim or 0), 0).reshape(n, -1).sum(-1)
        return total

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


__all__ = ["Latents", "potential", "potential_and_grad"]
