"""Recurrent guide q(z_{1:T} | x_{1:T}) = prod_t q(z_t | x_t, h_{t-1}) for the VRNN.

The state h_{t-1} is the *model's* recurrence run on x_{<t} and the guide's own draws z_{<t}
(the standard VRNN guide of Chung et al. 2015), so the guide registers the model's modules
under the model's name (one set of parameters, never two names for one module). z_t is drawn
with ``rsample`` (reparameterised): the encoder gets the reconstruction gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb.models.nets import cat_broadcast, diagonal_gaussian, guide_module_name, mlp, register


@dataclass(frozen=True)
class RecurrentEncoderConfig:
    hidden: int = 128
    rnn_dim: int = 128
    z_dim: int = 16
    activation: str = "relu"
    #: floor on every Gaussian scale (softplus(raw) + min_scale): keeps log-densities
    #: finite when a unit collapses
    min_scale: float = 1e-4


class RecurrentEncoder(nn.Module):
    """q(z_t | x_t, h_{t-1}) = N(mu([phi_x(x_t), h_{t-1}]), diag sigma(...)^2)."""

    name = "recurrent"
    config_class = RecurrentEncoderConfig
    #: static structure, like its VRNN: SVI may compile the objective
    #: (aevb.inference.objectives.jit)
    jit_compatible = True

    def __init__(self, config: RecurrentEncoderConfig | None = None, model=None):
        super().__init__()
        self.config = c = config or RecurrentEncoderConfig()
        self.net = mlp(c.hidden + c.rnn_dim, (c.hidden,), 2 * c.z_dim, c.activation)
        self.bind(model)

    def bind(self, model) -> None:
        """Follow ``model``'s recurrence (held by reference, not as a submodule: the guide
        does not own, save or reset the model's weights)."""
        self.__dict__["model"] = model

    @classmethod
    def for_model(cls, model) -> RecurrentEncoder:
        mc = model.config
        config = cls.config_class(
            hidden=mc.hidden, rnn_dim=mc.rnn_dim, z_dim=mc.z_dim, activation=mc.activation
        )
        return cls(config, model)

    def step_posterior(self, fx: torch.Tensor, h: torch.Tensor) -> dist.TorchDistribution:
        """q(z_t | x_t, h_{t-1}) from the step's features and the model's state."""
        loc, raw = self.net(cat_broadcast(fx, h)).chunk(2, -1)
        return diagonal_gaussian(loc, raw, self.config.min_scale)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs):
        model = self.__dict__["model"]
        if model is None:
            raise ValueError("a RecurrentEncoder needs its VRNN: build it with for_model(model)")
        register(guide_module_name(self.name), self)
        register(model.name, model)  # the shared recurrence, under the model's own name
        seqs = model.sequences(x)
        state = model.initial_state(seqs.shape[0], x)
        shared = model.share_recurrence(x)
        with pyro.plate("data", seqs.shape[0]):
            for t in pyro.markov(range(seqs.shape[1])):
                m: Any = True if mask is None else mask[:, t].bool()
                fx = model.features_x(seqs[:, t])
                with pyro.poutine.mask(mask=m):
                    z = pyro.sample(f"z_{t}", self.step_posterior(fx, model.hidden(state)))
                state = model.advance(state, fx, z)
                shared.append((z, state))
