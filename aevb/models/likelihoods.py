"""Observation models p(x | z) parameterised by a decoder's logits.

Each entry says which data it accepts, so bad data fails before training with a clear error
rather than deep inside Pyro.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from aevb.errors import ConfigError, DataError


def _binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _unit(x: torch.Tensor) -> bool:
    return bool(((x >= 0) & (x <= 1)).all())


@dataclass(frozen=True)
class Likelihood:
    """A decoder-logits -> distribution map, with the support it needs and its mean."""

    make: Callable[[torch.Tensor], dist.TorchDistribution]
    accepts: Callable[[torch.Tensor], bool]
    support: str
    #: the data transform this likelihood is meant for (see aevb.data.BINARIZATIONS)
    default_binarize: str

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
        lambda logits: dist.Bernoulli(logits=logits), _binary, "{0, 1}", "dynamic"
    ),
    # Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1],
    # used by the aevb-tutorial on dequantised MNIST.
    "continuous-bernoulli": Likelihood(
        lambda logits: dist.ContinuousBernoulli(logits=logits), _unit, "[0, 1]", "continuous"
    ),
}


def get(name: str) -> Likelihood:
    """The likelihood registered as ``name`` (a key of :data:`LIKELIHOODS`)."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {name!r}; expected one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name]
