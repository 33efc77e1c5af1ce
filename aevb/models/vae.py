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

from collections.abc import Mapping
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from aevb.models.base import DecoderModel
from aevb.models.nets import cat_broadcast, output_layer, register


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
VAE_PRESETS: Mapping[str, VAEConfig] = {
    "burda": VAEConfig(),
    "tutorial-cb": VAEConfig(
        z_dim=20, hidden=(500, 500), activation="relu", likelihood="continuous-bernoulli"
    ),
}


class VAE(DecoderModel):
    """p(x, z) = p(x | z) p(z) with a standard-normal prior and an MLP decoder."""

    name = "vae"
    config_class = VAEConfig
    presets = VAE_PRESETS
    default_guide = "gaussian"
    uses_labels = False
    #: static structure (no Python branching on data or state): SVI may compile the
    #: objective (aevb.inference.objectives.jit); subclasses inherit this promise (the CVAE
    #: keeps it)
    jit_compatible = True

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        self.build_decoder(self.decoder_input_dim)

    @property
    def decoder_input_dim(self) -> int:
        return self.config.z_dim

    def decode_given(self, z: torch.Tensor, y1h: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z, y): the decoder on [z, one-hot y], for the subclasses whose
        ``decoder_input_dim`` adds the label (CVAE, M2)."""
        return self.likelihood.pixels(self.decoder(cat_broadcast(z, y1h)))

    def prior(self, batch_shape: torch.Size, like: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = N(0, I)."""
        zeros = like.new_zeros(self.z_dim)
        return (
            dist.Normal(zeros, torch.ones_like(zeros))
            .expand([*batch_shape, self.z_dim])
            .to_event(1)
        )

    def forward(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        """The Pyro model. Observes ``x`` [B, x_dim]; with ``x=None`` samples ``num_samples``."""
        register(self.name, self)
        batch = self.batch_size(x, num_samples)
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
