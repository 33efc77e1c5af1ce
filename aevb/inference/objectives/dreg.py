"""Doubly reparameterised gradients (DReG) for the importance-weighted and Renyi bounds.

With k draws z_i = g_phi(eps_i) from a reparameterised guide and log weights
log w_i = log p(x, z_i) - log q_phi(z_i|x), the Renyi bound (alpha = 0: the IWAE bound) is

    L_alpha = 1/(1 - alpha) log (1/k) sum_i w_i^(1 - alpha),

and its gradient with respect to log w_i is the normalised weight
w~_i = w_i^(1-alpha) / sum_j w_j^(1-alpha). The total derivative of log w_i in phi has a path
part, (d log w_i / d z_i) dz_i/dphi, and a score part, -(d/dphi log q_phi)(z_i). The score part
is weighted by w~_i, which depends on z_i, so the reparameterisation identity
E_q[f(z) d/dphi log q_phi(z)] = E_q[(df/dz) dz/dphi] applies to it (Tucker, Lawson, Gu &
Maddison 2018). With dw~_i/dlog w_i = (1 - alpha) w~_i (1 - w~_i), it turns into a path term,
and the whole encoder gradient becomes

    dL/dphi = sum_i w~_i (alpha + (1 - alpha) w~_i) (d log w_i / d z_i) dz_i/dphi,

with log q's parameters held fixed inside log w_i. At alpha = 0 the coefficient is w~_i^2
(Tucker et al.'s IWAE-DReG); at alpha -> 1 (w~_i = 1/k) it is STL's 1/k
(:mod:`aevb.inference.objectives.stl`). The decoder's gradient, sum_i w~_i d/dtheta log p(x, z_i),
and the loss value are those of ``RenyiELBO`` on the same draws.

Implementation: the Renyi surrogate is built from log weights in which log q is evaluated with
its parameters detached (:func:`aevb.inference.objectives.stl.stick_the_landing_`), so phi reaches
the loss only through the latent values; a gradient hook on each value multiplies the
gradient arriving there by alpha + (1 - alpha) w~_i, datapoint by datapoint.

Rainforth et al. (2018) show that the IWAE encoder gradient's signal-to-noise ratio falls like
1/sqrt(k); DReG's does not (``scripts/gradient_variance.py`` measures both).

References:
    G. Tucker, D. Lawson, S. Gu, C. J. Maddison (2018), Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives, ICLR 2019, arXiv:1810.04152.
    T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh
    (2018), Tighter Variational Bounds are Not Necessarily Better, ICML, arXiv:1802.04537.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan

from aevb.inference.objectives.stl import reparameterised_latents, stick_the_landing_
from aevb.pyro_compat import particle_traces


def summed_log_prob(trace: Trace, sum_dims: set) -> torch.Tensor:
    """The sum of a trace's sample-site log probabilities, per particle and datapoint (the
    dependent plate dimensions ``sum_dims`` summed, as in ``RenyiELBO``)."""
    total: Any = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + torch_sum(site["log_prob"], sum_dims)
    return torch.as_tensor(total)


def log_weights(model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
    """log p(x, z) - log q(z|x) per particle and datapoint, from traces whose log
    probabilities are computed."""
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    return summed_log_prob(model_trace, sum_dims) - summed_log_prob(guide_trace, sum_dims)


def _scale_gradient(value: torch.Tensor, factor: torch.Tensor) -> None:
    """Multiply the gradient reaching ``value`` by ``factor`` (per particle and datapoint;
    broadcast over the event dimensions)."""
    if not value.requires_grad:
        return
    factor = factor.reshape(factor.shape + (1,) * (value.dim() - factor.dim()))
    value.register_hook(lambda grad: grad * factor)


class RenyiDReG_ELBO(RenyiELBO):  # noqa: N801 (Pyro's naming)
    """``RenyiELBO`` with the doubly reparameterised encoder gradient (Tucker et al. 2018).

    Same loss value and decoder gradient as ``RenyiELBO(alpha, k)`` on the same draws; the
    guide's gradient carries no score term. Every guide site must be reparameterised and
    depend on x and parameters alone (``check_compatible`` enforces both).

    Example::

        >>> from aevb import data, guides
        >>> from aevb.inference.objectives.dreg import RenyiDReG_ELBO
        >>> model = data.fa_truth(); guide = guides.default_for(model)
        >>> _, test = data.load("fa-synthetic")
        >>> loss = RenyiDReG_ELBO(0.0, 5, max_plate_nesting=1, vectorize_particles=True)
        >>> value = loss.loss_and_grads(model, guide, test.x[:10])  # the IWAE loss
    """

    def loss_and_grads(self, model, guide, *args, **kwargs):
        draws, particles = [], []
        for model_trace, guide_trace in particle_traces(self, model, guide, args, kwargs):
            stick_the_landing_(guide_trace)
            particles.append(log_weights(model_trace, guide_trace))
            latents = reparameterised_latents(guide_trace)
            draws.append([guide_trace.nodes[n]["value"] for n in latents])
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_w = particles[0] if vectorized else torch.stack(particles)
        scaled = (1.0 - self.alpha) * log_w
        normalised = torch.softmax(scaled.detach(), dim=0)
        factor = self.alpha + (1.0 - self.alpha) * normalised
        for i, values in enumerate(draws):
            for value in values:
                _scale_gradient(value, factor if vectorized else factor[i])
        log_mean = torch.logsumexp(scaled, dim=0) - math.log(self.num_particles)
        elbo = log_mean.sum() / (1.0 - self.alpha)
        if elbo.requires_grad:
            (-elbo).backward()
        loss = -float(elbo.detach())
        warn_if_nan(loss, "loss")
        return loss


def make_iwae_dreg(k: int, alpha: float | None, nesting: int) -> RenyiELBO:
    """The IWAE bound with DReG gradients, ``k`` particles (vectorised when k > 1)."""
    return RenyiDReG_ELBO(0.0, k, max_plate_nesting=nesting, vectorize_particles=k > 1)


def make_renyi_dreg(k: int, alpha: float | None, nesting: int) -> RenyiELBO:
    """The Renyi alpha bound with DReG gradients."""
    assert alpha is not None
    return RenyiDReG_ELBO(alpha, k, max_plate_nesting=nesting, vectorize_particles=k > 1)
