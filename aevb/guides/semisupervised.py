"""Semi-supervised guide q(y | x) q(z | x, y) for a model whose label is observed where known.

The networks are :class:`aevb.guides.MixtureEncoder`'s: a classifier q(y | x) =
Cat(softmax(g_phi(x))) and a Gaussian q(z | x, y) on [x, onehot(y)]. What differs is which y
q(z | x, y) reads: for a labelled datapoint its own label, for an unlabelled one the value the
guide proposes at the site ``y_unobserved`` -- the latent half of the model's
``pyro.sample("y", ..., obs_mask=labelled)`` (Pyro's naming), masked to the unlabelled points.
Under the ``enum`` objectives that site is enumerated, so U(x) sums over the C classes exactly
(Kingma et al. 2014, eq. 7).

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling (2014), arXiv:1406.5298, sec. 3.1.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from aevb.guides.mixture import MixtureEncoder, MixtureEncoderConfig
from aevb.models.nets import guide_module_name, one_hot, partial_labels, register


@dataclass(frozen=True)
class SemiSupervisedEncoderConfig(MixtureEncoderConfig):
    #: Kingma et al.'s M2 sizes (one hidden layer of 500 softplus units, 50 latent dims)
    z_dim: int = 50
    hidden: tuple[int, ...] = (500,)
    activation: str = "softplus"
    #: the model's label site: the guide proposes ``<label_site>_unobserved``
    label_site: str = "y"


class SemiSupervisedEncoder(MixtureEncoder):
    """q(y | x) at ``y_unobserved`` (unlabelled points only) and q(z | x, y) at ``z``, called as
    ``guide(x, y)`` with y = -1 where the label is unknown (``y=None``: none known)."""

    name = "semisupervised"
    config_class = SemiSupervisedEncoderConfig  # type: ignore[assignment]
    #: static structure (the mask is a tensor op): see :class:`aevb.models.m2.M2`
    jit_compatible = True  # type: ignore[assignment]

    def __init__(self, config: SemiSupervisedEncoderConfig | None = None):
        super().__init__(config or SemiSupervisedEncoderConfig())

    @classmethod
    def fields_from(cls, mc) -> dict:
        """The config fields an M2 config ``mc`` fixes (its classes as the clusters)."""
        names = ("x_dim", "z_dim", "activation")
        return {
            **{n: getattr(mc, n) for n in names},
            "num_clusters": mc.num_classes,
            "hidden": tuple(mc.hidden),
        }

    def class_probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x) as probabilities [B, C]: the classifier."""
        return self.cluster_probs(x)

    @torch.no_grad()
    def style(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E_q[z | x, y] for integer labels y [B]: the "style" of Kingma et al.'s Figure 1."""
        y1h = one_hot(y, self.config.num_clusters, x)
        return self.z_posterior(self.z_in_x(x), y1h).mean

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *args, **kwargs):
        register(guide_module_name(self.name), self)
        c: Any = self.config
        labelled, known = partial_labels(y, x.shape[0], c.num_clusters, x)
        logits = self.y_net(x)
        x_part = self.z_in_x(x)
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=cast(torch.BoolTensor, ~labelled)):
                guess = pyro.sample(
                    f"{c.label_site}_unobserved", dist.OneHotCategorical(logits=logits)
                )
            y1h = torch.where(labelled[:, None], known, guess)
            return pyro.sample("z", self.z_posterior(x_part, y1h))
