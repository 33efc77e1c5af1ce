"""The one multilayer-perceptron builder every model and guide uses.

Networks act on the last dimension only, so they broadcast over any leading dims (particles
from ``vectorize_particles=True``, datapoints, time steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from aevb.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
}


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "tanh"
) -> nn.Sequential:
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim``, ``activation`` between layers,
    none after the last (it returns logits, locations or unconstrained scales)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def output_layer(net: nn.Sequential) -> nn.Linear:
    """The final linear layer of a network built by :func:`mlp`."""
    last = net[-1]
    assert isinstance(last, nn.Linear)
    return last


def safe_logit(p: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)
