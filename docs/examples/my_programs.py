"""A user's own programs for ``aevb train MODULE:NAME`` and grids: a VAE with a Gaussian
likelihood for real-valued data, written twice.

* ``model`` / ``guide``: plain Pyro functions, their networks module globals registered with
  ``pyro.module`` (as Pyro's examples write them);
* ``GaussVAE``: the same model as a class like the package's (``name``, ``config_class``,
  ``default_guide``), so that its sizes are settings (``--z-dim``, ``--hidden``) and its
  guide is the package's Gaussian encoder. It is not registered: ``MODULE:NAME`` names it.

    p(z) = N(0, I),  p(x | z) = N(mu_theta(z), diag sigma_theta(z)^2)
"""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb.models.base import LatentVariableModel

D, L = 6, 2  # the plain functions' sizes: datapoints of 6 numbers, 2 latents
decoder = nn.Sequential(nn.Linear(L, 8), nn.Tanh(), nn.Linear(8, 2 * D))
encoder = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 2 * L))


def _scale(raw: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(raw) + 1e-3


def model(x):
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(L), x.new_ones(L)).to_event(1))
        loc, raw = decoder(z).chunk(2, -1)
        pyro.sample("x", dist.Normal(loc, _scale(raw)).to_event(1), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    loc, raw = encoder(x).chunk(2, -1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, _scale(raw)).to_event(1))


@dataclass(frozen=True)
class GaussVAEConfig:
    x_dim: int = 6  # set from the data (LatentVariableModel.config_from_data)
    z_dim: int = 2
    hidden: tuple[int, ...] = (8,)


class GaussVAE(LatentVariableModel):
    """The same p(x, z) as ``model``, with its sizes as settings."""

    name = "gauss-vae"
    config_class = GaussVAEConfig
    default_guide = "gaussian"  # the package's encoder, sized from this model's config

    def __init__(self, config: GaussVAEConfig | None = None):
        super().__init__()
        self.config = c = config or GaussVAEConfig()
        self.decoder = nn.Sequential(
            nn.Linear(c.z_dim, c.hidden[0]), nn.Tanh(), nn.Linear(c.hidden[0], 2 * c.x_dim)
        )

    def forward(self, x):
        pyro.module(self.name, self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            loc, raw = self.decoder(z).chunk(2, -1)
            pyro.sample("x", dist.Normal(loc, _scale(raw)).to_event(1), obs=x)
