"""A user's own model for ``aevb compare``: a VAE with a heavy-tailed Laplace prior.

    p(z) = prod_j Laplace(z_j; 0, 1)
    p(x | z) = prod_d Bernoulli(x_d; sigmoid(f_theta(z))_d)

Only the generative model is new; the guide is the package's Gaussian encoder
(``default_guide = "gaussian"``) and the objectives are the package's. Importing this module
registers the class, which is what ``modules = ["my_models"]`` in a grid config does.
"""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from aevb import models
from aevb.models.base import LatentVariableModel


@dataclass(frozen=True)
class LaplaceVAEConfig:
    x_dim: int = 784
    z_dim: int = 16
    hidden: tuple[int, ...] = (200,)
    activation: str = "tanh"


@models.register
class LaplaceVAE(LatentVariableModel):
    """p(x, z) = p(x | z) p(z) with a Laplace prior: sparser codes than N(0, I)."""

    name = "laplace-vae"
    config_class = LaplaceVAEConfig
    default_guide = "gaussian"

    def __init__(self, config: LaplaceVAEConfig | None = None):
        super().__init__()
        self.config = c = config or LaplaceVAEConfig()
        self.decoder = models.mlp(c.z_dim, c.hidden, c.x_dim, c.activation)

    def forward(self, x: torch.Tensor):
        pyro.module(self.name, self)
        zeros = x.new_zeros(self.z_dim)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Laplace(zeros, torch.ones_like(zeros)).to_event(1))
            logits = self.decoder(z)
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
