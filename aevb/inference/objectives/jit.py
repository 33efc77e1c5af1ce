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

Pyro ships compiled forms of ``Trace_ELBO``, ``TraceMeanField_ELBO`` and ``TraceEnum_ELBO``
only; the Renyi family (``iwae``, ``renyi``) is compiled here (:class:`JitRenyiELBO`), from the
same traces and to the same loss and gradients as Pyro's eager ``RenyiELBO``
(``tests/test_fast_paths.py`` checks both in float64 under one seed; in float32 the gradients
agree to ~3e-7 relative).

Two Pyro issues are worked around:

* ``JitTraceMeanField_ELBO`` (pyro 1.9) checks for a cached function under one attribute name
  and stores it under another, so it re-traces on every call (several times slower than no
  JIT). :class:`CachedJitTraceMeanField_ELBO` stores it where it looks.
* ``torch.jit.trace`` warnings about Python values in the trace are expected here (batch sizes
  are the only ones, and they are part of the cache key), so they are silenced.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pyro
import pyro.ops.jit
import torch
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
)
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum

from aevb.pyro_compat import compiled_loss, particle_traces


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """``JitTraceMeanField_ELBO`` that compiles once instead of on every call."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = compiled_loss(self)
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


#: run the compiled objectives with the profiling executor's optimisations. Off: on the VRNN's
#: graph (28 unrolled rows) they cost about 10 s over a run's first steps (one epoch on 6000
#: images: 15.0 s with them, 5.0 s without, the same ELBO) and gained nothing after; the
#: VAE, CVAE and GMVAE ran at the same speed either way (``python scripts/jit_executor.py``
#: measures both settings)
OPTIMIZED_EXECUTION = False


class PerSignature:
    """An ELBO-like object that keeps one compiled ELBO per argument signature.

    :param factory: builds a fresh (JIT) ELBO; called once per new signature.
    """

    def __init__(self, factory: Callable[[], ELBO]):
        self.factory = factory
        self.compiled: dict[tuple, Any] = {}
        #: the training set given to :meth:`bind_data` (passed on to every compiled ELBO)
        self.data: Any = None

    def bind_data(self, ds) -> None:
        """Pass the training set to every compiled ELBO that takes it (semisupervised's
        weight of a labelled point), now and as each is made."""
        self.data = ds
        for elbo in self.compiled.values():
            if hasattr(elbo, "bind_data"):
                elbo.bind_data(ds)

    def _get(self, model, guide, args: tuple, kwargs: dict) -> Any:
        key = signature(args)
        if key not in self.compiled:
            elbo: Any = self.factory()
            if self.data is not None and hasattr(elbo, "bind_data"):
                elbo.bind_data(self.data)
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
        """The compiled ``loss_and_grads`` for this signature (compiled on first sight).

        The graphs run with the profiling executor's optimisations only where
        :data:`OPTIMIZED_EXECUTION` says so (see there)."""
        with torch.jit.optimized_execution(OPTIMIZED_EXECUTION):
            elbo = self._get(model, guide, args, kwargs)
            return elbo.loss_and_grads(model, guide, *args, **kwargs)


def jit_trace(k: int, nesting: int, alpha: float | None = None) -> ELBO:
    """Compiled SGVB estimator A (``Trace_ELBO``)."""
    return JitTrace_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, ignore_jit_warnings=True
    )


def jit_meanfield(k: int, nesting: int, alpha: float | None = None) -> ELBO:
    """Compiled SGVB estimator B (``TraceMeanField_ELBO``), cached correctly."""
    return CachedJitTraceMeanField_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, ignore_jit_warnings=True
    )


def jit_enum(k: int, nesting: int, alpha: float | None = None) -> ELBO:
    """Compiled ``TraceEnum_ELBO`` (discrete guide sites summed out by parallel enumeration):
    Pyro's ``JitTraceEnum_ELBO``, for the GMVAE with a discrete y (about 10% per step)."""
    return JitTraceEnum_ELBO(
        k, max_plate_nesting=nesting, vectorize_particles=k > 1, ignore_jit_warnings=True
    )


