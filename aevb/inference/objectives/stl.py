"""Sticking the landing (STL): the reparameterised ELBO gradient without its score term.

For z = g_phi(eps) drawn from a reparameterised guide, the gradient of the ELBO sample
log p(x, z) - log q_phi(z|x) with respect to phi has two parts:

    d/dphi [...] = (d/dz [log p(x, z) - log q_phi(z|x)]) dz/dphi   -   (d/dphi log q_phi)(z)

The second part, the score of q at a fixed z, has expectation zero under q, yet its variance
does not vanish as q approaches the posterior. Roeder, Wu & Duvenaud (2017) drop it: log q is
evaluated with its parameters held fixed (``pyro.distributions.util.detach``), so only the
path through z carries phi's gradient. The loss value is unchanged, the gradient stays
unbiased, and at q = p(z|x) every draw's guide gradient is exactly zero (log p(x, z) - log q
is then the constant log p(x)), which ``tests/test_pathwise.py`` checks on factor analysis.

The substitution is exact only where each reparameterised guide site's distribution depends
on x and the parameters alone, not on another latent's value (detaching its parameters would
also cut that latent's path); :func:`check_pathwise` refuses other guides.

References:
    G. Roeder, Y. Wu, D. Duvenaud (2017), Sticking the Landing: Simple, Lower-Variance
    Gradient Estimators for Variational Inference, NeurIPS, arXiv:1703.09194.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.util import detach, scale_and_mask
from pyro.infer import JitTrace_ELBO, Trace_ELBO
from pyro.poutine.trace_struct import Trace

from aevb.errors import ObjectiveError


def reparameterised_latents(guide_trace: Trace) -> list[str]:
    """The guide's unobserved sample sites drawn by ``rsample``."""
    return [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and _fn(site).has_rsample
    ]


def _fn(site: Any) -> Any:
    return site["fn"]


def stick_the_landing_(guide_trace: Trace) -> None:
    """Recompute log q at every reparameterised site with the distribution's parameters
    detached, in place (values unchanged; the score term's gradient is gone)."""
    for name in reparameterised_latents(guide_trace):
        site = guide_trace.nodes[name]
        fn: Any = site["fn"]
        unscaled = detach(fn).log_prob(site["value"])
        scaled = scale_and_mask(unscaled, site["scale"], site["mask"])
        site["unscaled_log_prob"] = unscaled
        site["log_prob"] = scaled
        site["log_prob_sum"] = scaled.sum()
        site["score_parts"] = site["score_parts"]._replace(log_prob=scaled, entropy_term=scaled)


def check_pathwise(name: str, guide_trace: Trace) -> None:
    """Raise :class:`ObjectiveError` if a reparameterised guide site's distribution depends on
    an earlier latent's value (a hierarchical or recurrent guide), where detaching its
    parameters would bias ``name``'s gradient."""
    earlier: list[tuple[str, torch.Tensor]] = []
    for site_name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        value: Any = site["value"]
        upstream = [(n, v) for n, v in earlier if v.requires_grad]
        if _fn(site).has_rsample and upstream:
            log_q = _fn(site).log_prob(value.detach()).sum()
            if log_q.requires_grad:
                grads = torch.autograd.grad(
                    log_q, [v for _, v in upstream], allow_unused=True, retain_graph=True
                )
                for (other, _), g in zip(upstream, grads):
                    if g is not None:
                        raise ObjectiveError(
                            f"{name}: guide site {site_name!r} has a distribution that depends "
                            f"on the latent {other!r}; the {name} gradient (log q with its "
                            "parameters held fixed) is unbiased only for guides whose sites "
                            "depend on x and parameters alone. Use trace or iwae for this guide."
                        )
        earlier.append((site_name, value))


class _STL:
    """Mixin: the guide trace's log q recomputed by :func:`stick_the_landing_`."""

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)  # type: ignore[misc]
        stick_the_landing_(guide_trace)
        return model_trace, guide_trace


class TraceSTL_ELBO(_STL, Trace_ELBO):  # noqa: N801 (Pyro's naming)
    """``Trace_ELBO`` with the sticking-the-landing gradient (Roeder et al. 2017)."""


class JitTraceSTL_ELBO(_STL, JitTrace_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTrace_ELBO`` with the sticking-the-landing gradient."""


def make_stl(k: int, alpha: float | None, nesting: int) -> Trace_ELBO:
    """The STL objective with ``k`` particles (vectorised when k > 1)."""
    return TraceSTL_ELBO(k, max_plate_nesting=nesting, vectorize_particles=k > 1)


def jit_stl(k: int, nesting: int, alpha: float | None = None) -> Trace_ELBO:
    """The compiled STL objective."""
    return JitTraceSTL_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, ignore_jit_warnings=True
    )
