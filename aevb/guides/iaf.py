"""Inverse autoregressive flow q(z | x): a diagonal Gaussian pushed through T IAF steps.

The encoder maps x to (mu, sigma, h). The base draw z_0 = mu + sigma * eps, eps ~ N(0, I),
is moved by T invertible steps, each an affine map whose shift and gate are computed by a
MADE network (Germain et al. 2015) from the previous z and the context h:

    [m_t, s_t] = MADE_t(z_{t-1}, h),   z_t = sigmoid(s_t) * z_{t-1} + (1 - sigmoid(s_t)) * m_t

m_t,i and s_t,i depend on z_{t-1,<i} only (in the step's variable order), so dz_t/dz_{t-1}
is triangular with diagonal sigmoid(s_t) and the density is exact and cheap:

    log q(z_T | x) = log N(z_0; mu, diag sigma^2) - sum_t sum_i log sigmoid(s_t,i)

This is the numerically stable update of Kingma et al. (2016, eq. 14); the steps alternate
the variable order (identity, reversed, ...) as the paper does between steps. Each step is
Pyro's ``ConditionalAffineAutoregressive(..., stable=True)`` on a
``ConditionalAutoRegressiveNN``. Sampling is parallel in the dimensions; scoring a z the
guide did not itself just draw inverts the steps one dimension at a time (z_dim network
passes per step), which objectives that re-score with detached parameters (``stl``,
``iwae-dreg``) and ``rws``'s wake-phi phase do. Scoring its own draws (``trace``, ``iwae``,
IS) reads the cached inverse.

With ``flow_steps = 0`` the guide is :class:`~aevb.guides.gaussian.GaussianEncoder` exactly
(the same network, distribution and draws), which the tests check.

References:
    D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling (2016),
    Improved Variational Inference with Inverse Autoregressive Flow, NeurIPS,
    arXiv:1606.04934.
    M. Germain, K. Gregor, I. Murray, H. Larochelle (2015), MADE: Masked Autoencoder for
    Distribution Estimation, ICML, arXiv:1502.03509.
    D. P. Kingma (2017), Variational Inference and Deep Learning: A New Synthesis, PhD
    thesis, University of Amsterdam, chapter 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from aevb.guides.gaussian import GaussianEncoder, GaussianEncoderConfig
from aevb.models.nets import ACTIVATIONS, diagonal_gaussian, mlp


@dataclass(frozen=True)
class IAFEncoderConfig(GaussianEncoderConfig):
    #: T, the number of IAF steps; 0 is the diagonal Gaussian encoder
    flow_steps: int = field(default=2, metadata={"min": 0})
    #: size of the context h the encoder passes to every step (Kingma et al. 2016 feed
    #: such an h to each step); 0 makes the steps depend on z alone
    flow_context: int = 50
    #: hidden layers of each step's MADE; each must be at least z_dim wide so every output
    #: can see all its inputs (for_model uses the encoder's widest layer, or 4 z_dim)
    flow_hidden: tuple[int, ...] = (200, 200)


class IAFEncoder(GaussianEncoder):
    """q(z | x) by inverse autoregressive flow: :class:`GaussianEncoder` followed by
    ``flow_steps`` conditional IAF steps, inside ``pyro.plate("data", B)``."""

    name = "iaf"
    config_class = IAFEncoderConfig
    #: the steps' cached inverses do not survive tracing: no compiled objective
    jit_compatible = False
    config: IAFEncoderConfig

    def __init__(self, config: IAFEncoderConfig | None = None):
        nn.Module.__init__(self)
        self.config = c = config or IAFEncoderConfig()
        context = c.flow_context if c.flow_steps else 0
        self.net = mlp(c.x_dim + c.context_dim, c.hidden, 2 * c.z_dim + context, c.activation)
        self.steps = nn.ModuleList(self._step(t, context) for t in range(c.flow_steps))

    def _step(self, t: int, context: int) -> ConditionalAffineAutoregressive:
        c = self.config
        order = torch.arange(c.z_dim)
        made = ConditionalAutoRegressiveNN(
            c.z_dim,
            context,
            list(c.flow_hidden),
            permutation=cast(torch.LongTensor, order.flip(0) if t % 2 else order),
            nonlinearity=ACTIVATIONS[c.activation](),
        )
        return ConditionalAffineAutoregressive(made, stable=True)

    @classmethod
    def for_model(cls, model) -> IAFEncoder:
        """The Gaussian encoder's sizes for ``model`` (see :meth:`GaussianEncoder.for_model`),
        with two MADE layers as wide as the encoder's widest (4 z_dim for a linear encoder, at
        least z_dim)."""
        base = GaussianEncoder.for_model(model).config
        width = max(base.hidden) if base.hidden else 4 * base.z_dim
        width = max(width, base.z_dim)
        return cls(
            cls.config_class(
                **{k: getattr(base, k) for k in base.__dataclass_fields__},
                flow_hidden=(width, width),
            )
        )

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x) (or q(z | x, y)): batch shape [B], event shape [z_dim]; a
        ``TransformedDistribution`` when ``flow_steps > 0``."""
        c = self.config
        out = self.encode(x, y)
        loc, raw = out[..., : c.z_dim], out[..., c.z_dim : 2 * c.z_dim]
        base = diagonal_gaussian(loc, raw, c.min_scale)
        if not c.flow_steps:
            return base
        h = out[..., 2 * c.z_dim :]
        steps = [cast(ConditionalAffineAutoregressive, step).condition(h) for step in self.steps]
        return dist.TransformedDistribution(base, steps)
