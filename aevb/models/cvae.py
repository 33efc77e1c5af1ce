"""Conditional VAE: p(x, z | y) = p(x | z, y) p(z | y) with a learned label-conditional prior.

    p(z | y) = N(z; mu_y, diag sigma_y^2)             one (mu, sigma) per class, learned
    p(x | z, y) = prod_d Bernoulli(x_d; sigmoid(f_theta([z, onehot(y)]))_d)   (or continuous)

The guide is the Gaussian encoder of the concatenated input, q(z | x, y)
(:class:`aevb.guides.GaussianEncoder` with ``context_dim = C``). The per-datapoint ELBO
bounds the conditional evidence log p(x | y), and importance sampling estimates it.

References:
    K. Sohn, H. Lee, X. Yan (2015), Learning Structured Output Representation using Deep
    Conditional Generative Models, NeurIPS.
    Z. Yang (2022), arXiv:2208.07818, sec. 5.4 (the tutorial's 784-500-500-20 ReLU CVAE on
    dequantised MNIST with a continuous Bernoulli likelihood).

Example:
    >>> import torch
    >>> from aevb import models
    >>> cvae = models.build("cvae", x_dim=6, z_dim=2, hidden=(8,))
    >>> cvae.generate_per_class(3).shape
    torch.Size([10, 3, 6])
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb.models.base import check_class_labels
from aevb.models.nets import diagonal_gaussian, one_hot, register
from aevb.models.vae import VAE, VAEConfig


@dataclass(frozen=True)
class CVAEConfig(VAEConfig):
    #: number of label classes (10 MNIST digits)
    num_classes: int = 10
    #: floor on every Gaussian scale (softplus(raw) + min_scale): keeps log-densities
    #: finite when a unit collapses
    min_scale: float = 1e-4


CVAE_PRESETS: dict[str, CVAEConfig] = {
    "burda": CVAEConfig(),
    # the aevb-tutorial's 03_cvae: 784-500-500-20 ReLU, continuous Bernoulli
    "tutorial-cb": CVAEConfig(
        z_dim=20, hidden=(500, 500), activation="relu", likelihood="continuous-bernoulli"
    ),
}


class CVAE(VAE):
    """p(x, z | y) = p(x | z, y) p(z | y); called as ``model(x, y)`` with integer labels y."""

    name = "cvae"
    config_class = CVAEConfig
    presets = CVAE_PRESETS
    uses_labels = True

    def __init__(self, config: CVAEConfig | None = None):
        config = config or CVAEConfig()
        super().__init__(config)
        c = config
        # p(z | y): a linear map of the one-hot label = a learned (mu, raw sigma) per class
        self.prior_net = nn.Linear(c.num_classes, 2 * c.z_dim)

    @property
    def decoder_input_dim(self) -> int:
        """The decoder reads [z, onehot(y)]."""
        return self.config.z_dim + self.config.num_classes  # type: ignore[attr-defined]

    @property
    def context_dim(self) -> int:
        """Size of the one-hot label the guide is conditioned on."""
        return self.config.num_classes  # type: ignore[attr-defined]

    def conditional_prior(self, y1h: torch.Tensor) -> dist.TorchDistribution:
        """p(z | y) for one-hot labels [..., C]."""
        loc, raw = self.prior_net(y1h).chunk(2, dim=-1)
        return diagonal_gaussian(loc, raw, self.config.min_scale)

    def check_labels(self, y: torch.Tensor) -> None:
        """Labels must be integers in 0..num_classes-1 (a clear error, not an index error)."""
        check_class_labels(y, self.context_dim, type(self).__name__)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ):
        register(self.name, self)
        if y is None:
            raise ValueError("the CVAE is conditioned on labels: call model(x, y)")
        y1h = one_hot(y, self.context_dim, self.prior_net.weight)
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", self.conditional_prior(y1h))
            return pyro.sample("x", self.decode_given(z, y1h), obs=x)

    @torch.no_grad()
    def generate_per_class(self, n: int) -> torch.Tensor:
        """Means of p(x | z, y) for n draws z ~ p(z | y) per class: [C, n, x_dim]."""
        y = torch.arange(self.context_dim, device=self.prior_net.weight.device)
        y = y.repeat_interleave(n)
        y1h = one_hot(y, self.context_dim, self.prior_net.weight)
        z = self.conditional_prior(y1h).sample()
        return self.decode_given(z, y1h).mean.reshape(self.context_dim, n, -1)

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """n samples with labels cycling through the classes."""
        return (
            self.generate_per_class(-(-n // self.context_dim))
            .transpose(0, 1)
            .reshape(-1, self.x_dim)[:n]
        )
