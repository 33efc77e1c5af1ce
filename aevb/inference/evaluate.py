"""Estimators of log p(x) and friends, one value per datapoint, for any model/guide pair.

With the guide q(z|x) as proposal and z_1..z_k ~ q(z|x) i.i.d., the log importance weights
w_i = log p(x, z_i) - log q(z_i | x) give::

    the ELBO estimate          (1/k) sum_i w_i                 (E = ELBO <= log p(x))
    the importance-sampled     log (1/k) sum_i exp(w_i)        (E <= log p(x), increasing
    log-likelihood (IS-k)                                        in k, -> log p(x); Burda et
                                                                 al. 2015, Theorem 1)

Both are computed from the same draws, in chunks of particles and datapoints so that k=5000
over 10,000 images runs in bounded memory. Particles are vectorised by an outer plate
(``dim = -max_plate_nesting - 1``), so the model and guide must broadcast over it, exactly as
for training with ``vectorize_particles=True``.

References:
    Burda, Grosse & Salakhutdinov (2015), Importance Weighted Autoencoders, arXiv:1509.00519
    (IS-5000 protocol, Theorem 1, active units in sec. 5.2).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from tqdm import tqdm  # text bars (tqdm.auto warns in a notebook without ipywidgets)

from aevb.data.dataset import Dataset, as_dataset
from aevb.devices import chunk_elements, device_of, fork_devices, to_device
from aevb.errors import ObjectiveError
from aevb.models.base import check_dataset, hooks, scored_data

#: Upper bound on particles x datapoints x features in one vectorised evaluation on a CPU:
#: 2^22 floats (16 MB per tensor of that size) keeps a chunk's elementwise work (likelihood,
#: tanh) near the caches. Measured on 2 cores, IS-5000 on 100 MNIST test images,
#: 784-200-200-50 VAE: 2^25 4.2 s, 2^22 2.1 s, 2^20 2.2 s, 2^19 2.8 s (``scripts/bench.py``).
#: On a GPU the bound follows its free memory (:func:`aevb.devices.chunk_elements`).
MAX_ELEMENTS = 2**22


def _with_particles(fn, k: int, nesting: int):
    def wrapped(*args, **kwargs):
        with pyro.plate("_eval_particles", k, dim=-nesting - 1):
            return fn(*args, **kwargs)

    return wrapped


@torch.no_grad()
def log_weights(model, guide, args: tuple, num_samples: int, max_plate_nesting: int = 1):
    """Log importance weights log p(x, z) - log q(z | x), shape [num_samples, B].

    Raises :class:`~aevb.errors.ObjectiveError` if a site's log-probability is not resolved
    per datapoint (a latent outside the data plate has no per-datapoint weight).
    """
    batch = args[0].shape[0]
    guide_trace = poutine.trace(_with_particles(guide, num_samples, max_plate_nesting)).get_trace(
        *args
    )
    model_fn = poutine.replay(_with_particles(model, num_samples, max_plate_nesting), guide_trace)
    model_trace = poutine.trace(model_fn).get_trace(*args)
    total = args[0].new_zeros(num_samples, batch)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            lp = site["log_prob"]
            if lp.shape != (num_samples, batch) and not (batch == 1 and lp.numel() == num_samples):
                raise ObjectiveError(
                    f"site {name!r} has log-prob shape {tuple(lp.shape)}, not "
                    f"[{num_samples}, {batch}]: per-datapoint estimates need every sample site "
                    "inside pyro.plate('data', B)"
                )
            total = total + sign * lp.reshape(num_samples, batch)
    return total


@dataclass
class Bounds:
    """Per-datapoint estimates from one set of k draws per datapoint."""

    elbo: torch.Tensor  # [N] mean of the log weights
    log_likelihood: torch.Tensor  # [N] log mean exp of the log weights (IS-k)
    num_samples: int
    seconds: float


def bounds(
    model,
    guide,
    data,
    num_samples: int = 1000,
    *,
    batch_size: int = 100,
    seed: int = 0,
    max_plate_nesting: int = 1,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> Bounds:
    """ELBO and IS-k estimates of log p(x) for every datapoint of ``data``.

    :param data: a :class:`~aevb.data.Dataset` (binarised once if stochastic), tensor or array.
    :param num_samples: k, the number of proposals per datapoint.
    :param seed: draws are reproducible and do not disturb the global random state.
    :param device: where the batches go; None: the device of the model's (or guide's)
        parameters. Results are returned on the CPU.

    Example:
        >>> from aevb import data, guides, models
        >>> from aevb.inference.evaluate import bounds
        >>> _, test = data.load("fa-synthetic")
        >>> model = models.build("fa")
        >>> b = bounds(model, guides.default_for(model), test.subset(50), num_samples=100)
        >>> b.elbo.shape, bool((b.elbo <= b.log_likelihood).all())
        (torch.Size([50]), True)
    """
    ds = scored_data(model, _fixed(as_dataset(data)))
    labels = hooks(model).uses_labels
    device = torch.device(device) if device is not None else device_of(model, guide)
    for obj in (model, guide):  # evaluation is of the model itself (e.g. a discrete y)
        if isinstance(obj, torch.nn.Module):
            obj.eval()
    # the data are checked once here; Pyro's per-chunk checks are off
    check_dataset(model, ds.transform(ds.x), ds.y)
    x_size = max(1, ds.x_dim)
    batch_size = max(1, min(batch_size, len(ds)))
    elements = chunk_elements(device, MAX_ELEMENTS)
    chunk = max(1, min(num_samples, elements // (batch_size * x_size)))
    elbos, lls = [], []
    start = time.perf_counter()
    bar = tqdm(
        total=len(ds) * num_samples,
        disable=not progress,
        unit="sample",
        unit_scale=True,
        desc=f"IS-{num_samples}",
        leave=False,
    )
    with torch.random.fork_rng(devices=fork_devices(device)), pyro.validation_enabled(False):
        torch.manual_seed(seed)
        for args in ds.batches(batch_size, labels=labels):
            args = to_device(args, device)
            b = args[0].shape[0]
            lse_parts, w_sum = [], args[0].new_zeros(b)
            done = 0
            while done < num_samples:
                k = min(chunk, num_samples - done)
                w = log_weights(model, guide, args, k, max_plate_nesting)
                lse_parts.append(torch.logsumexp(w, 0))
                w_sum += w.sum(0)
                done += k
                bar.update(k * b)
            lse = torch.logsumexp(torch.stack(lse_parts), 0) - math.log(num_samples)
            elbos.append(w_sum / num_samples)
            lls.append(lse)
    bar.close()
    elbo_all, ll_all = torch.cat(elbos).cpu(), torch.cat(lls).cpu()
    return Bounds(elbo_all, ll_all, num_samples, time.perf_counter() - start)


def log_likelihood(model, guide, data, num_samples: int = 5000, **kwargs) -> torch.Tensor:
    """Per-datapoint IS-k estimate of log p(x) with the guide as proposal (see :func:`bounds`)."""
    return bounds(model, guide, data, num_samples, **kwargs).log_likelihood


def elbo(model, guide, data, num_samples: int = 1, **kwargs) -> torch.Tensor:
    """Per-datapoint ELBO estimate averaged over ``num_samples`` draws from q(z|x)."""
    return bounds(model, guide, data, num_samples, **kwargs).elbo


@torch.no_grad()
def posterior_means(guide, data, *, batch_size: int = 500, labels: bool = False) -> torch.Tensor:
    """E_q[z | x] for every datapoint, [N, total latent dims] (all continuous guide sites
    concatenated; discrete ones such as a cluster label are left out).

    Uses each site's distribution ``.mean`` (given the sampled values of earlier sites);
    falls back to a 100-draw Monte Carlo average where a distribution has no closed-form mean.
    """
    ds = _fixed(as_dataset(data))
    device = device_of(guide)
    out = []
    for args in ds.batches(batch_size, labels=labels):
        args = to_device(args, device)
        trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args))
        parts = []
        for site in trace.nodes.values():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            fn: Any = site["fn"]
            if fn.support.is_discrete:
                continue
            try:
                mean = fn.mean
            except NotImplementedError:
                mean = fn.sample((100,)).mean(0)
            parts.append(mean.reshape(args[0].shape[0], -1))
        out.append(torch.cat(parts, -1))
    return torch.cat(out).cpu()


def active_units(guide, data, threshold: float = 0.01, **kwargs) -> int:
    """Burda et al.'s count of active latent units: Cov_x(E_q[z_u | x]) > ``threshold``."""
    means = posterior_means(guide, data, **kwargs)
    return int((means.var(0, unbiased=True) > threshold).sum())


def _fixed(ds: Dataset) -> Dataset:
    """Evaluation sees one fixed binarisation (stochastic ones are drawn once, seed 0)."""
    return ds.fixed(0) if ds.binarize in ("dynamic", "continuous") else ds
