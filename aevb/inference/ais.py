"""Annealed importance sampling (AIS) estimates of log p(x), needing the model only.

AIS (Neal 2001) moves chains from the prior to the posterior through the geometric path

    f_t(z) = p(z) p(x | z)^{beta_t},     0 = beta_0 < beta_1 < ... < beta_T = 1,

and weights each chain by w = prod_t p(x | z_{t-1})^{beta_t - beta_{t-1}}, where z_0 ~ p(z)
and z_t is z_{t-1} moved by an MCMC kernel that leaves f_t invariant (here one HMC transition
of :class:`aevb.inference.samplers.BatchedHMC`). E[w] = p(x), so (1/C) sum_c w_c is unbiased
and its log a stochastic lower bound of log p(x). All datapoints and all C chains per
datapoint run as one vectorised batch.

The step sizes must not depend on the chains they move: a step size adapted on a chain's own
acceptances makes the next kernel a function of its current state, which breaks the
invariance argument behind E[w] = p(x) (on FA it put the estimate 0.1 nats/pt *above* the
exact evidence). So a pilot pass with one chain per datapoint adapts eps_t per datapoint and
temperature towards 65% acceptance, and the C chains then run with that fixed schedule.

The schedule is the sigmoidal one of Grosse, Maddison & Salakhutdinov (2013): beta_t
proportional to sigmoid(delta (2t/T - 1)), rescaled to [0, 1], which spends more temperatures
near the prior, where the path changes fastest. The Monte Carlo standard error of
log((1/C) sum w_c) is estimated by the delta method, sd(w) / (sqrt(C) mean(w)).

References:
    R. M. Neal (2001), Annealed Importance Sampling, Statistics and Computing 11.
    Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse (2017), On the Quantitative Analysis of
    Decoder-Based Generative Models, ICLR.
    R. Grosse, C. Maddison, R. Salakhutdinov (2013), Annealing between distributions by
    averaging moments, NeurIPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aevb.devices import device_of, to_device
from aevb.errors import ConfigError
from aevb.inference.samplers import BatchedHMC, Latents, adapted, find_step_size, potential
from aevb.models.base import hooks, scored_data


@dataclass(frozen=True)
class AISConfig:
    #: intermediate distributions; Wu et al. used 1000-16000 for MNIST decoders
    num_temperatures: int = 500
    #: independent chains per datapoint (the C in the estimate's average)
    num_chains: int = 16
    #: leapfrog steps per HMC transition (one transition per temperature)
    num_steps: int = 10
    #: acceptance the per-chain step size is adapted towards (0.65, Wu et al.)
    target_accept_prob: float = 0.65
    #: sharpness delta of the sigmoidal schedule
    schedule_sharpness: float = 4.0


@dataclass
class AISResult:
    #: log p(x_i) estimates [B] and their Monte Carlo standard errors [B]
    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    #: mean HMC acceptance over temperatures and chains
    accept_prob: float


def sigmoid_schedule(num: int, sharpness: float = 4.0) -> torch.Tensor:
    """beta_0 = 0 < ... < beta_num = 1, sigmoidal (Grosse et al. 2013); [num + 1]."""
    if num < 1:
        raise ValueError("AIS needs at least one temperature")
    steps = torch.arange(num + 1, dtype=torch.float64, device="cpu")  # scalars: on the CPU
    s = torch.sigmoid(sharpness * (2 * steps / num - 1))
    return ((s - s[0]) / (s[-1] - s[0])).float()


def _repeat(a: torch.Tensor, c: int) -> torch.Tensor:
    """[B, ...] -> [C * B, ...], chain-major: row c * B + i is datapoint i, chain c."""
    return a.repeat((c,) + (1,) * (a.dim() - 1))


def _anneal(latents, args, betas, hmc, eps, adapt: bool):
    """One AIS pass: returns log w [N] (float64), the step sizes used [T, N] and the mean
    acceptance. ``eps`` [N] is the start (adapt) or a fixed schedule [T, N] (not adapt)."""
    u = latents.prior_draw(args)
    log_w = u.new_zeros(u.shape[0], dtype=torch.float64)
    used, accept = [], 0.0
    with torch.no_grad():
        _, log_lik = latents.log_parts(u, args)
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]).double() * log_lik.double()
        step = eps if adapt else eps[t - 1]
        target = potential(latents, args, float(betas[t]))
        U, grad = target(u)
        u, U, grad, a, _ = hmc.transition(target, u, U, grad, step)
        used.append(step)
        if adapt:
            eps = adapted(eps, a, hmc.target_accept_prob, hmc.adapt_gain)
        accept += float(a.mean())
        with torch.no_grad():
            _, log_lik = latents.log_parts(u, args)
    return log_w, torch.stack(used), accept / (len(betas) - 1)


def ais(
    model, args: tuple, config: AISConfig | None = None, step_sizes: torch.Tensor | None = None
) -> AISResult:
    """AIS estimates of log p(x_i) for the minibatch ``args`` (e.g. ``(x,)``) of ``model``.

    :param step_sizes: a fixed step-size schedule [T, B] (temperature t, datapoint i) for the
        chains; None (the default) adapts one in a pilot pass with one chain per datapoint.
        A schedule must not be adapted on the chains it moves (see the module docstring).

    Example (factor analysis, whose evidence is known in closed form):
        >>> import pyro
        >>> from aevb import data, models
        >>> from aevb.inference.ais import AISConfig, ais
        >>> pyro.set_rng_seed(0)
        >>> _, test = data.load("fa-synthetic")
        >>> model = models.build("fa")
        >>> x = test.x[:20]
        >>> result = ais(model, (x,), AISConfig(num_temperatures=100, num_chains=16))
        >>> gap = (result.log_likelihood - model.log_evidence(x).detach()).mean()
        >>> bool(gap.abs() < 0.1)                   # nats per datapoint, over 20 points
        True
    """
    cfg = config or AISConfig()
    b, c = args[0].shape[0], cfg.num_chains
    betas = sigmoid_schedule(cfg.num_temperatures, cfg.schedule_sharpness)
    hmc = BatchedHMC(num_steps=cfg.num_steps, target_accept_prob=cfg.target_accept_prob)
    if step_sizes is None:
        # pilot: one chain per datapoint adapts the step-size schedule (its weights are dropped)
        pilot = Latents(model, args)
        u0 = pilot.prior_draw(args)
        eps0 = find_step_size(pilot, args, u0, u0.new_tensor(0.1))
        _, step_sizes, _ = _anneal(pilot, args, betas, hmc, eps0, adapt=True)
    elif tuple(step_sizes.shape) != (cfg.num_temperatures, b):
        raise ConfigError(
            f"step_sizes must have shape [num_temperatures, B] = "
            f"[{cfg.num_temperatures}, {b}], got {list(step_sizes.shape)}"
        )
    # the C chains per datapoint, on the fixed schedule
    rep = tuple(_repeat(a, c) for a in args)
    fixed = step_sizes.repeat(1, c)  # [T, C * B], chain-major like rep
    log_w, _, accept = _anneal(Latents(model, rep), rep, betas, hmc, fixed, adapt=False)
    log_w = log_w.reshape(c, b)
    est = torch.logsumexp(log_w, 0) - math.log(c)
    w = torch.exp(log_w - log_w.max(0).values)  # [C, B], stable
    stderr = w.std(0) / (math.sqrt(c) * w.mean(0)) if c > 1 else w.new_full((b,), math.nan)
    return AISResult(est.float(), stderr.float(), accept)


def ais_dataset(model, data, config: AISConfig | None = None, batch_size: int = 100):
    """:func:`ais` over a dataset's batches (``data.batches``), concatenated, on the
    model's device (results on the CPU)."""
    labels = hooks(model).uses_labels
    device = device_of(model)
    batches = scored_data(model, data).batches(batch_size, labels=labels)
    parts = [ais(model, to_device(args, device), config) for args in batches]
    return AISResult(
        torch.cat([p.log_likelihood for p in parts]).cpu(),
        torch.cat([p.stderr for p in parts]).cpu(),
        sum(p.accept_prob for p in parts) / len(parts),
    )
