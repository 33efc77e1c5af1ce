"""Reweighted wake-sleep (RWS), per datapoint and with minibatches.

For each datapoint x, draw z_1..z_k ~ q_phi(z|x) with no gradient through the draws, and let
log w_i = log p_theta(x, z_i) - log q_phi(z_i|x) and w~_i = w_i / sum_j w_j. RWS updates the
two sets of parameters on two different objectives (Bornschein & Bengio 2015):

    wake-theta:  grad_theta log (1/k) sum_i w_i  =  sum_i w~_i grad_theta log p_theta(x, z_i),

the IWAE bound's decoder gradient (a self-normalised importance-sampling estimate of Fisher's
identity, grad_theta log p(x) = E_{p(z|x)}[grad_theta log p(x, z)]), and

    wake-phi:  sum_i w~_i grad_phi log q_phi(z_i|x)  ~  E_{p(z|x)}[grad_phi log q_phi(z|x)],

an estimate of -grad_phi KL(p(z|x) || q_phi(z|x)) (biased for finite k, consistent as k
grows). Neither term differentiates through a draw, so discrete guide sites (a GMVAE's cluster
y) train under RWS, which no importance-weighted objective with alpha = 0 can do. The encoder
learns the inclusive KL, which keeps q broad (mass-covering), a good proposal. The sleep-phi
phase (fit q on (z, x) dreamt from the model) is left out: Le et al. (2019) found wake-phi
the better one.

The loss reported is the IWAE bound's, on the same draws. As with ``iwae``, every site must sit
in one unscaled data plate of the batch (``check_compatible``), so each datapoint gets its own
weights. Pyro's ``ReweightedWakeSleep`` does not support minibatches; this one does, through
that plate.

Implementation: a ``RenyiELBO(alpha=0)`` subclass whose guide runs under
:class:`DetachedDraws`, with the surrogate lse_i(log p - sg log q) + sum_i sg(w~_i) log q per
datapoint, so one backward pass gives both wake gradients.

References:
    J. Bornschein, Y. Bengio (2015), Reweighted Wake-Sleep, ICLR, arXiv:1406.2751.
    T. A. Le, A. R. Kosiorek, N. Siddharth, Y. W. Teh, F. Wood (2019), Revisiting Reweighted
    Wake-Sleep for Models with Stochastic Control Flow, UAI, arXiv:1805.10469.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import get_dependent_plate_dims
from pyro.poutine.messenger import Messenger
from pyro.util import warn_if_nan

from aevb.inference.objectives.dreg import summed_log_prob
from aevb.pyro_compat import particle_traces


class DetachedDraws(Messenger):
    """Draw every unobserved, non-enumerated sample site as usual, then detach the value: no
    gradient flows through a draw (the guide's log q keeps its gradient)."""

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or msg["infer"].get("enumerate"):
            return
        msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"]).detach()


class ReweightedWakeSleep_ELBO(RenyiELBO):  # noqa: N801 (Pyro's naming)
    """Wake-theta and wake-phi with ``num_particles`` importance samples per datapoint.

    Example::

        >>> from aevb import data, guides
        >>> from aevb.inference.objectives.rws import ReweightedWakeSleep_ELBO
        >>> model = data.fa_truth(); guide = guides.default_for(model)
        >>> _, test = data.load("fa-synthetic")
        >>> rws = ReweightedWakeSleep_ELBO(5, max_plate_nesting=1, vectorize_particles=True)
        >>> value = rws.loss_and_grads(model, guide, test.x[:10])  # the IWAE loss
    """

    def __init__(self, num_particles: int = 5, **kwargs):
        super().__init__(0.0, num_particles, **kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        return super()._get_trace(model, DetachedDraws()(guide), args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        log_p, log_q = [], []
        for model_trace, guide_trace in particle_traces(self, model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_p.append(summed_log_prob(model_trace, sum_dims))
            log_q.append(summed_log_prob(guide_trace, sum_dims))
        vectorized = self.vectorize_particles and self.num_particles > 1
        p, q = (log_p[0], log_q[0]) if vectorized else (torch.stack(log_p), torch.stack(log_q))
        log_w = p - q.detach()
        normalised = torch.softmax(log_w.detach(), dim=0)
        surrogate = torch.logsumexp(log_w, dim=0).sum() + (normalised * q).sum()
        if surrogate.requires_grad:
            (-surrogate).backward()
        bound = (torch.logsumexp(log_w.detach(), dim=0) - math.log(self.num_particles)).sum()
        loss = -float(bound)
        warn_if_nan(loss, "loss")
        return loss


def make_rws(k: int, alpha: float | None, nesting: int) -> RenyiELBO:
    """Reweighted wake-sleep (wake-theta, wake-phi) with ``k`` particles."""
    return ReweightedWakeSleep_ELBO(k, max_plate_nesting=nesting, vectorize_particles=k > 1)
