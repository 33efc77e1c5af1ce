"""A user's own VAE, written the way Pyro's ``examples/vae/vae.py`` writes one: an
``nn.Module`` with ``model`` and ``guide`` methods, ``pyro.module`` registration, one
``pyro.plate("data")`` and no aevb classes. The architecture is the benchmark's yardstick's
(784-200-200-50, tanh, Bernoulli logits; ``torch_reference.ReferenceVAE``) so that
``scripts/bench.py`` can compare ``inference.fit`` on it with the same estimator by hand.

It declares nothing about its structure (no ``jit_compatible``), so ``inference.fit`` probes
it: the compiled objective is kept if it reproduces the eager loss and gradients on two
batches (:func:`aevb.inference.objectives.jit.compiled_matches_eager`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch_reference import mlp as _mlp  # the yardstick's layers (a user writes their own)


class UserVAE(nn.Module):
    def __init__(self, x_dim: int = 784, hidden=(200, 200), z_dim: int = 50):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = _mlp([x_dim, *hidden, 2 * z_dim])
        self.decoder = _mlp([z_dim, *reversed(hidden), x_dim])

    def model(self, x: torch.Tensor):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros(self.z_dim)
            z = pyro.sample("latent", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).chunk(2, -1)
            pyro.sample("latent", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))
