"""Compiled objectives: Pyro's JIT ELBOs, made safe to use by default where they are correct.

Tracing the model and guide with ``torch.jit.trace`` removes Pyro's per-step Python work (the
poutine stack, distribution objects, ``pyro.module`` registration): on the 784-200-200-50 VAE
at batch 100 on 2 cores that is the difference between ~0.75 and ~0.9 of a hand-written
PyTorch step (``scripts/bench.py``). A trace records one execution, so it is only correct when

* the model and guide have static structure (no Python branching on data or on state that
  changes between steps, e.g. an annealed temperature read as a float), and
* every tensor shape it saw stays the same.

The first is the model's promise (the class attribute ``jit_compatible = True``, or
``jit=True`` in the fit settings for a user's model); the second is kept here: one compiled
objective per distinct argument signature (shapes and dtypes), so a last, smaller minibatch
gets its own trace instead of a wrong one.

Two Pyro issues are worked around:

* ``JitTraceMeanField_ELBO`` (pyro 1.9) checks for a cached function under one attribute name
  and stores it under another, so it re-traces on every call (several times slower than no
  JIT). :class:`CachedJitTraceMeanField_ELBO` stores it where it looks.
* ``torch.jit.trace`` warnings about Python values in the trace are expected here (batch sizes
  are the only ones, and they are part of the cache key), so they are silenced.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTraceMeanField_ELBO`` that compiles once instead of on every call."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return compiled(*args, **kwargs)


@contextlib.contextmanager
def quiet_trace():
    """Silence torch 2.13's deprecation warning for ``torch.jit.trace``, which Pyro's JIT
    (``pyro.ops.jit`` and the JIT ELBOs) relies on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated")
        yield


def signature(args: tuple) -> tuple:
    """The part of a step's arguments a trace depends on: tensor shapes, dtypes and devices
    (a trace made on one device does not run on another)."""
    return tuple((tuple(a.shape), a.dtype, a.device) if torch.is_tensor(a) else a for a in args)


class PerSignature:
    """An ELBO-like object that keeps one compiled ELBO per argument signature.

    :param factory: builds a fresh (JIT) ELBO; called once per new signature.
    """

    def __init__(self, factory: Callable[[], ELBO]):
        self.factory = factory
        self.compiled: dict[tuple, Any] = {}

    def _get(self, model, guide, args: tuple, kwargs: dict) -> Any:
        key = signature(args)
        if key not in self.compiled:
            elbo: Any = self.factory()
            # Compiling runs the model and guide twice more (Pyro's param capture, then the
            # trace). Do it on a forked random stream and drop its gradients, so a run draws
            # the same numbers whether or not it compiled at this step: a resumed run
            # compiles at a different step than the run it continues.
            with torch.random.fork_rng(devices=[]), quiet_trace():
                elbo.loss_and_grads(model, guide, *args, **kwargs)
            for _, p in pyro.get_param_store().named_parameters():
                p.grad = None
            self.compiled[key] = elbo
        return self.compiled[key]

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The compiled ``loss_and_grads`` for this signature (compiled on first sight)."""
        return self._get(model, guide, args, kwargs).loss_and_grads(model, guide, *args, **kwargs)


def jit_trace(k: int, nesting: int) -> ELBO:
    """Compiled SGVB estimator A (``Trace_ELBO``)."""
    return JitTrace_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, ignore_jit_warnings=True
    )


def jit_meanfield(k: int, nesting: int) -> ELBO:
    """Compiled SGVB estimator B (``TraceMeanField_ELBO``), cached correctly."""
    return CachedJitTraceMeanField_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, ignore_jit_warnings=True
    )
