"""The semi-supervised objective: the ELBO plus a classification term on the labelled data.

For a model whose label y is observed on some datapoints and latent on the others
(``pyro.sample("y", p, obs=y, obs_mask=labelled)``, which Pyro splits into ``y_observed`` and
``y_unobserved``), the ELBO alone never trains the guide's q(y|x) on a labelled datapoint: its
y is observed, so q(y|x) does not appear in that datapoint's bound. Kingma et al. (2014,
eq. 9) add the classification loss explicitly:

    J^alpha = sum_{labelled} L(x, y) + sum_{unlabelled} U(x) + alpha * E_{labelled}[-log q(y|x)]

with alpha = 0.1 N (N datapoints). Per datapoint of a minibatch that is the ELBO terms plus

    -w * sum_{labelled i in the batch} log q(y_i | x_i),      w = 0.1 N / N_labelled

(w: the weight of one labelled datapoint; the minibatch estimate of alpha * E_labelled is
unbiased, since a batch of B holds B N_labelled / N labelled points on average).
``w`` is set from the training set when training starts (:meth:`bind_data`).

The ELBO part is :class:`~aevb.inference.objectives.enum_meanfield.TraceEnumMeanField_ELBO`:
the sum over the C classes of an unlabelled point is exact and KL(q(z|x,y) || p(z)) analytic,
as in Kingma et al. The classification term is read from the traces: for every model site
``<name>_observed`` whose partner ``<name>_unobserved`` the guide samples, log q at the observed
values, masked to the observed datapoints. No model writes it in.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling (2014), Semi-Supervised Learning with
    Deep Generative Models, NeurIPS, arXiv:1406.5298, eq. 9.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import pyro.ops.jit
import torch
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace

from aevb.errors import ObjectiveError
from aevb.inference.objectives.enum_meanfield import TraceEnumMeanField_ELBO
from aevb.settings import check_fields, setting

#: alpha / N of Kingma et al. (2014): alpha = 0.1 N
ALPHA_FRACTION = 0.1


@dataclass(frozen=True)
class SemiSupervisedConfig:
    """The settings of the ``semisupervised`` objective."""

    alpha_fraction: float = setting(
        ALPHA_FRACTION,
        minimum=0,
        help="alpha / N: the classification term's weight alpha as a fraction of the training "
        "set's size N (Kingma et al. 2014: 0.1); one labelled point weighs "
        "alpha_fraction * N / N_labelled",
    )

    def __post_init__(self):
        check_fields(self)


def labelled_log_q(model_trace: Trace, guide_trace: Trace) -> torch.Tensor | None:
    """sum over the observed datapoints of log q(y_i | x_i), q the guide's distribution at each
    ``<name>_unobserved`` site whose model partner ``<name>_observed`` holds the labels
    (averaged over any leading particle dimensions); None if no site pairs up."""
    total = None
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not name.endswith("_observed"):
            continue
        partner = guide_trace.nodes.get(name[: -len("_observed")] + "_unobserved")
        if partner is None or partner["type"] != "sample":
            continue
        q: Any = partner["fn"]
        lp = q.log_prob(site["value"])
        mask: Any = site["mask"]
        if mask is not None:
            lp = torch.where(mask, lp, lp.new_zeros(()))
        batch = lp.shape[-1] if lp.dim() else 1
        term = lp.sum() * (batch / max(1, lp.numel()))
        total = term if total is None else total + term
    return total


#: why the objective does not apply to a pair without a partially observed site
NO_LABEL_SITE = (
    "the model has no partially observed site (pyro.sample(name, ..., obs=..., obs_mask=...)) "
    "whose '<name>_unobserved' part the guide samples, so there is no classification term; "
    "use enum or enum-meanfield"
)


def missing_label_site(model_trace: Trace, guide_trace: Trace) -> str | None:
    """The objective's requirement, checked before training: None where the pair has a
    partially observed site the classification term can read."""
    return NO_LABEL_SITE if labelled_log_q(model_trace, guide_trace) is None else None


class SemiSupervised_ELBO(TraceEnumMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``enum-meanfield``'s loss minus ``weight * sum_labelled log q(y|x)`` per minibatch."""

    def __init__(self, *args, alpha_fraction: float = ALPHA_FRACTION, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha_fraction = alpha_fraction
        #: the weight w of one labelled datapoint (alpha_fraction until bind_data)
        self.weight = alpha_fraction
        self._terms: list[torch.Tensor] = []

    def bind_data(self, ds) -> None:
        """Set ``weight = alpha_fraction * N / N_labelled`` from the training set ``ds``."""
        labelled = ds.num_labelled
        self.weight = self.alpha_fraction * len(ds) / labelled if labelled else 0.0

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        term = labelled_log_q(model_trace, guide_trace)
        if term is None:
            raise ObjectiveError(f"semisupervised: {NO_LABEL_SITE}")
        self._terms.append(term)
        return model_trace, guide_trace

    def _with_term(self, run) -> tuple:
        """``run()`` (a loss of the parent class) and the classification term of its traces."""
        self._terms = []
        try:
            value = run()
            return value, torch.stack(self._terms).mean()
        finally:
            self._terms = []

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The enum-meanfield loss minus the weighted classification term, differentiable."""
        parent: Any = super()
        run = lambda: parent.differentiable_loss(model, guide, *args, **kwargs)  # noqa: E731
        loss, term = self._with_term(run)
        return loss - self.weight * term

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss (a float), its gradients accumulated in the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss, without gradients."""
        parent: Any = super()
        loss, term = self._with_term(lambda: parent.loss(model, guide, *args, **kwargs))
        return float(loss) - self.weight * float(term)


class JitSemiSupervised_ELBO(SemiSupervised_ELBO):  # noqa: N801 (Pyro's naming)
    """The compiled form: the whole loss (enum-meanfield's and the classification term) is
    one ``pyro.ops.jit.trace`` of the eager computation, the weight w an input of it (so
    :meth:`bind_data` after compiling still counts). One instance holds one trace: use it
    through :class:`~aevb.inference.objectives.jit.PerSignature` (one per batch shape)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("ignore_jit_warnings", True)
        super().__init__(*args, **kwargs)
        self._compiled: Any = None

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if kwargs:
            raise ValueError("the compiled semisupervised objective takes no keyword arguments")
        if self._compiled is None:
            weak = weakref.ref(self)

            @pyro.ops.jit.trace(
                ignore_warnings=self.ignore_jit_warnings, jit_options=self.jit_options
            )
            def compiled(weight, *args):
                elbo: Any = weak()
                eager = lambda: TraceEnumMeanField_ELBO.differentiable_loss(  # noqa: E731
                    elbo, model, guide, *args
                )
                loss, term = elbo._with_term(eager)
                return loss - weight * term

            self._compiled = compiled
        x = args[0]
        weight = torch.tensor(self.weight, dtype=x.dtype, device=x.device)
        return self._compiled(weight, *args)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss, without gradients (the compiled graph, run under ``no_grad``)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))


def jit_semisupervised(
    k: int,
    nesting: int,
    alpha: float | None = None,
    config: SemiSupervisedConfig | None = None,
) -> ELBO:
    """The registry's compiled constructor (:class:`JitSemiSupervised_ELBO`)."""
    fraction = (config or SemiSupervisedConfig()).alpha_fraction
    return JitSemiSupervised_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, alpha_fraction=fraction
    )


def make_semisupervised(
    k: int, alpha: float | None, nesting: int, config: SemiSupervisedConfig | None = None
) -> SemiSupervised_ELBO:
    """The registry's constructor (``alpha``, Renyi's, is not used)."""
    fraction = (config or SemiSupervisedConfig()).alpha_fraction
    return SemiSupervised_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, alpha_fraction=fraction
    )
