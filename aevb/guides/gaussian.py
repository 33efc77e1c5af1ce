"""Diagonal Gaussian encoder q(z | x) = N(z; mu_phi(x), diag sigma_phi(x)^2).

One MLP (the shared :func:`aevb.models.nets.mlp`) maps x to ``2 * z_dim`` numbers: the
location and an unconstrained scale, made positive by a softplus. Sampling is
reparameterised (z = mu + sigma * eps, eps ~ N(0, I)), which is what makes the pathwise
gradient of the ELBO unbiased (Kingma & Welling 2013, sec. 2.4).

References:
    Kingma & Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb.models.nets import (
    cat_broadcast,
    diagonal_gaussian,
    guide_module_name,
    mlp,
    one_hot,
    register,
)


@dataclass(frozen=True)
class GaussianEncoderConfig:
    x_dim: int = 784
    z_dim: int = 50
    #: mirrors the decoder, as in Burda et al. (784-200-200-50)
    hidden: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    #: floor on sigma: keeps log q(z|x) finite when an encoder collapses a unit
    min_scale: float = 1e-4
    #: name of the latent sample site this guide proposes
    site: str = "z"
    #: size of a one-hot context (a label y) concatenated to x: q(z | x, y) for the CVAE
    context_dim: int = 0


class GaussianEncoder(nn.Module):
    """q(z | x): a reparameterised diagonal Gaussian, inside ``pyro.plate("data", B)``."""

    name = "gaussian"
    config_class = GaussianEncoderConfig
    #: static structure: SVI may compile the objective (aevb.inference.objectives.jit)
    jit_compatible = True

    def __init__(self, config: GaussianEncoderConfig | None = None):
        super().__init__()
        self.config = config or GaussianEncoderConfig()
        c = self.config
        self.net = mlp(c.x_dim + c.context_dim, c.hidden, 2 * c.z_dim, c.activation)

    @classmethod
    def for_model(cls, model) -> GaussianEncoder:
        """An encoder mirroring ``model``'s decoder sizes and activation; linear (no hidden
        layer) for models without an MLP, such as factor analysis."""
        mc = model.config
        return cls(
            cls.config_class(
                x_dim=model.x_dim,
                z_dim=model.z_dim,
                hidden=tuple(getattr(mc, "hidden", ())),
                activation=getattr(mc, "activation", "tanh"),
                context_dim=getattr(model, "context_dim", 0),
            )
        )

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output for x (and the one-hot label y where the encoder is
        conditioned on one): location and unconstrained scale first, then any extra
        outputs a subclass asks for (the IAF guide's context)."""
        if self.config.context_dim:
            if y is None:
                raise ValueError("this encoder is conditioned on a label y: call guide(x, y)")
            x = cat_broadcast(x, one_hot(y, self.config.context_dim, x))
        return self.net(x)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x) (or q(z | x, y)) with batch shape [B] and event shape [z_dim]."""
        loc, raw = self.encode(x, y).chunk(2, dim=-1)
        return diagonal_gaussian(loc, raw, self.config.min_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        register(guide_module_name(self.name), self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.config.site, self.posterior(x, y))
