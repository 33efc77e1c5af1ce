"""Bidirectional Monte Carlo (BDMC): a sandwich around log p(x) that bounds AIS's error.

On data simulated from the model itself, z ~ p(z), x ~ p(x | z), the z that made x is an
exact draw from the posterior p(z | x). So both directions of AIS can run on those x:

- forward AIS from the prior (:func:`.ais.ais`): E[w] = p(x), so log mean w is a stochastic
  **lower** bound of log p(x);
- reverse AIS from the exact z, annealing from the posterior back to the prior: E[w] = 1/p(x),
  so -log mean w is a stochastic **upper** bound.

The gap between them bounds the error of AIS with that schedule (temperatures, leapfrog steps)
on data like the model's: Grosse, Ghahramani & Adams (2015); Wu et al. (2017) used it to
validate AIS on decoder-based models. The simulated x are the model's, not the test set's:
the gap says how far to trust the AIS *schedule*, and a small gap there is what licenses
trusting AIS on the test set at that schedule.

References:
    R. B. Grosse, Z. Ghahramani, R. P. Adams (2015), Sandwiching the marginal likelihood
    using bidirectional Monte Carlo, arXiv:1511.02543.
    Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse (2017), On the Quantitative Analysis of
    Decoder-Based Generative Models, ICLR.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from aevb.devices import device_of
from aevb.errors import ConfigError
from aevb.inference.estimators.ais import AISConfig, ais
from aevb.inference.samplers import Latents


@dataclass
class BDMCResult:
    """Per simulated datapoint: the lower and upper bounds of log p(x), their Monte Carlo
    standard errors, and the data they bound."""

    lower: torch.Tensor  # [N] forward AIS
    upper: torch.Tensor  # [N] reverse AIS from the exact z
    lower_stderr: torch.Tensor
    upper_stderr: torch.Tensor
    x: torch.Tensor  # [N, ...] the simulated data
    seconds: float

    @property
    def gap(self) -> float:
        """The mean of upper - lower over the points: at least AIS's error on them, in
        expectation."""
        return float((self.upper - self.lower).mean())


def simulate(model, template: torch.Tensor, num_points: int) -> tuple[torch.Tensor, dict]:
    """``num_points`` draws (x, z) from the model, z ~ p(z), x ~ p(x | z): the data (shaped
    like ``template``'s rows) and the latent values that made them. The model's one observed
    site is the data; a model with several observed sites is refused."""
    shape = (num_points, *template.shape[1:])
    x0 = template[:1].expand(shape).contiguous()
    with torch.no_grad(), poutine.block():
        conditioned = prune_subsample_sites(poutine.trace(model).get_trace(x0))
        observed = [
            n for n, s in conditioned.nodes.items() if s["type"] == "sample" and s["is_observed"]
        ]
        if len(observed) != 1:
            raise ConfigError(
                f"BDMC simulates the data from the model's one observed site; this model has "
                f"{len(observed)} ({observed})"
            )
        trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model)).get_trace(x0))
    value = trace.nodes[observed[0]]["value"]
    assert isinstance(value, torch.Tensor)
    x = value.reshape(shape).to(template.dtype)
    latents = {
        n: s["value"] for n, s in trace.nodes.items() if s["type"] == "sample" and n not in observed
    }
    return x, latents


def bdmc(
    model, template: torch.Tensor, num_points: int, config: AISConfig | None = None, seed: int = 0
) -> BDMCResult:
    """Forward and reverse AIS (``config``'s temperatures, chains, leapfrog steps) on
    ``num_points`` datapoints simulated from ``model`` (rows shaped like ``template``'s),
    seeded by ``seed`` without touching the caller's random state.

    Example (factor analysis, whose evidence is known in closed form):
        >>> import torch
        >>> from aevb import models
        >>> from aevb.inference.estimators.ais import AISConfig
        >>> from aevb.inference.estimators.bdmc import bdmc
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> fa = models.build("fa")
        >>> r = bdmc(fa, torch.zeros(1, 3), 20, AISConfig(num_temperatures=50, num_chains=4))
        >>> exact = fa.log_evidence(r.x).detach()
        >>> bool((r.lower.mean() <= exact.mean() + 0.05) & (exact.mean() <= r.upper.mean() + 0.05))
        True
    """
    cfg = config or AISConfig()
    start = time.perf_counter()
    if isinstance(model, torch.nn.Module):
        model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x, values = simulate(model, template.to(device_of(model)), num_points)
        exact = Latents(model, (x,)).flatten(values)
        forward = ais(model, (x,), cfg)
        backward = ais(model, (x,), cfg, start=exact, reverse=True)
    return BDMCResult(
        forward.log_likelihood.cpu(),
        backward.log_likelihood.cpu(),
        forward.stderr.cpu(),
        backward.stderr.cpu(),
        x.cpu(),
        time.perf_counter() - start,
    )


__all__ = ["BDMCResult", "bdmc", "simulate"]
