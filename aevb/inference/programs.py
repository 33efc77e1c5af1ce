"""What aevb reads off a (model, guide) pair's traces before it trains or scores it.

A user's own Pyro program gets the same protection as the package's models, decided from
its traces rather than from its class:

* :func:`trace_pair` runs the guide, then the model replayed on the guide's draws, optionally
  under a leading particle plate and with the model's own enumerated sites summed out
  (``poutine.enum``); a failure becomes one :class:`~aevb.errors.ObjectiveError` that names the
  last site reached and its shape, instead of a page of Pyro's shape tables;
* :func:`global_latents` finds latents outside the data plate (the plate over the batch), so
  that training on minibatches can scale the local terms by N / B (:class:`DataScale`);
* :func:`registered_modules` finds the ``nn.Module`` objects a plain-function pair registers
  with ``pyro.module`` (captured in closures or module globals, as Pyro's examples write them),
  so that a fresh fit re-initialises them from its seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from aevb.errors import AevbError, ObjectiveError


def with_particles(fn: Callable, k: int, nesting: int) -> Callable:
    """``fn`` inside a vectorised particle plate of size ``k`` at ``dim = -nesting - 1``."""

    def wrapped(*args, **kwargs):
        with pyro.plate("_eval_particles", k, dim=-nesting - 1):
            return fn(*args, **kwargs)

    return wrapped


def _last_site(handler) -> str:
    """``after site 'z' (value shape (2, 100, 5))`` for a trace handler that failed."""
    sites = [s for _, s in sample_sites(handler.msngr.trace)]
    if not sites:
        return "before its first sample site"
    site = sites[-1]
    value = site.get("value")
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else "?"
    return f"after sample site {site['name']!r} (value shape {shape})"


#: what to do when a program fails only under a leading particle dimension
PARTICLE_HINT = (
    "; write the model and guide to broadcast over leading dimensions (torch.cat(..., "
    "dim=-1), shapes taken from the latents rather than from x.shape[0]): every estimator of "
    "log p(x) and every objective with more than one particle vectorises particles that way"
)


def _run(fn: Callable, args: tuple, who: str, context: str, hint: str = ""):
    handler = poutine.trace(fn)
    try:
        return handler.get_trace(*args)
    except AevbError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the user's program, reworded
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ObjectiveError(
            f"the {who} failed {context} {_last_site(handler)}: {type(exc).__name__}: {first}{hint}"
        ) from None


def trace_pair(
    model,
    guide,
    args: tuple,
    *,
    particles: int | None = None,
    nesting: int = 1,
    enumerate_model: bool = False,
    what: str = "",
):
    """``(guide_trace, model_trace)`` on the batch ``args``: the model replayed on the guide's
    draws. ``particles``: under a plate of that size at ``dim = -nesting - 1`` (how particles
    are vectorised in training and scoring). ``enumerate_model``: the model's own sites
    marked ``infer={"enumerate": "parallel"}`` (``@config_enumerate`` on the model) are
    enumerated in dims left of the particle plate, so their sum can be taken exactly. A
    failure raises :class:`ObjectiveError` naming the last site reached."""
    if particles is not None:
        model = with_particles(model, particles, nesting)
        guide = None if guide is None else with_particles(guide, particles, nesting)
    shape = "x".join(str(s) for s in args[0].shape)
    context = f"on {what or 'a batch'} of shape {shape}" + (
        f" under a leading particle dimension of size {particles} (dim {-nesting - 1})"
        if particles is not None
        else ""
    )
    hint = PARTICLE_HINT if particles is not None else ""
    guide_trace = None if guide is None else _run(guide, args, "guide", context, hint)
    if enumerate_model:  # as TraceEnum_ELBO nests them: enum inside, the replay outside
        model = poutine.enum(model, first_available_dim=-nesting - 2)
    replayed = model if guide_trace is None else poutine.replay(model, trace=guide_trace)
    model_trace = _run(replayed, args, "model", context, hint)
    return guide_trace, model_trace


def particle_problem(model, guide, args: tuple, nesting: int = 1) -> str | None:
    """Why the pair cannot run under a leading particle dimension (None: it can). Every
    estimator of log p(x) and every objective with more than one particle needs one."""
    try:
        with torch.no_grad():
            trace_pair(model, guide, args, particles=2, nesting=nesting, enumerate_model=True)
    except ObjectiveError as exc:
        return str(exc)
    return None


def sample_sites(trace) -> Iterator[tuple[str, dict]]:
    """The sample sites of a trace, subsample sites left out."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def in_batch_plate(site: dict, batch: int) -> bool:
    """The site sits in a vectorised plate over the batch: one of size B (a subsampled plate
    of the full data's size has size B too)."""
    return any(f.vectorized and f.size == batch for f in site["cond_indep_stack"])