def renyi_losses(
    traces, alpha: float, num_particles: int, vectorized: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Renyi bound's loss and its gradient surrogate from (model, guide) trace pairs: one
    vectorised pair of k particles, or k pairs of one (Li & Turner 2016, eq. 13; alpha = 0 is
    Burda et al.'s IWAE bound).

    Per particle and datapoint, log w = sum over model sites of log p - sum over guide sites of
    log q (summed over every dimension but the data plate's), and

        L_alpha = 1/(1 - alpha) * log (1/k) sum_k w_k^(1 - alpha)     (per datapoint, summed)

    Its reparameterised gradient is sum_k w~_k grad log w_k with self-normalised weights
    w~_k proportional to w_k^(1 - alpha) (held fixed), so the surrogate is
    (1/k) sum_k (k w~_k) log w_k; a non-reparameterised guide site adds
    alpha / (1 - alpha) * log q to the surrogate, as Pyro's ``RenyiELBO`` does. Returns
    ``(-L_alpha, -surrogate)`` as tensors (a traced function can return nothing else)."""
    elbos, surrogates = [], []
    for model_trace, guide_trace in traces:
        dims = get_dependent_plate_dims(model_trace.nodes.values())
        elbo: Any = 0.0
        surrogate: Any = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                term = torch_sum(site["log_prob"], dims)
                elbo, surrogate = elbo + term.detach(), surrogate + term
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            _, score, entropy = site["score_parts"]
            term = torch_sum(site["log_prob"], dims)
            elbo = elbo - term.detach()
            if not is_identically_zero(entropy):
                if not is_identically_zero(score):  # Pyro's RenyiELBO refuses these too
                    raise NotImplementedError(f"guide site {name!r}: partly reparameterised")
                surrogate = surrogate - term
            if not is_identically_zero(score):
                surrogate = surrogate + (alpha / (1.0 - alpha)) * term
        elbos.append(elbo)
        surrogates.append(surrogate)
    # a vectorised trace holds the k particles along dim 0; k traces of one are stacked
    log_w = (1.0 - alpha) * (elbos[0] if vectorized else torch.stack(elbos))
    surrogate_particles = surrogates[0] if vectorized else torch.stack(surrogates)
    log_mean = torch.logsumexp(log_w, dim=0, keepdim=True) - math.log(num_particles)
    weights = (log_w - log_mean).exp()
    loss = -log_mean.sum() / (1.0 - alpha)
    surrogate_loss = -(weights * surrogate_particles).sum() / num_particles
    return loss, surrogate_loss


class JitRenyiELBO(RenyiELBO):
    """Pyro's ``RenyiELBO`` with its loss and surrogate compiled by ``pyro.ops.jit.trace``
    (Pyro has no compiled Renyi bound): the same traces, the same loss and gradients
    (:func:`renyi_losses`), without Pyro's per-step Python work. For models and guides of
    static structure, like the other compiled objectives."""

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        if getattr(self, "_compiled_losses", None) is None:
            weakself = weakref.ref(self)

            @pyro.ops.jit.trace(ignore_warnings=True)
            def losses(*args, **kwargs):
                kwargs.pop("_pyro_model_id")
                kwargs.pop("_pyro_guide_id")
                elbo = weakself()
                assert elbo is not None
                traces = particle_traces(elbo, model, guide, args, kwargs)
                vectorized = elbo.vectorize_particles and elbo.num_particles > 1
                return renyi_losses(traces, elbo.alpha, elbo.num_particles, vectorized)

            self._compiled_losses = losses
        loss, surrogate_loss = self._compiled_losses(*args, **kwargs)
        if surrogate_loss.requires_grad:
            surrogate_loss.backward()
        return loss.item()


def jit_renyi(k: int, nesting: int, alpha: float | None = 0.0) -> ELBO:
    """Compiled Renyi bound at ``alpha`` (0, the default: Burda et al.'s IWAE bound)."""
    return JitRenyiELBO(
        0.0 if alpha is None else alpha, k, max_plate_nesting=nesting, vectorize_particles=k > 1
    )


def param_grads() -> dict[str, torch.Tensor]:
    """The gradient of every unconstrained parameter in Pyro's store (zeros where none)."""
    return {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in pyro.get_param_store().named_parameters()
    }


def clear_grads() -> None:
    """Drop every gradient in Pyro's store, so a probe leaves the first step untouched."""
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None


def compiled_matches_eager(
    compiled: PerSignature, eager: Any, model, guide, batches, rtol: float = 1e-3
) -> str | None:
    """Check a compiled objective against the eager one on ``batches`` (argument tuples):
    under one seed per batch, the same loss (relative ``rtol``) and, for every parameter, the
    same gradient (max difference <= ``rtol`` x the gradient's largest entry + 1e-6). Returns
    None when they agree, else why not (a failed trace, or the first difference).

    A trace records one execution, so a model that branches in Python on its data or on a
    changing value computes something else when replayed on other data: comparing on more
    than one batch is what catches it. It cannot catch a branch that these batches all take
    the same way; a model that has one should say ``jit_compatible = False``. Runs on a forked
    random stream and leaves no gradients behind.
    """
    try:
        with torch.random.fork_rng(devices=[]), quiet_trace():
            for i, args in enumerate(batches):
                compiled._get(model, guide, args, {})  # compile outside the comparison
                clear_grads()
                torch.manual_seed(1000 + i)
                loss = eager.loss_and_grads(model, guide, *args)
                want = param_grads()
                clear_grads()
                torch.manual_seed(1000 + i)
                loss_jit = compiled.loss_and_grads(model, guide, *args)
                got = param_grads()
                if not math.isclose(loss_jit, loss, rel_tol=rtol, abs_tol=1e-6):
                    return f"batch {i + 1}: compiled loss {loss_jit:.6g}, eager {loss:.6g}"
                for name, g in want.items():
                    h = got.get(name, torch.zeros_like(g))
                    if float((h - g).abs().max()) > rtol * float(g.abs().max()) + 1e-6:
                        return f"batch {i + 1}: the gradient of {name!r} differs"
    except Exception as exc:  # noqa: BLE001 - any failure to trace means: stay eager
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"it could not be traced ({type(exc).__name__}: {first[:120]})"
    finally:
        clear_grads()
    return None
