"""Full-covariance linear Gaussian q(z | x) = N(z; V x, L L^T).

For factor analysis the exact posterior p(z|x) has exactly this form (mean linear in x,
covariance independent of x), so the family contains it and the ELBO can become tight
(Yang 2022, sec. 5.2). ``L`` is a learnable lower-triangular Cholesky factor with a positive
diagonal (softplus); sampling is reparameterised: z = V x + L eps.

References:
    Z. Yang (2022), arXiv:2208.07818, sec. 5.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from aevb.models.nets import guide_module_name, register


@dataclass(frozen=True)
class LinearGaussianConfig:
    x_dim: int = 3
    z_dim: int = 2
    #: name of the latent sample site this guide proposes
    site: str = "z"


class LinearGaussianEncoder(nn.Module):
    """q(z | x) = N(V x, L L^T), L lower-triangular."""

    name = "linear-gaussian"
    config_class = LinearGaussianConfig

    def __init__(self, config: LinearGaussianConfig | None = None):
        super().__init__()
        self.config = config or LinearGaussianConfig()
        c = self.config
        self.V = nn.Parameter(torch.empty(c.z_dim, c.x_dim))
        self.L_raw = nn.Parameter(torch.empty(c.z_dim, c.z_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """V ~ N(0, 1) elementwise and L = I."""
        nn.init.normal_(self.V)
        with torch.no_grad():
            # L = I at the start: softplus(d) = 1 on the diagonal, zeros below it
            self.L_raw.zero_()
            self.L_raw.diagonal().fill_(math.log(math.expm1(1.0)))

    @classmethod
    def for_model(cls, model) -> LinearGaussianEncoder:
        return cls(cls.config_class(x_dim=model.x_dim, z_dim=model.z_dim))

    @property
    def scale_tril(self) -> torch.Tensor:
        return torch.tril(self.L_raw, -1) + torch.diag(F.softplus(self.L_raw.diagonal()))

    def set_parameters(self, V: torch.Tensor, scale_tril: torch.Tensor) -> LinearGaussianEncoder:
        """Set q(z|x) = N(V x, L L^T) (e.g. to FA's exact posterior); returns self."""
        with torch.no_grad():
            self.V.copy_(V)
            diag = scale_tril.diagonal()
            self.L_raw.copy_(torch.tril(scale_tril, -1))
            self.L_raw.diagonal().copy_(diag + torch.log(-torch.expm1(-diag)))  # softplus^{-1}
        return self

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x) = N(V x, L L^T) with batch shape [B]."""
        return dist.MultivariateNormal(x @ self.V.T, scale_tril=self.scale_tril)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        register(guide_module_name(self.name), self)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.config.site, self.posterior(x))


#: the name before the encoders' naming was made uniform (``...Encoder``)
LinearGaussian = LinearGaussianEncoder
