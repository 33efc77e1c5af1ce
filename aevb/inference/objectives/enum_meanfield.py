"""TraceEnum_ELBO with analytic KL terms for reparameterised sites ("enum" objective).

Pyro's :class:`~pyro.infer.TraceEnum_ELBO` sums the guide's discrete sites out exactly and
samples every other site. For a site z with a reparameterised guide distribution q(z | ...)
whose model distribution p(z | ...) has a registered ``kl_divergence``, this subclass replaces
the sampled pair

    log p(z | pa) - log q(z | pa')      (one draw z ~ q)

by its conditional expectation given the upstream values, -KL(q(z | pa') || p(z | pa)) — the
SGVB "estimator B" of Kingma & Welling (2013), as :class:`~pyro.infer.TraceMeanField_ELBO`
does for fully reparameterised guides. For the GMVAE this is

    ELBO(x) = sum_y q(y|x) [ log p(y) - log q(y|x)
                              + E_{q(z|x,y)} log p(x|z) - KL(q(z|x,y) || p(z|y)) ]

with the sum over the C values of y exact and only log p(x|z) sampled: the estimator the
aevb-tutorial calls "Estimator 1" (sec. 5.5). The substitution leaves the estimate unbiased
(a conditional expectation of an unbiased term) and lowers its variance; with one z draw per
y the sampled KL made the per-cluster terms noisy enough to slow down the clustering of q(y|x).

Sites without a registered KL, observed sites and non-reparameterised guide sites keep
Pyro's sampled terms unchanged.

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 2.3.
    Z. Yang (2022), A Tutorial on AEVB, arXiv:2208.07818, sec. 5.5.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceEnum_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.util import check_traceenum_requirements
from torch.distributions import kl_divergence


def analytic_kl_(model_trace: Trace, guide_trace: Trace) -> list[str]:
    """Replace log p(z) - log q(z) by -KL(q || p) in place, site by site where possible.

    Both traces must already carry log-probabilities (``compute_log_prob`` on the model,
    ``compute_score_parts`` on the guide). Returns the names of the sites changed.
    """
    changed = []
    for name, g in guide_trace.nodes.items():
        if g["type"] != "sample":
            continue
        q: Any = g["fn"]
        if not q.has_rsample:
            continue
        m = model_trace.nodes.get(name)
        if m is None or m["type"] != "sample" or m["is_observed"]:
            continue
        try:
            kl = kl_divergence(q, m["fn"])  # type: ignore[arg-type]
        except NotImplementedError:
            continue
        kl = kl.expand(torch.broadcast_shapes(kl.shape, m["unscaled_log_prob"].shape))
        m["unscaled_log_prob"] = -kl
        m["log_prob"] = scale_and_mask(-kl, m["scale"], m["mask"])
        zero = torch.zeros_like(g["score_parts"].log_prob)
        g["score_parts"] = g["score_parts"]._replace(log_prob=zero, entropy_term=zero)
        g["log_prob"] = g["unscaled_log_prob"] = zero
        changed.append(name)
    return changed


class TraceEnumMeanField_ELBO(TraceEnum_ELBO):
    """Exact enumeration of discrete guide sites, analytic KL for the reparameterised ones."""

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_traceenum_requirements(model_trace, guide_trace)
        analytic_kl_(model_trace, guide_trace)
        guide_trace.pack_tensors()
        model_trace.pack_tensors(guide_trace.plate_to_symbol)
        return model_trace, guide_trace
