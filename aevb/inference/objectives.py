"""Objectives: a registry from names to Pyro ELBO estimators. No objective lives in a model.

==========  ===========================================  =====================================
name        Pyro class                                   estimator
==========  ===========================================  =====================================
trace       ``Trace_ELBO``                               SGVB estimator A of Kingma & Welling:
                                                         log p(x,z) - log q(z|x) at z ~ q
meanfield   ``TraceMeanField_ELBO``                      SGVB estimator B: E_q log p(x|z)
                                                         sampled, KL(q||p) analytic
iwae        ``RenyiELBO(alpha=0)``                       the k-sample importance-weighted bound
                                                         log (1/k) sum_i p(x,z_i)/q(z_i|x)
                                                         (Burda et al. 2015)
renyi       ``RenyiELBO(alpha)``                         the Renyi alpha bound (Li & Turner 2016)
enum        ``TraceEnum_ELBO``                           the ELBO with the guide's discrete
                                                         sites summed out exactly (parallel
                                                         enumeration), the rest sampled
==========  ===========================================  =====================================

All use ``max_plate_nesting=1`` (the data plate) and vectorise particles when k > 1, so models
and guides must broadcast over a leading particle dimension.

RenyiELBO computes one bound per datapoint only when every sample site sits in the same
unsubsampled, unscaled data plate: otherwise its logsumexp runs over the whole batch (or
over scaled log-probabilities) and the value is no longer the per-datapoint IWAE bound.
:func:`check_compatible` refuses such models with a clear error.

References:
    Kingma & Welling (2013), arXiv:1312.6114. Burda, Grosse & Salakhutdinov (2015),
    arXiv:1509.00519. Li & Turner (2016), Renyi Divergence Variational Inference,
    arXiv:1602.02311.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.poutine as poutine
from pyro.infer import (
    ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from pyro.poutine.util import prune_subsample_sites

from aevb.errors import ConfigError, ObjectiveError
from aevb.inference.enum_meanfield import TraceEnumMeanField_ELBO
from aevb.inference.jit import PerSignature, jit_meanfield, jit_trace


@dataclass(frozen=True)
class Objective:
    """A named ELBO family: ``make(num_particles, alpha, max_plate_nesting) -> ELBO``."""

    make: Callable[[int, float | None, int], ELBO]
    #: RenyiELBO family: valid per datapoint only with every site in one unscaled data plate
    needs_shared_plate: bool
    summary: str
    #: how the objective needs the guide prepared (enum: discrete sites enumerated)
    prepare_guide: Callable = lambda guide: guide  # noqa: E731
    #: the compiled form, ``make_jit(num_particles, max_plate_nesting) -> ELBO``, if any
    #: (:mod:`aevb.inference.jit`)
    make_jit: Callable[[int, int], ELBO] | None = None


def _vectorize(k: int) -> bool:
    return k > 1


def _renyi(k: int, alpha: float | None, nesting: int) -> ELBO:
    if alpha is None:
        raise ConfigError("the renyi objective needs --alpha (e.g. 0.5); alpha=0 is iwae")
    if alpha == 1:
        raise ConfigError("alpha=1 is the ordinary ELBO: use the trace objective")
    return RenyiELBO(alpha, k, max_plate_nesting=nesting, vectorize_particles=_vectorize(k))


OBJECTIVES: dict[str, Objective] = {
    "trace": Objective(
        lambda k, a, n: Trace_ELBO(k, max_plate_nesting=n, vectorize_particles=_vectorize(k)),
        False,
        "ELBO, every term sampled (SGVB estimator A)",
        make_jit=jit_trace,
    ),
    "meanfield": Objective(
        lambda k, a, n: TraceMeanField_ELBO(
            k, max_plate_nesting=n, vectorize_particles=_vectorize(k)
        ),
        False,
        "ELBO with analytic KL(q||p) (SGVB estimator B)",
        make_jit=jit_meanfield,
    ),
    "iwae": Objective(
        lambda k, a, n: RenyiELBO(0.0, k, max_plate_nesting=n, vectorize_particles=_vectorize(k)),
        True,
        "importance-weighted bound with k particles (Burda et al.)",
    ),
    "renyi": Objective(_renyi, True, "Renyi alpha bound (Li & Turner); alpha=0 is iwae"),
    "enum": Objective(
        lambda k, a, n: TraceEnum_ELBO(k, max_plate_nesting=n, vectorize_particles=_vectorize(k)),
        False,
        "ELBO with discrete latents summed out exactly (parallel enumeration)",
        # expand=True: enumerated one-hot values have the full batch shape, so a guide can
        # concatenate them with per-datapoint features (PYRO_NOTES, enumeration shapes)
        lambda guide: config_enumerate(guide, "parallel", expand=True),
    ),
    "enum-meanfield": Objective(
        lambda k, a, n: TraceEnumMeanField_ELBO(
            k, max_plate_nesting=n, vectorize_particles=_vectorize(k)
        ),
        False,
        "enum, with analytic KL for reparameterised sites (estimator B)",
        lambda guide: config_enumerate(guide, "parallel", expand=True),
    ),
}


def make_objective(
    name: str, num_particles: int = 1, alpha: float | None = None, max_plate_nesting: int = 1
) -> ELBO:
    """The Pyro ELBO instance for a registered objective name."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    if num_particles < 1:
        raise ConfigError(f"num_particles must be >= 1, got {num_particles}")
    return OBJECTIVES[name].make(num_particles, alpha, max_plate_nesting)


