"""Observation models p(x | z) parameterised by a decoder's logits.

Each entry says which data it accepts, so bad data fails before training with a clear error
rather than deep inside Pyro.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch

from aevb.errors import DataError
from aevb.registry import lookup


def _binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _unit(x: torch.Tensor) -> bool:
    return bool(((x >= 0) & (x <= 1)).all())


#: pixels per group in :func:`bernoulli_log_prob_sum`'s products: each factor lies in
#: [1/2, 1), so a group's product is at least 2^-64, far inside float32's range (2^-126), and
#: its rounding error is about 64 ulp (4e-6 relative, 4e-6 absolute after the log)
PRODUCT_GROUP = 64


def bernoulli_log_prob_sum(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_d log Bernoulli(x_d; sigmoid(l_d)) over the last dimension, in five passes.

    With ``log sigmoid(l) = min(l, 0) - log(1 + exp(-|l|))`` and ``min(l, 0) = (l - |l|) / 2``,
    the Bernoulli log-mass x l - softplus(l) = log sigmoid(l) + (x - 1) l gives::

        sum_d log p(x_d | l_d) = (x - 1/2) . l - (1/2) sum_d |l_d| + log prod_d sigmoid(|l_d|)

    ``(x - 1/2) . l`` is a contraction (no [..., D] product is materialised) and the
    logarithm is taken once per group of :data:`PRODUCT_GROUP` factors instead of once per
    pixel. The value agrees with ``Bernoulli(logits=l).log_prob(x).sum(-1)`` to float
    rounding (tests/test_fast_paths.py). It is used where no gradient is asked for (evaluation),
    since training differentiates the fused elementwise kernel instead.
    """
    a = logits.abs()
    total = torch.einsum("...d,...d->...", logits, x.to(logits.dtype) - 0.5) - 0.5 * a.sum(-1)
    a.sigmoid_()
    d = a.shape[-1]
    main = d - d % PRODUCT_GROUP
    if main:
        groups = a[..., :main].unflatten(-1, (main // PRODUCT_GROUP, PRODUCT_GROUP))
        total = total + groups.prod(-1).log_().sum(-1)
    if main < d:
        total = total + a[..., main:].log().sum(-1)
    return total


class BernoulliPixels(dist.Independent):
    """Independent Bernoulli pixels (event dimension 1) whose ``log_prob``, when no gradient
    flows through the logits, is :func:`bernoulli_log_prob_sum`: same distribution, same
    values to float rounding, about five times less elementwise work in evaluation."""

    def log_prob(self, value):
        base = self.base_dist
        if not isinstance(base, dist.Bernoulli) or self.reinterpreted_batch_ndims != 1:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        if torch.is_grad_enabled() and base.logits.requires_grad:
            return base.log_prob(value).sum(-1)  # Independent's sum; also where no rows are
        return bernoulli_log_prob_sum(base.logits, value)


def rows_log_prob(d: dist.TorchDistribution, value: torch.Tensor) -> torch.Tensor:
    """``d.log_prob(value)``, also for a value with no rows: torch's ``Independent`` sums its
    event dims by a reshape that fails on an empty tensor, so those layers are summed here."""
    if isinstance(d, BernoulliPixels) or not isinstance(d, dist.Independent):
        return d.log_prob(value)
    n = d.reinterpreted_batch_ndims
    return rows_log_prob(d.base_dist, value).sum(tuple(range(-n, 0)))


class SplitRows(dist.TorchDistribution):
    """A distribution over the rows of the rightmost plate (batch dim -1, ``size`` rows) whose
    rows ``rows[i]`` follow ``parts[i]``: part i has ``len(rows[i])`` rows on its batch dim -1
    and its other batch dims broadcast with the other parts'.

    Each part is scored (and sampled) on its own rows only and the results are placed: M2's
    labelled datapoints decoded once and its unlabelled ones once per enumerated class make
    one site ``x`` without a [C, B, D] tensor of logits being assembled
    (:meth:`aevb.models.m2.M2.decode_labelled_once`). The rows are index tensors, so a traced
    (compiled) objective follows each batch's split.

    As a distribution with that batch shape, every row of every leading copy is a draw of
    its own (a part's batch broadcast over the other parts' leading dims is expanded, as
    ``Distribution.expand`` does). The whole value is validated here (with validation on),
    not each part's rows: a part may have none, and torch's check of an empty value fails,
    so the parts' own checks are switched off (the parts are changed in place).
    """

    arg_constraints: dict = {}

    def __init__(self, parts: tuple, rows: tuple[torch.Tensor, ...], size: int):
        lead = torch.broadcast_shapes(*(p.batch_shape[:-1] for p in parts))
        self.parts, self.rows = parts, rows
        if not torch.jit.is_tracing():
            self._check(size)
        super().__init__(lead + (size,), parts[0].event_shape)
        for part in parts:  # checked whole in log_prob: torch's check refuses an empty part
            while part is not None:
                part._validate_args = False
                part = getattr(part, "base_dist", None)

    def _check(self, size: int) -> None:
        """Each row in exactly one part, each part's rows as many as its batch's last dim,
        one event shape."""
        counts = [int(i.numel()) for i in self.rows]
        widths = [p.batch_shape[-1] for p in self.parts]
        every = torch.cat([i.reshape(-1) for i in self.rows]).sort().values
        if counts != widths or not torch.equal(every.cpu(), torch.arange(size)):
            raise ValueError(
                f"SplitRows: the parts' rows must be 0..{size - 1}, each once, as many per "
                f"part as its batch's last dim; found {counts} rows for widths {widths}"
            )
        events = {tuple(p.event_shape) for p in self.parts}
        if len(events) > 1:
            raise ValueError(f"SplitRows: the parts have different event shapes {events}")

    @property
    def support(self):
        return self.parts[0].support

    def _place(self, pieces: list[torch.Tensor], dim: int) -> torch.Tensor:
        """Put each part's ``pieces[i]`` (its rows on ``dim``) into one tensor."""
        lead = torch.broadcast_shapes(*(t.shape[:dim] for t in pieces))
        tail = pieces[0].shape[dim:][1:]
        out = pieces[0].new_zeros(*lead, self.batch_shape[-1], *tail)
        for t, index in zip(pieces, self.rows):
            out = out.index_copy(dim, index, t.expand(*lead, *t.shape[dim:]))
        return out

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        dim = -1 - len(self.event_shape)
        lp = [rows_log_prob(p, value.index_select(dim, i)) for p, i in zip(self.parts, self.rows)]
        return self._place(lp, -1)

    @property
    def mean(self):
        return self._place([p.mean for p in self.parts], -1 - len(self.event_shape))

    def sample(self, sample_shape=torch.Size()):  # noqa: B008 (torch's signature)
        lead = self.batch_shape[:-1]
        draws = [
            p.expand(lead + p.batch_shape[-1:]).sample(torch.Size(sample_shape)) for p in self.parts
        ]
        return self._place(draws, -1 - len(self.event_shape))


@dataclass(frozen=True)
class Likelihood:
    """A decoder-logits -> distribution map, with the support it needs and its mean."""

    make: Callable[[torch.Tensor], dist.TorchDistribution]
    accepts: Callable[[torch.Tensor], bool]
    support: str
    #: the data transform this likelihood is meant for (see aevb.data.BINARIZATIONS)
    default_binarize: str
    #: the event wrapper of :meth:`pixels` (an Independent over the last dimension)
    event: type[dist.Independent] = field(default=dist.Independent)

    def pixels(self, logits: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) over the last dimension: the pixels independent given the logits."""
        return self.event(self.make(logits), 1)

    def check(self, x: torch.Tensor, name: str) -> None:
        """Raise a clear :class:`~aevb.errors.DataError` if ``x`` lies outside the support."""
        if not self.accepts(x):
            raise DataError(
                f"the {name} likelihood needs data in {self.support}; got values in "
                f"[{float(x.min()):g}, {float(x.max()):g}] (choose a binarisation: "
                "dynamic, threshold or continuous)"
            )


LIKELIHOODS: dict[str, Likelihood] = {
    # Bernoulli(sigmoid(logits)), the likelihood of Kingma & Welling and Burda et al.
    "bernoulli": Likelihood(
        lambda logits: dist.Bernoulli(logits=logits),
        _binary,
        "{0, 1}",
        "dynamic",
        event=BernoulliPixels,
    ),
    # Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1],
    # used by the aevb-tutorial on dequantised MNIST.
    "continuous-bernoulli": Likelihood(
        lambda logits: dist.ContinuousBernoulli(logits=logits), _unit, "[0, 1]", "continuous"
    ),
}


def get(name: str) -> Likelihood:
    """The likelihood registered as ``name`` (a key of :data:`LIKELIHOODS`)."""
    return lookup(LIKELIHOODS, name, "likelihood")
