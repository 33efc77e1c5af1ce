"""The one multilayer-perceptron builder every model and guide uses, and how modules meet
Pyro's param store (:func:`register`, :class:`AdoptModules`).

Networks act on the last dimension only, so they broadcast over any leading dims (particles
from ``vectorize_particles=True``, datapoints, time steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.params import param_with_module_name
from pyro.poutine.messenger import Messenger
from torch import nn

from aevb.errors import ConfigError
from aevb.pyro_compat import replace_unconstrained, unconstrained_param
from aevb.registry import lookup

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
    act = lookup(ACTIVATIONS, activation, "activation")
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def xavier_(module: nn.Module) -> None:
    """Glorot-normal weights and zero biases for every linear layer in ``module``. The
    GMVAE needs it: with PyTorch's default initialisation its q(y | x) collapsed onto a
    single cluster on MNIST (the aevb-tutorial's GMVAE uses this scheme too)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def output_layer(net: nn.Sequential) -> nn.Linear:
    """The final linear layer of a network built by :func:`mlp`."""
    last = net[-1]
    assert isinstance(last, nn.Linear)
    return last


def safe_logit(p: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(p) with p clipped to [eps, 1 - eps]."""
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def diagonal_gaussian(loc: torch.Tensor, raw_scale: torch.Tensor, min_scale: float):
    """N(loc, diag(softplus(raw_scale) + min_scale)^2) over the last dimension: the one
    Gaussian head of every encoder and conditional prior (``min_scale`` from its config)."""
    return dist.Normal(loc, F.softplus(raw_scale) + min_scale).to_event(1)


#: the prefix of every guide's ``pyro.module`` name, so ``freeze=("encoder",)`` holds any
#: guide fixed (and ``freeze=(model.name,)`` the model)
GUIDE_PREFIX = "encoder"


def guide_module_name(name: str) -> str:
    """The naming convention of ``pyro.module`` names: a model registers its modules under
    its registry name (``vae``, ``fa``), a guide under ``encoder.<its registry name>``
    (``encoder.gaussian``, ``encoder.linear-gaussian``)."""
    return f"{GUIDE_PREFIX}.{name}"


def register(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)`` with the module as the source of truth.

    Plain ``pyro.module`` keeps whatever the param store already holds under ``name`` (a
    stale value from an earlier model of the same name wins over the module's weights, or
    the module computes with weights the optimiser never sees). Here a store entry that is
    not the module's own parameter is replaced by it, so a model or guide always runs with
    the weights it holds, and checkpoints restore through ``load_state_dict``.
    """
    store = pyro.get_param_store()
    for pname, p in module.named_parameters():
        full = param_with_module_name(name, pname)
        if full in store and unconstrained_param(full) is not p:
            store[full] = p  # unconstrained site: the store keeps this very tensor
    return pyro.module(name, module)


class AdoptModules(Messenger):
    """Within it, a ``pyro.module(name, net)`` call that finds the param store holding
    another tensor under one of ``net``'s parameter names -- a value restored from a
    checkpoint (``ParamStoreDict.set_state``) -- copies that value into ``net``'s own
    parameter and puts the parameter itself back in the store.

    Plain ``pyro.module`` leaves ``net`` as it is (Pyro asks for
    ``update_module_params=True`` when loading): a user's ``model(x)`` whose networks live
    in closures would then be scored with its initial weights and resumed with weights the
    optimiser never sees. The package's own models restore through ``load_state_dict`` and
    :func:`register` (the store already holds their parameters: nothing happens here).
    """

    def _pyro_post_param(self, msg) -> None:
        args = msg["args"]
        if len(args) < 2 or not isinstance(args[1], nn.Parameter) or msg["value"] is args[1]:
            return
        name, own = args[0], args[1]
        loaded = unconstrained_param(name)
        if loaded is None:
            return
        if loaded.shape != own.shape:
            raise ConfigError(
                f"the checkpoint's parameter {name!r} has shape {list(loaded.shape)}, the "
                f"network registered under that name now {list(own.shape)}: the program "
                "changed since the run was trained"
            )
        with torch.no_grad():
            own.copy_(loaded)
        replace_unconstrained(name, own)
        msg["value"] = own


def one_hot(y: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """Integer labels [B] -> float one-hot [B, num_classes] (dtype of ``like``)."""
    return torch.nn.functional.one_hot(y.long(), num_classes).to(like.dtype)


def partial_labels(
    y: torch.Tensor | None, batch: int, num_classes: int, like: torch.Tensor
) -> tuple[torch.BoolTensor, torch.Tensor]:
    """Labels that may be hidden (-1; ``y=None``: all hidden) -> (``labelled`` [B], the
    one-hot known labels [B, C], a placeholder class 0 where hidden): the ``obs_mask`` and
    ``obs`` of a partly observed label, shared by M2 and its guide."""
    if y is None:
        y = torch.full((batch,), -1, dtype=torch.long, device=like.device)
    labelled = cast(torch.BoolTensor, y >= 0)
    return labelled, one_hot(y.clamp(min=0), num_classes, like)


def enumeration_dims(value: torch.Tensor, event_dim: int) -> int:
    """How many leading batch dims of a sample ``value`` lie left of every enclosing plate:
    where Pyro's parallel enumeration puts the values of enumerated sites (the particle plate
    of ``vectorize_particles`` is a plate, so particles are not counted). 0 outside
    enumeration."""
    dims = [f.dim for f in pyro.poutine.runtime.get_plates() if f.dim is not None]
    return max(0, value.dim() - event_dim + min(dims)) if dims else 0


def plate_dim(name: str) -> int | None:
    """The batch dim (negative) of the enclosing plate ``name``; None outside it."""
    dims = [f.dim for f in pyro.poutine.runtime.get_plates() if f.name == name]
    return dims[0] if dims else None


def cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dim after broadcasting the leading (particle, enumeration,
    batch) dims, e.g. z [K, B, L] with a one-hot y [B, C] -> [K, B, L + C]."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], dim=-1)
