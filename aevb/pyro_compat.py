"""The Pyro internals aevb relies on, in one place (written against pyro-ppl 1.9).

Everything else in aevb uses Pyro's public API. Each function here wraps one name that is
not public, and :data:`PRIVATE_NAMES` lists them (with the hooks aevb's ELBO subclasses
override), so that ``tests/test_pyro_compat.py`` fails loudly, naming the attribute, if an
installed Pyro renames or removes one.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.infer import ELBO, RenyiELBO
from pyro.infer.mcmc import MCMC
from pyro.infer.trace_mean_field_elbo import JitTraceMeanField_ELBO
from pyro.params.param_store import ParamStoreDict

#: (owner, attribute): the non-public names aevb reads, calls or overrides
PRIVATE_NAMES: tuple[tuple[type, str], ...] = (
    (ParamStoreDict, "_params"),  # the unconstrained tensors, by name
    (ParamStoreDict, "_param_to_name"),  # the reverse map param_name() reads
    (MCMC, "_diagnostics"),  # a kernel's per-chain diagnostics after run()
    (ELBO, "_get_trace"),  # overridden by stl, enum-meanfield, semisupervised, rws
    (RenyiELBO, "_get_traces"),  # the particles' traces (dreg, rws, the compiled renyi)
    (JitTraceMeanField_ELBO, "differentiable_loss"),  # compiles into _differentiable_loss
)


def _store() -> ParamStoreDict:
    return pyro.get_param_store()


def unconstrained_params() -> list[tuple[str, torch.Tensor]]:
    """``(name, unconstrained tensor)`` for every parameter in the param store: the tensors
    the optimiser updates (a module's own ``nn.Parameter`` where ``pyro.module`` put it)."""
    return list(_store()._params.items())  # noqa: SLF001


def unconstrained_param(name: str) -> torch.Tensor | None:
    """The param store's unconstrained tensor for ``name`` (None if there is none)."""
    return _store()._params.get(name)  # noqa: SLF001


def replace_unconstrained(name: str, tensor: torch.Tensor) -> None:
    """Make ``tensor`` itself the param store's unconstrained value of ``name`` (e.g. a
    module's own parameter, or a copy moved to another device), dropping the old one from
    the reverse map."""
    store = _store()
    old = store._params.get(name)  # noqa: SLF001
    if old is not None:
        store._param_to_name.pop(old, None)  # noqa: SLF001
    store._params[name] = tensor  # noqa: SLF001
    store._param_to_name[tensor] = name  # noqa: SLF001


def mcmc_diagnostics(mcmc: MCMC, chain: int = 0) -> dict[str, Any]:
    """A finished run's kernel diagnostics for ``chain`` (acceptance rate, divergences):
    ``MCMC.diagnostics()`` would also compute R-hat and ESS, which need >= 4 draws."""
    return mcmc._diagnostics[chain]  # noqa: SLF001


def particle_traces(elbo: RenyiELBO, model, guide, args: tuple, kwargs: dict):
    """The (model trace, guide trace) pairs of ``elbo``'s particles (one pair when they are
    vectorised)."""
    return elbo._get_traces(model, guide, args, kwargs)  # noqa: SLF001


def compiled_loss(elbo: JitTraceMeanField_ELBO):
    """The compiled loss a ``JitTraceMeanField_ELBO`` made on its first call (None before)."""
    return getattr(elbo, "_differentiable_loss", None)