def use_jit(name: str, model, guide, jit: bool | None) -> bool:
    """Whether to train with the objective's compiled form.

    ``jit=None`` (the default) compiles when the objective has a compiled form and both model
    and guide declare ``jit_compatible = True`` (static structure, see
    :mod:`aevb.inference.jit`); ``True`` insists (an error if the objective has none);
    ``False`` never compiles.
    """
    has = name in OBJECTIVES and OBJECTIVES[name].make_jit is not None
    if jit is None:
        return has and all(getattr(f, "jit_compatible", False) for f in (model, guide))
    if jit and not has:
        compiled = sorted(k for k, o in OBJECTIVES.items() if o.make_jit is not None)
        raise ConfigError(f"objective {name!r} has no compiled form; jit works with {compiled}")
    return bool(jit)


def make_jit_objective(name: str, num_particles: int = 1, max_plate_nesting: int = 1):
    """The compiled form of ``name``, one trace per argument signature."""
    make = OBJECTIVES[name].make_jit
    assert make is not None
    return PerSignature(lambda: make(num_particles, max_plate_nesting))


def check_compatible(name: str, model, guide, *args, alpha: float | None = None) -> None:
    """Raise :class:`ObjectiveError` if ``name``'s estimate would be silently wrong for this
    (model, guide) on the batch ``args``.

    For the RenyiELBO family every sample site of model and guide must lie inside one common
    plate of the full batch size, unscaled and not subsampled (see PYRO_NOTES: a global latent
    or ``poutine.scale`` turns the logsumexp into a joint, or invalid, bound).
    """
    check = getattr(model, "check_objective", None)
    if check is not None:  # model-specific limits, e.g. a discrete latent under iwae
        check(name, alpha)
    if name not in OBJECTIVES or not OBJECTIVES[name].needs_shared_plate:
        return
    batch = args[0].shape[0]
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    common: set[str] | None = None
    for trace, who in ((model_trace, "model"), (guide_trace, "guide")):
        for site_name, site in prune_subsample_sites(trace).nodes.items():
            if site["type"] != "sample":
                continue
            if site["scale"] != 1.0:
                raise ObjectiveError(
                    f"{name}: {who} site {site_name!r} has scale {site['scale']}; the "
                    "importance-weighted bound must be computed unscaled. Train on full "
                    "minibatches without subsampling or poutine.scale; aevb normalises the "
                    "loss per datapoint itself."
                )
            # subsampling shows up as scale != 1 above, so any vectorised plate here is full;
            # a data plate runs over the B datapoints of the batch (a plate over features,
            # say, leaves a latent shared by the whole batch)
            stack = site["cond_indep_stack"]
            plates = {f.name for f in stack if f.vectorized and f.size == batch}
            common = plates if common is None else common & plates
            if not common:
                others = sorted(f"{f.name}({f.size})" for f in stack if f.vectorized)
                raise ObjectiveError(
                    f"{name}: {who} site {site_name!r} is not inside a data plate of the "
                    f"batch's size {batch} shared by the other sites (its plates: "
                    f"{', '.join(others) or 'none'}). RenyiELBO's logsumexp would then run "
                    "over the whole minibatch: one joint bound, not one per datapoint. Put "
                    "every latent inside pyro.plate('data', B), or use trace/meanfield for "
                    "global latents."
                )
