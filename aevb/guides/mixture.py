"""Mixture guide q(y, z | x) = q(y | x) q(z | x, y) for models with a discrete cluster y.

q(y | x) = Cat(softmax(g_phi(x))) and q(z | x, y) = N(mu([x, y]), diag sigma([x, y])^2), two
MLPs as in the aevb-tutorial's GMVAE. The first layer of the z network acts on the
concatenation [x, y]; it is computed as W_x x + W_y y so that enumerating the C values of y
(``TraceEnum_ELBO``) repeats only the cheap W_y y term and the layers above it, not the
784-wide product. With ``relaxed=True`` and in training
mode y is a Gumbel-softmax sample (``RelaxedOneHotCategorical``) at the model's annealed
temperature; otherwise a ``OneHotCategorical``.

References:
    N. Dilokthanakul et al. (2016), arXiv:1611.02648. E. Jang et al. (2016), arXiv:1611.01144.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from aevb.models.gmvae import temperature
from aevb.models.nets import (
    ACTIVATIONS,
    diagonal_gaussian,
    guide_module_name,
    mlp,
    register,
    xavier_,
)


@dataclass(frozen=True)
class MixtureEncoderConfig:
    x_dim: int = 784
    z_dim: int = 32
    num_clusters: int = 10
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    relaxed: bool = False
    min_temperature: float = 0.5
    anneal_rate: float = 1e-4
    #: floor on every Gaussian scale (softplus(raw) + min_scale): keeps log-densities
    #: finite when a unit collapses
    min_scale: float = 1e-4


class MixtureEncoder(nn.Module):
    """q(y | x) q(z | x, y), sites ``y`` and ``z`` inside ``pyro.plate("data", B)``."""

    name = "mixture"
    config_class = MixtureEncoderConfig

    @property
    def jit_compatible(self) -> bool:  # type: ignore[override]
        """Static structure with a discrete y; the relaxed (Gumbel-softmax) variant reads an
        annealed temperature that a trace would freeze."""
        return not self.config.relaxed

    def __init__(self, config: MixtureEncoderConfig | None = None):
        super().__init__()
        self.config = c = config or MixtureEncoderConfig()
        if not c.hidden:
            raise ValueError("the mixture encoder needs at least one hidden layer")
        self.y_net = mlp(c.x_dim, c.hidden, c.num_clusters, c.activation)
        # first layer of q(z | x, y) on [x, y], split as W_x x + W_y y
        self.z_in_x = nn.Linear(c.x_dim, c.hidden[0])
        self.z_in_y = nn.Linear(c.num_clusters, c.hidden[0], bias=False)
        self.act = ACTIVATIONS[c.activation]()
        self.z_net = mlp(c.hidden[0], c.hidden[1:], 2 * c.z_dim, c.activation)
        self.step = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-normal weights and zero biases (the aevb-tutorial's initialisation)."""
        xavier_(self)  # see aevb.models.nets.xavier_: default init collapsed q(y | x)

    @classmethod
    def for_model(cls, model) -> MixtureEncoder:
        """The guide sized for ``model`` (:meth:`fields_from`)."""
        return cls(cls.config_class(**cls.fields_from(model.config)))

    @classmethod
    def fields_from(cls, mc) -> dict:
        """The config fields a GMVAE's config ``mc`` fixes: sizes, activation, relaxation."""
        names = ("x_dim", "z_dim", "num_clusters", "activation", "relaxed")
        return {
            **{n: getattr(mc, n) for n in names},
            "hidden": tuple(mc.hidden),
            "min_temperature": mc.min_temperature,
            "anneal_rate": mc.anneal_rate,
        }

    def set_step(self, step: int) -> None:
        """Called by the training loop before each step (drives the relaxed temperature)."""
        self.step = step

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x) as probabilities [B, C]."""
        return F.softmax(self.y_net(x), -1)

    def z_posterior(self, x_part: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, y) from ``x_part`` = W_x x + b (computed once per x) and one-hot y."""
        loc, raw = self.z_net(self.act(x_part + self.z_in_y(y))).chunk(2, -1)
        return diagonal_gaussian(loc, raw, self.config.min_scale)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        register(guide_module_name(self.name), self)
        logits = self.y_net(x)
        x_part = self.z_in_x(x)
        with pyro.plate("data", x.shape[0]):
            if self.config.relaxed and self.training:
                tau = logits.new_tensor(temperature(self.config, self.step))
                y = pyro.sample("y", dist.RelaxedOneHotCategorical(tau, logits=logits))
            else:
                y = pyro.sample("y", dist.OneHotCategorical(logits=logits))
            return pyro.sample("z", self.z_posterior(x_part, y))
