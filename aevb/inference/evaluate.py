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
from aevb.inference import psis
from aevb.inference.programs import sample_sites, trace_pair
from aevb.models.base import check_dataset, hooks, scored_data

#: Upper bound on particles x datapoints x features in one vectorised evaluation on a CPU:
#: 2^22 floats (16 MB per tensor of that size) keeps a chunk's elementwise work (likelihood,
#: tanh) near the caches. Measured on 2 cores, IS-5000 on 100 MNIST test images,
#: 784-200-200-50 VAE: 2^25 4.2 s, 2^22 2.1 s, 2^20 2.2 s, 2^19 2.8 s (``scripts/bench.py``).
#: On a GPU the bound follows its free memory (:func:`aevb.devices.chunk_elements`).
MAX_ELEMENTS = 2**22


def _site_log_prob(name: str, site: dict, who: str, k: int, batch: int) -> torch.Tensor:
    """A site's log-density, checked: finite, and resolved per datapoint (its last two dims
    broadcast to [k, B]; enumerated sites add dims on the left)."""
    lp = site["log_prob"]
    if lp.dim() == 0 or (lp.dim() == 1 and batch == 1):
        lp = lp.reshape(1, -1) if lp.dim() == 1 else lp.reshape(1, 1)
    per_point = lp.dim() >= 2 and lp.shape[-1] in (batch, 1) and lp.shape[-2] in (k, 1)
    if not per_point or (lp.shape[-1] == 1 and batch != 1):
        raise ObjectiveError(
            f"{who} site {name!r} has log-prob shape {tuple(lp.shape)}, not [{k}, {batch}]: "
            "per-datapoint estimates need every sample site inside pyro.plate('data', B)"
        )
    bad = ~torch.isfinite(lp)
    if bool(bad.any()):
        first = bad.nonzero()[0].tolist()
        raise ObjectiveError(
            f"{who} site {name!r} has log-prob {lp[tuple(first)].item()} (first at datapoint "
            f"{first[-1]}, particle {first[-2] if len(first) > 1 else 0}, of "
            f"{int(bad.sum())} non-finite): the log weight is not a number there. Check the "
            "site's parameters (a scale of 0, a NaN from the network) and that the guide "
            "proposes values inside the model's support"
        )
    return lp


@torch.no_grad()
def log_weights(model, guide, args: tuple, num_samples: int, max_plate_nesting: int = 1):
    """Log importance weights log p(x, z) - log q(z | x), shape [num_samples, B].

    Decided from the traces, so that a user's program is scored right or refused:

    * a latent of the model that the guide does not propose is drawn from its prior inside
      the model; its prior term then cancels against its proposal and is left out of the
      weight (the weight is p(x, z, u) / (q(z | x) p(u)));
    * a discrete site the model enumerates itself (``@config_enumerate`` on the model, an
      empty guide for it) is summed out exactly: log p(x, z) = logsumexp over its values;
    * a NaN or infinite log-density raises :class:`~aevb.errors.ObjectiveError` naming the
      site where it first appears; so does a site's log-probability that is not resolved
      per datapoint (a latent outside the data plate has no per-datapoint weight).
    """
    batch = args[0].shape[0]
    guide_trace, model_trace = trace_pair(
        model,
        guide,
        args,
        particles=num_samples,
        nesting=max_plate_nesting,
        enumerate_model=True,
        what="a batch",
    )
    proposed = {n for n, s in sample_sites(guide_trace) if not s["is_observed"]}
    model_trace.compute_log_prob()
    joint = args[0].new_zeros(num_samples, batch)
    for name, site in sample_sites(model_trace):
        from_prior = not site["is_observed"] and name not in proposed
        if from_prior and "_enumerate_dim" not in site["infer"]:
            continue  # drawn from its prior: p(u) / p(u) in the weight
        joint = joint + _site_log_prob(name, site, "model", num_samples, batch)
    if joint.dim() > 2:  # the model's enumerated sites, summed out
        joint = torch.logsumexp(joint.reshape(-1, num_samples, batch), 0)
    guide_trace.compute_log_prob()
    total = joint.expand(num_samples, batch)
    for name, site in sample_sites(guide_trace):
        total = total - _site_log_prob(name, site, "guide", num_samples, batch)
    return total


@dataclass
class Bounds:
    """Per-datapoint estimates from one set of k draws per datapoint, and how far the IS-k
    one can be trusted (:mod:`aevb.inference.psis`)."""

    elbo: torch.Tensor  # [N] mean of the log weights
    log_likelihood: torch.Tensor  # [N] log mean exp of the log weights (IS-k)
    num_samples: int
    seconds: float
    khat: torch.Tensor | None = None  # [N] Pareto k-hat of the log weights
    ess: torch.Tensor | None = None  # [N] importance-sampling effective sample size
    mc_variance: torch.Tensor | None = None  # [N] Monte Carlo variance of log_likelihood

    def trust(self, flag_share: float) -> dict:
        """The trust keys of the IS-k estimate (:func:`aevb.inference.psis.summary`)."""
        assert self.khat is not None and self.ess is not None and self.mc_variance is not None
        return psis.summary(
            self.log_likelihood,
            self.khat,
            self.mc_variance,
            self.ess,
            self.num_samples,
            flag_share,
        )


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
    parts: list[tuple[torch.Tensor, ...]] = []
    start = time.perf_counter()
    shown = dict(unit="sample", unit_scale=True, desc=f"IS-{num_samples}", leave=False)
    bar = tqdm(total=len(ds) * num_samples, disable=not progress, **shown)
    with torch.random.fork_rng(devices=fork_devices(device)), pyro.validation_enabled(False):
        torch.manual_seed(seed)
        for args in ds.batches(batch_size, labels=labels):
            args = to_device(args, device)
            parts.append(_batch_bounds(model, guide, args, num_samples, chunk, max_plate_nesting))
            bar.update(num_samples * args[0].shape[0])
    bar.close()
    elbo_all, ll_all, khat, ess, var = (torch.cat(column).cpu() for column in zip(*parts))
    return Bounds(elbo_all, ll_all, num_samples, time.perf_counter() - start, khat, ess, var)


def _batch_bounds(model, guide, args: tuple, num_samples: int, chunk: int, nesting: int):
    """(ELBO, IS-k, k-hat, ESS, Monte Carlo variance of IS-k) of one batch, [B] each, from
    ``num_samples`` draws taken ``chunk`` at a time; the batch's log weights [k, B] are kept
    for the diagnostics (k-hat needs them all)."""
    chunks = []
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        chunks.append(log_weights(model, guide, args, k, nesting))
        done += k
    w = torch.cat(chunks)
    lse = torch.logsumexp(w, 0) - math.log(num_samples)
    d = w.detach()
    # k-hat needs every draw on the CPU; below MIN_SAMPLES (the per-epoch test ELBO's one
    # draw) there is no tail to fit, and nothing is copied
    enough = num_samples >= psis.MIN_SAMPLES
    khat = (
        psis.pareto_khat(d.cpu()) if enough else torch.full((d.shape[1],), math.nan, device="cpu")
    )
    ess, var = psis.importance_ess(d).cpu(), psis.log_mean_variance(d).cpu()
    return (w.sum(0) / num_samples, lse, khat, ess, var)


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
