"""Variational autoencoder: the generative model p(x, z) = p(x | z) p(z) only.

    p(z) = N(z; 0, I)                      z in R^{z_dim}
    p(x | z) = prod_d Bernoulli(x_d; sigmoid(f_theta(z))_d)     (or a continuous Bernoulli)

``f_theta`` is an MLP from :func:`aevb.models.nets.mlp`. The approximate posterior q(z | x)
is a separate guide (:class:`aevb.guides.GaussianEncoder`) and the objective a separate ELBO
(:mod:`aevb.inference.objectives`).

References:
    Kingma & Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114.
    Rezende, Mohamed & Wierstra (2014), Stochastic Backpropagation and Approximate Inference
    in Deep Generative Models, arXiv:1401.4082.
    Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, arXiv:1509.00519.

Example:
    >>> import torch
    >>> from aevb import models, guides
    >>> model = models.VAE(models.VAEConfig(x_dim=6, z_dim=2, hidden=(8,)))
    >>> guide = guides.default_for(model)
    >>> model.generate(3).shape
    torch.Size([3, 6])
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb.models import likelihoods
from aevb.models.nets import mlp, output_layer, register, safe_logit


@dataclass(frozen=True)
class VAEConfig:
    #: 28 x 28 MNIST pixels, flattened.
    x_dim: int = 784
    #: 50 latent units, Burda et al.'s one-stochastic-layer architecture (Table 1).
    z_dim: int = 50
    #: two deterministic layers of 200 units each, as in Burda et al.
    hidden: tuple[int, ...] = (200, 200)
    #: tanh, as in Burda et al. (the aevb-tutorial uses relu).
    activation: str = "tanh"
    #: Bernoulli pixels on binarised MNIST; "continuous-bernoulli" for dequantised [0, 1] data.
    likelihood: str = "bernoulli"


#: Named configurations. "tutorial-cb" is the aevb-tutorial's 784-500-500-20 ReLU VAE with a
#: continuous Bernoulli likelihood on (x*255 + U)/256 data (Yang 2022, 02_vae).
VAE_PRESETS: dict[str, VAEConfig] = {
    "burda": VAEConfig(),
    "tutorial-cb": VAEConfig(
        z_dim=20, hidden=(500, 500), activation="relu", likelihood="continuous-bernoulli"
    ),
}


class VAE(nn.Module):
    """p(x, z) = p(x | z) p(z) with a standard-normal prior and an MLP decoder."""

    name = "vae"
    config_class = VAEConfig
    default_guide = "gaussian"
    uses_labels = False

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        self.likelihood = likelihoods.get(self.config.likelihood)
        c = self.config
        self.decoder = mlp(c.z_dim, c.hidden, c.x_dim, c.activation)

    @property
    def x_dim(self) -> int:
        return self.config.x_dim

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a clear :class:`~aevb.errors.DataError` if ``x`` is outside p(x|z)'s support."""
        from aevb.errors import DataError

        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise DataError(
                f"the VAE expects data of shape [N, {self.x_dim}], got {tuple(x.shape)}"
            )
        self.likelihood.check(x, self.config.likelihood)

    def init_from_data(self, x_mean: torch.Tensor) -> None:
        """Set the decoder's output bias to logit(mean pixel): the model starts at the
        independent-pixel fit instead of p = 1/2 (Burda et al.'s code does the same)."""
        with torch.no_grad():
            output_layer(self.decoder).bias.copy_(safe_logit(x_mean.reshape(-1)))

    def prior(self, batch_shape: torch.Size, like: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = N(0, I)."""
        zeros = like.new_zeros(self.z_dim)
        return (
            dist.Normal(zeros, torch.ones_like(zeros))
            .expand([*batch_shape, self.z_dim])
            .to_event(1)
        )

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z)."""
        return self.likelihood.make(self.decoder(z)).to_event(1)

    def forward(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        """The Pyro model. Observes ``x`` [B, x_dim]; with ``x=None`` samples ``num_samples``."""
        register(self.name, self)
        batch = x.shape[0] if x is not None else num_samples
        if batch is None:
            raise ValueError("give x or num_samples")
        anchor = output_layer(self.decoder).bias
        with pyro.plate("data", batch):
            z = pyro.sample("z", self.prior(torch.Size(), anchor))
            return pyro.sample("x", self.decode(z), obs=x)

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Means of p(x | z) for n draws z ~ p(z): images to look at, [n, x_dim]."""
        anchor = output_layer(self.decoder).bias
        z = self.prior(torch.Size([n]), anchor).sample()
        return self.decode(z).mean

    @torch.no_grad()
    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).mean