def non_finite_site(trace) -> str | None:
    """Where a trace's log-density is first NaN or infinite: ``site 'x' has log-prob nan
    (first at datapoint 3)``; None when every site's is finite."""
    trace.compute_log_prob()
    for name, site in sample_sites(trace):
        lp = site["log_prob"]
        bad = ~torch.isfinite(lp)
        if bool(bad.any()):
            first = bad.nonzero()[0].tolist()
            where = f" (first at datapoint {first[-1]})" if first else ""
            return f"site {name!r} has log-prob {lp[tuple(first)].item()}{where}"
    return None


def global_latents(model_trace, batch: int) -> list[str]:
    """The model's latent sites outside every plate over the batch (a weight shared by all
    datapoints, say): the posterior over them depends on how many datapoints there are."""
    return [
        name
        for name, site in sample_sites(model_trace)
        if not site["is_observed"] and not in_batch_plate(site, batch)
    ]


def scaled_sites(*traces) -> list[str]:
    """Sites with a scale other than 1: the program scales (subsamples) itself."""
    return [n for t in traces for n, s in sample_sites(t) if s["scale"] != 1.0]


class DataScale(Messenger):
    """Multiplies the log-density of every sample site inside a plate over the batch (size
    B) by ``full / B``: the minibatch then estimates the full data set's terms, as
    ``pyro.plate("data", N, subsample_size=B)`` would. Sites outside the batch plate (global
    latents) keep scale 1."""

    def __init__(self, full: int):
        super().__init__()
        self.full = full
        self.batch: int | None = None

    def _pyro_sample(self, msg) -> None:
        if self.batch is None or self.batch >= self.full:
            return
        if in_batch_plate(msg, self.batch):
            msg["scale"] = msg["scale"] * (self.full / self.batch)


def scaled_by(program: Callable, scale: DataScale) -> Callable:
    """``program(x, ...)`` with :class:`DataScale` set to the batch size of ``x``."""

    def wrapped(*args, **kwargs):
        scale.batch = args[0].shape[0]
        with scale:
            return program(*args, **kwargs)

    return wrapped


def _referents(obj) -> list:
    """Objects a callable refers to: a function's closure cells and the globals it names, a
    bound method's object, a partial's function and arguments, a handler's ``fn``, and the
    attributes of a plain object."""
    if isinstance(obj, torch.nn.Module):
        return []
    if inspect.ismethod(obj):
        return [obj.__self__, obj.__func__]
    if inspect.isfunction(obj):
        try:
            names = inspect.getclosurevars(obj)
        except (TypeError, ValueError):
            return []
        return [*names.nonlocals.values(), *names.globals.values()]
    if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
        return []
    if hasattr(obj, "func") and callable(obj.func):  # functools.partial
        return [obj.func, *getattr(obj, "args", ()), *getattr(obj, "keywords", {}).values()]
    found: list[Any] = []
    for value in getattr(obj, "__dict__", {}).values():
        found.append(value)
    if isinstance(obj, list | tuple):
        found.extend(obj)
    if isinstance(obj, dict):
        found.extend(obj.values())
    return found


def reachable_modules(*roots, depth: int = 4) -> list[torch.nn.Module]:
    """The ``nn.Module`` objects reachable from ``roots`` through closures, named globals,
    bound objects and attributes (up to ``depth`` hops), in a fixed order; the roots
    themselves are left out when they are modules (the caller resets those)."""
    seen: set[int] = set()
    modules: list[torch.nn.Module] = []
    frontier = [r for r in roots if not isinstance(r, torch.nn.Module)]
    for _ in range(depth):
        following = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            for ref in _referents(obj):
                if isinstance(ref, torch.nn.Module):
                    if id(ref) not in seen:
                        seen.add(id(ref))
                        modules.append(ref)
                elif not isinstance(ref, int | float | str | bytes | bool | torch.Tensor):
                    following.append(ref)
        frontier = following
    return modules


def registered_modules(model, guide) -> tuple[list[torch.nn.Module], list[str]]:
    """The modules a plain-function pair uses (reachable from it, with a parameter in Pyro's
    param store), and the names of param-store parameters in none of them and of no
    ``nn.Module`` given as model or guide (a fresh fit cannot re-initialise those)."""
    store = pyro.get_param_store()
    in_store = {id(p): name for name, p in store.named_parameters()}
    own = {
        id(p)
        for obj in (model, guide)
        if isinstance(obj, torch.nn.Module)
        for p in obj.parameters()
    }
    used = [
        m for m in reachable_modules(model, guide) if any(id(p) in in_store for p in m.parameters())
    ]
    covered = own | {id(p) for m in used for p in m.parameters()}
    stray = [name for pid, name in in_store.items() if pid not in covered and "$$$" in name]
    return used, sorted(stray)
