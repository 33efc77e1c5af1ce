"""Objectives: a registry from names to Pyro ELBO estimators. No objective lives in a model.

This package's ``__init__`` holds the registry (:data:`OBJECTIVES`) and the checks that refuse
a (model, guide) pair an objective would train wrongly; its modules hold aevb's own ELBOs
(:mod:`.stl`, :mod:`.dreg`, :mod:`.rws`, :mod:`.mcvae`, :mod:`.metflow`, :mod:`.enum_meanfield`,
:mod:`.semisupervised`) and
the compiled forms (:mod:`.jit`).

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
metflow     ``MetFlow_ELBO`` (aevb's own)                K Metropolis-Hastings steps with flow
                                                         proposals from z ~ q; the ELBO on the
                                                         extended space of the accept/reject
                                                         decisions (Thin et al. 2020)
==========  ===========================================  =====================================

``stl`` is ``Trace_ELBO`` with log q's parameters held fixed: the ELBO's gradient without
the score term of log q (Roeder et al. 2017; :mod:`aevb.inference.objectives.stl`).
``iwae-dreg`` and ``renyi-dreg`` are ``RenyiELBO`` with the doubly reparameterised encoder
gradient (Tucker et al. 2018; :mod:`aevb.inference.objectives.dreg`): same value and decoder
gradient, no score term. ``semisupervised`` is ``enum-meanfield`` plus Kingma et al.'s (2014)
classification term 0.1 N E_labelled[-log q(y|x)] for a model whose label is observed on some
datapoints (:mod:`aevb.inference.objectives.semisupervised`). ``rws`` is reweighted wake-sleep
(:mod:`aevb.inference.objectives.rws`): the IWAE bound's value and decoder gradient, the guide
trained on the inclusive KL(p||q); valid with discrete guide sites.
``l-mcvae`` and ``a-mcvae`` are the Monte Carlo VAEs of Thin et al. (2021)
(:mod:`aevb.inference.objectives.mcvae`): K annealed unadjusted Langevin steps (L-MCVAE, the
ULA kernel as its own reverse kernel) or MALA steps (A-MCVAE, the AIS weight with a score
term for the accept/reject decisions) from q's reparameterised draw, inside the weight of an
importance-weighted bound; continuous latents only. ``metflow`` (MetFlow/MetVAE, Thin et al.
2020; :mod:`aevb.inference.objectives.metflow`) moves q's draw by K Metropolis-Hastings steps
whose proposals are invertible flow maps (trained with the model), scored by the ELBO on the
extended space of the accept/reject decisions, with their score term.

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
from dataclasses import dataclass, field
from typing import Any

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
from aevb.inference.objectives.dreg import make_iwae_dreg, make_renyi_dreg
from aevb.inference.objectives.enum_meanfield import TraceEnumMeanField_ELBO
from aevb.inference.objectives.jit import (
    PerSignature,
    jit_enum,
    jit_meanfield,
    jit_renyi,
    jit_trace,
)
from aevb.inference.objectives.mcvae import (
    MCVAEConfig,
    continuous_latents,
    make_a_mcvae,
    make_l_mcvae,
)
from aevb.inference.objectives.metflow import MetFlowConfig, make_metflow
from aevb.inference.objectives.rws import make_rws
from aevb.inference.objectives.semisupervised import (
    SemiSupervisedConfig,
    jit_semisupervised,
    make_semisupervised,
    missing_label_site,
)
from aevb.inference.objectives.stl import check_pathwise, jit_stl, make_stl
from aevb.models.base import hooks
from aevb.registry import lookup, put
from aevb.settings import close_keys, declared


@dataclass(frozen=True)
class Objective:
    """A named ELBO family: ``make(num_particles, alpha, max_plate_nesting) -> ELBO``."""

    make: Callable[[int, float | None, int], ELBO]
    #: RenyiELBO family: valid per datapoint only with every site in one unscaled data plate
    needs_shared_plate: bool
    summary: str
    #: how the objective needs the guide prepared (enum: discrete sites enumerated)
    prepare_guide: Callable = lambda guide: guide  # noqa: E731
    #: the compiled form, ``make_jit(num_particles, max_plate_nesting, alpha) -> ELBO``, if
    #: any (:mod:`aevb.inference.objectives.jit`)
    make_jit: Callable[[int, int, float | None], ELBO] | None = None
    #: particles per datapoint when none are given (the library's and the CLI's default):
    #: 5 for the importance-weighted family (Burda et al.'s k = 5), 1 for the ELBOs
    default_particles: int = 1
    #: why a guide site without a reparameterised sampler (a discrete y, say) would train
    #: silently wrong under this objective, given alpha; None when it trains correctly
    refuses_score_function: Callable[[float | None], str | None] = lambda alpha: None  # noqa: E731
    #: the objective has an alpha (the Renyi family): it needs one, and no other does
    takes_alpha: bool = False
    #: the gradient holds log q's parameters fixed (STL): exact only for guides whose sites
    #: do not depend on other latents (:func:`aevb.inference.objectives.stl.check_pathwise`)
    pathwise: bool = False
    #: ``check(model_trace, guide_trace) -> why or None``: a requirement on the pair's
    #: traces (semisupervised: a partially observed site), checked before training starts
    check: Callable[[Any, Any], str | None] | None = None
    #: the dataclass of the objective's own settings (the run's ``objective_options``,
    #: declared with :func:`aevb.settings.setting`), whose instance ``make`` then takes as
    #: ``config=``; None: the objective has none
    options: type | None = None
    #: the objective's own defaults of those settings, over the dataclass's
    option_defaults: dict = field(default_factory=dict)


def _no_gradient_at_alpha_zero(alpha: float | None) -> str | None:
    if alpha is not None and alpha != 0:
        return None
    return (
        "RenyiELBO at alpha=0 has no score-function term, so the guide's parameters before "
        "this site would get zero gradient. Use enum (discrete sites summed exactly), trace, "
        "renyi with alpha != 0, or a relaxed (reparameterised) distribution"
    )


def _needs_reparameterised(alpha: float | None) -> str | None:
    return (
        "TraceMeanField_ELBO needs a fully reparameterised guide. Use enum or enum-meanfield "
        "(discrete sites summed exactly), trace, or a relaxed (reparameterised) distribution"
    )


def _dreg_needs_reparameterised(alpha: float | None) -> str | None:
    return (
        "DReG turns the score term into a path term through z, which a discrete or other "
        "non-reparameterised site does not have. Use enum, trace, renyi with alpha != 0, or a "
        "relaxed (reparameterised) distribution"
    )


def _mcvae_needs_reparameterised(alpha: float | None) -> str | None:
    return (
        "the Monte Carlo VAEs start their Langevin/MALA moves from a reparameterised draw of "
        "q(z|x) and differentiate through them; a discrete or other non-reparameterised site "
        "has no such draw. Use enum, trace or rws, or a relaxed (reparameterised) distribution"
    )


def _vectorize(k: int) -> bool:
    return k > 1


def _renyi(k: int, alpha: float | None, nesting: int) -> ELBO:
    check_alpha("renyi", alpha)
    assert alpha is not None
    return RenyiELBO(alpha, k, max_plate_nesting=nesting, vectorize_particles=_vectorize(k))


def _renyi_dreg(k: int, alpha: float | None, nesting: int) -> ELBO:
    check_alpha("renyi-dreg", alpha)
    return make_renyi_dreg(k, alpha, nesting)


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
        refuses_score_function=_needs_reparameterised,
    ),
    "iwae": Objective(
        lambda k, a, n: RenyiELBO(0.0, k, max_plate_nesting=n, vectorize_particles=_vectorize(k)),
        True,
        "importance-weighted bound with k particles (Burda et al.)",
        make_jit=jit_renyi,
        default_particles=5,
        refuses_score_function=lambda alpha: _no_gradient_at_alpha_zero(0.0),
    ),
    "renyi": Objective(
        _renyi,
        True,
        "Renyi alpha bound (Li & Turner); alpha=0 is iwae",
        make_jit=jit_renyi,
        default_particles=5,
        refuses_score_function=_no_gradient_at_alpha_zero,
        takes_alpha=True,
    ),
    "iwae-dreg": Objective(
        make_iwae_dreg,
        True,
        "iwae with doubly reparameterised encoder gradients (Tucker et al.)",
        default_particles=5,
        refuses_score_function=_dreg_needs_reparameterised,
        pathwise=True,
    ),
    "renyi-dreg": Objective(
        _renyi_dreg,
        True,
        "renyi with doubly reparameterised encoder gradients",
        default_particles=5,
        refuses_score_function=_dreg_needs_reparameterised,
        takes_alpha=True,
        pathwise=True,
    ),
    "rws": Objective(
        make_rws,
        True,
        "reweighted wake-sleep: iwae's decoder gradient, q trained on the inclusive KL",
        default_particles=5,
    ),
    "l-mcvae": Objective(
        make_l_mcvae,
        True,
        "Langevin Monte Carlo VAE: K=5 annealed ULA steps in the weight (Thin et al. 2021)",
        refuses_score_function=_mcvae_needs_reparameterised,
        check=continuous_latents,
        options=MCVAEConfig,
    ),
    "a-mcvae": Objective(
        make_a_mcvae,
        True,
        "AIS Monte Carlo VAE: K=3 annealed MALA steps, score term for the accept/reject "
        "decisions (Thin et al. 2021)",
        refuses_score_function=_mcvae_needs_reparameterised,
        check=continuous_latents,
        options=MCVAEConfig,
        option_defaults={"steps": 3},
    ),
    "metflow": Objective(
        make_metflow,
        True,
        "MetFlow: K=3 Metropolis-Hastings steps with invertible flow proposals, the ELBO on "
        "the extended space of the accept/reject decisions (Thin et al. 2020)",
        refuses_score_function=_mcvae_needs_reparameterised,
        check=continuous_latents,
        options=MetFlowConfig,
    ),
    "stl": Objective(
        make_stl,
        False,
        "ELBO, score term of log q dropped: sticking the landing (Roeder et al.)",
        make_jit=jit_stl,
        pathwise=True,
    ),
    "enum": Objective(
        lambda k, a, n: TraceEnum_ELBO(k, max_plate_nesting=n, vectorize_particles=_vectorize(k)),
        False,
        "ELBO with discrete latents summed out exactly (parallel enumeration)",
        # expand=True: enumerated one-hot values have the full batch shape, so a guide can
        # concatenate them with per-datapoint features (PYRO_NOTES, enumeration shapes)
        lambda guide: config_enumerate(guide, "parallel", expand=True),
        make_jit=jit_enum,
    ),
    "enum-meanfield": Objective(
        lambda k, a, n: TraceEnumMeanField_ELBO(
            k, max_plate_nesting=n, vectorize_particles=_vectorize(k)
        ),
        False,
        "enum, with analytic KL for reparameterised sites (estimator B)",
        lambda guide: config_enumerate(guide, "parallel", expand=True),
    ),
    "semisupervised": Objective(
        make_semisupervised,
        False,
        "enum-meanfield plus Kingma et al.'s classification term on labelled data (M2)",
        lambda guide: config_enumerate(guide, "parallel", expand=True),
        make_jit=jit_semisupervised,
        check=missing_label_site,
        options=SemiSupervisedConfig,
    ),
}


def register(name: str, objective: Objective) -> Objective:
    """Add ``objective`` under ``name``: SVI's and vi-mcmc's ``objective``, ``aevb train
    --objective`` and grids take it, and the compatibility checks read what it declares."""
    if not isinstance(objective, Objective):
        raise ConfigError(f"an objective is an Objective(make=..., ...), got {objective!r}")
    return put(OBJECTIVES, name, objective, "objective")


def _with_alpha() -> str:
    return ", ".join(n for n, o in OBJECTIVES.items() if o.takes_alpha)


def check_alpha(name: str, alpha: float | None, where: str = "alpha") -> None:
    """Refuse an alpha the objective ``name`` cannot use: the Renyi family needs one other
    than 1 (alpha = 1 is the ELBO), every other objective takes none. Unknown names pass
    (they fail where the objective is made)."""
    objective = OBJECTIVES.get(name)
    if objective is None:
        return
    if objective.takes_alpha:
        if alpha is None:
            raise ConfigError(f"the {name} objective needs --alpha (e.g. 0.5); alpha=0 is iwae")
        if alpha == 1:
            raise ConfigError("alpha=1 is the ordinary ELBO: use the trace objective")
    elif alpha is not None:
        raise ConfigError(
            f"{where}: alpha applies to the objectives {_with_alpha()} only; {name!r} takes "
            f"none (got {alpha})"
        )


def make_objective(
    name: str,
    num_particles: int = 1,
    alpha: float | None = None,
    max_plate_nesting: int = 1,
    options: dict | None = None,
) -> ELBO:
    """The Pyro ELBO instance for a registered objective name, with its own ``options``
    (:func:`objective_options`) where it has settings of its own."""
    objective = lookup(OBJECTIVES, name, "objective")
    if num_particles < 1:
        raise ConfigError(f"num_particles must be >= 1, got {num_particles}")
    config = objective_options(name, options or {})
    if config is None:
        return objective.make(num_particles, alpha, max_plate_nesting)
    return objective.make(num_particles, alpha, max_plate_nesting, config=config)  # type: ignore[call-arg]


def objective_options(name: str, options: dict, where: str = "objective_options"):
    """The objective's own settings: an instance of its ``options`` dataclass from its
    ``option_defaults`` and ``options`` (each name and value checked), or None for an
    objective without settings of its own (which then takes no options)."""
    objective = lookup(OBJECTIVES, name, "objective")
    if objective.options is None:
        if options:
            raise ConfigError(f"{where}: objective {name!r} has no options of its own")
        return None
    valid = declared(objective.options)
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"{where}: {name} has no option {key!r}{close_keys(key, valid)} (its "
                f"options: {', '.join(sorted(valid))})"
            )
    try:
        return objective.options(**{**objective.option_defaults, **options})
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def use_jit(name: str, model, guide, jit: bool | None) -> bool:
    """Whether to train with the objective's compiled form without checking it first.

    ``jit=None`` (the default) compiles when the objective has a compiled form and both model
    and guide declare ``jit_compatible = True`` (static structure, see
    :mod:`aevb.inference.objectives.jit`); ``True`` insists (an error if the objective has none);
    ``False`` never compiles. A pair that declares nothing is probed instead
    (:func:`should_probe_jit`).
    """
    has = name in OBJECTIVES and OBJECTIVES[name].make_jit is not None
    if jit is None:
        return has and all(hooks(f).jit_compatible for f in (model, guide))
    if jit and not has:
        compiled = sorted(k for k, o in OBJECTIVES.items() if o.make_jit is not None)
        raise ConfigError(f"objective {name!r} has no compiled form; jit works with {compiled}")
    return bool(jit)


def should_probe_jit(name: str, model, guide, jit: bool | None) -> bool:
    """Whether to try the compiled form and keep it only if it reproduces the eager loss and
    gradients on the first batches (:func:`aevb.inference.objectives.jit.compiled_matches_eager`).

    That is the default (``jit=None``) for a pair that makes no promise either way: a user's
    own Pyro functions or modules, with neither ``jit_compatible`` attribute set to False, and
    no per-step hook (``set_step``: an annealed value a trace would freeze). The package's
    own models all declare theirs.
    """
    if jit is not None or name not in OBJECTIVES or OBJECTIVES[name].make_jit is None:
        return False
    declared = [getattr(f, "jit_compatible", None) for f in (model, guide)]
    if False in declared or all(d is True for d in declared):
        return False
    return all(hooks(f).set_step is None for f in (model, guide))


def make_jit_objective(
    name: str,
    num_particles: int = 1,
    alpha: float | None = None,
    max_plate_nesting: int = 1,
    options: dict | None = None,
):
    """The compiled form of ``name``, one trace per argument signature (the arguments in
    :func:`make_objective`'s order, ``options`` included)."""
    make = OBJECTIVES[name].make_jit
    assert make is not None
    if OBJECTIVES[name].takes_alpha:
        check_alpha(name, alpha)
    else:
        alpha = None
    config = objective_options(name, options or {})
    if config is None:
        return PerSignature(lambda: make(num_particles, max_plate_nesting, alpha))
    return PerSignature(lambda: make(num_particles, max_plate_nesting, alpha, config=config))  # type: ignore[call-arg]


def check_compatible(name: str, model, guide, *args, alpha: float | None = None) -> None:
    """Raise :class:`ObjectiveError` if ``name``'s estimate would be silently wrong for this
    (model, guide) on the batch ``args``, decided from their traces (so a user's own model
    gets the same protection as the package's):

    * a guide site without a reparameterised sampler (``has_rsample`` false: a discrete y)
      under an objective that cannot train it (``Objective.refuses_score_function``: iwae,
      renyi at alpha=0, meanfield);
    * for the RenyiELBO family, a sample site of model or guide outside one common plate of
      the full batch size, or scaled or subsampled (see PYRO_NOTES: a global latent or
      ``poutine.scale`` turns the logsumexp into a joint, or invalid, bound).
    """
    if name not in OBJECTIVES:
        return
    objective = OBJECTIVES[name]
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args))
    why = objective.refuses_score_function(alpha)
    for site_name, site in guide_trace.nodes.items():
        fn: Any = site.get("fn")
        if why and site["type"] == "sample" and not site["is_observed"] and not fn.has_rsample:
            raise ObjectiveError(
                f"{name}: guide site {site_name!r} ({type(fn).__name__}) is not "
                f"reparameterised: {why}."
            )
    if objective.pathwise:
        check_pathwise(name, guide_trace)
    if not objective.needs_shared_plate and objective.check is None:
        return
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    if objective.check is not None:
        problem = objective.check(model_trace, guide_trace)
        if problem:
            raise ObjectiveError(f"{name}: {problem}")
    if not objective.needs_shared_plate:
        return
    _check_shared_plate(name, args[0].shape[0], model_trace, guide_trace)


def _check_shared_plate(name: str, batch: int, model_trace, guide_trace) -> None:
    """The RenyiELBO family's requirement: every sample site unscaled and inside one data
    plate over the batch's ``batch`` datapoints, shared by all sites."""
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
