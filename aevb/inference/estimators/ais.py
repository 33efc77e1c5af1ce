"""Annealed importance sampling (AIS) estimates of log p(x), needing the model only.

AIS (Neal 2001) moves chains from the prior to the posterior through the geometric path

    f_t(z) = p(z) p(x | z)^{beta_t},     0 = beta_0 < beta_1 < ... < beta_T = 1,

and weights each chain by w = prod_t p(x | z_{t-1})^{beta_t - beta_{t-1}}, where z_0 ~ p(z)
and z_t is z_{t-1} moved by an MCMC kernel that leaves f_t invariant (here one HMC transition
of :class:`aevb.inference.samplers.hmc.BatchedHMC`). E[w] = p(x), so (1/C) sum_c w_c is unbiased
and its log a stochastic lower bound of log p(x). All datapoints and all C chains per
datapoint run as one vectorised batch.

The step sizes must not depend on the chains they move: a step size adapted on a chain's own
acceptances makes the next kernel a function of its current state, which breaks the
invariance argument behind E[w] = p(x) (on FA it put the estimate 0.1 nats/pt *above* the
exact evidence). So a pilot pass with one chain per datapoint adapts eps_t per datapoint and
temperature towards 65% acceptance, and the C chains then run with that fixed schedule.
The pilot runs in the same vectorised batch as the C chains: at temperature t every chain uses
the pilot's eps_t, which depends on the pilot's own moves up to t - 1 only, so given the pilot
the C chains see a fixed sequence of kernels, exactly as when the pilot runs first (half the
passes over the model, the same estimator).

Cost: each leapfrog step evaluates the model once, keeping log p(z) + log|J| and
log p(x | z) and their gradients apart, so the potential and gradient at the next temperature
and the weight's log-likelihood come from the last evaluation without another one: a chain
costs 1 + T x L evaluations for T temperatures and L leapfrog steps. A model that does not
declare ``jit_compatible`` is traced once and its compiled log-density kept only if it
reproduces the eager one and its gradient (:func:`use_compiled`).

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

import pyro
import torch

from aevb.data.dataset import as_dataset
from aevb.devices import device_of, to_device
from aevb.errors import ConfigError, ObjectiveError
from aevb.inference.programs import non_finite_site, trace_pair
from aevb.inference.samplers import BatchedHMC, Latents, adapted, find_step_size
from aevb.models.base import check_dataset, hooks, scored_data


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
    #: log-density evaluations made (each with its gradient), summed over rows (datapoints x
    #: chains, the pilot's included)
    evaluations: int = 0


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


def _parts(latents: Latents, u: torch.Tensor, args: tuple):
    """(log p(z) + log|J|, log p(x | z)) [N] at u [N, D] and their gradients in u [N, D], from
    one evaluation: together they give the potential and its gradient at every temperature."""
    u = u.detach().requires_grad_(True)
    with torch.enable_grad():
        prior, lik = latents.log_parts(u, args)
        g_prior = _grad(prior, u, retain=True)
        g_lik = _grad(lik, u, retain=False)
    return prior.detach(), lik.detach(), g_prior, g_lik


def _grad(y: torch.Tensor, u: torch.Tensor, retain: bool) -> torch.Tensor:
    """d sum(y) / du, zeros where y does not depend on u (e.g. a likelihood constant in z)."""
    if not y.requires_grad:
        return torch.zeros_like(u)
    (g,) = torch.autograd.grad(y.sum(), u, retain_graph=retain, allow_unused=True)
    return torch.zeros_like(u) if g is None else g


class _Annealed:
    """u -> (U_beta(u), dU_beta/du) for the leapfrog, keeping the parts of its last call."""

    def __init__(self, latents: Latents, args: tuple, beta: float):
        self.latents, self.args, self.beta = latents, args, beta
        self.last: tuple = ()

    def at(self, parts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """U = -(log p(z) + log|J| + beta log p(x | z)) and its gradient from ``parts``."""
        prior, lik, g_prior, g_lik = parts
        return -(prior + self.beta * lik), -(g_prior + self.beta * g_lik)

    def __call__(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.last = _parts(self.latents, u, self.args)
        return self.at(self.last)


def use_compiled(model, args: tuple, u: torch.Tensor) -> bool | None:
    """Whether to evaluate a model that declares nothing about its structure (a user's own
    Pyro functions, no ``jit_compatible`` attribute) through a trace
    (:class:`~aevb.inference.samplers.target.Latents` with ``jit=True``): yes if tracing it warns of
    no Python value taken from a tensor (a branch on a latent's value warns) and the compiled
    log-densities and gradients reproduce the eager ones at ``u`` [N, D], at ``-u`` and at a
    perturbed ``u``. A model that declares ``jit_compatible`` (either way) is not probed:
    None, and :class:`Latents` follows the declaration. AIS evaluates one batch of fixed
    data, so only the latent values change between calls."""
    if getattr(model, "jit_compatible", None) is not None:
        return None
    compiled, eager = Latents(model, args, jit=True), Latents(model, args, jit=False)
    try:
        if not compiled.traces_cleanly(u, args):
            return False
        for v in (u, -u, u + torch.randn_like(u)):
            for a, b in zip(_parts(compiled, v, args), _parts(eager, v, args)):
                if not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
                    return False
    except Exception:  # noqa: BLE001 - any failure to trace: stay eager
        return False
    return True


def ais(
    model,
    args: tuple,
    config: AISConfig | None = None,
    step_sizes: torch.Tensor | None = None,
    jit: bool | None = None,
    start: torch.Tensor | None = None,
    reverse: bool = False,
) -> AISResult:
    """AIS estimates of log p(x_i) for the minibatch ``args`` (e.g. ``(x,)``) of ``model``.

    With ``reverse``, the chains start at ``start`` [B, D] (unconstrained, e.g. the z that
    simulated x: an exact posterior draw) and anneal from beta = 1 down to 0; their weights
    estimate 1 / p(x) without bias, so the returned -log mean w is a stochastic *upper*
    bound of log p(x) (reverse AIS, the upper half of BDMC, :mod:`.bdmc`).

    :param step_sizes: a fixed step-size schedule [T, B] (temperature t, datapoint i) for the
        chains; None (the default) adapts one in a pilot pass with one chain per datapoint.
        A schedule must not be adapted on the chains it moves (see the module docstring).
    :param jit: evaluate the model through a trace; None: as the model declares
        (``jit_compatible``), and a model that declares nothing is probed (:func:`use_compiled`).

    Example (factor analysis, whose evidence is known in closed form):
        >>> import pyro
        >>> from aevb import data, models
        >>> from aevb.inference.estimators.ais import AISConfig, ais
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
    betas = _betas(cfg, b, step_sizes, start, reverse)
    hmc = BatchedHMC(num_steps=cfg.num_steps, target_accept_prob=cfg.target_accept_prob)
    # rows, chain-major: with a pilot, block 0 is the pilot (one chain per datapoint, adapting
    # the schedule; its weights are dropped) and blocks 1..C the chains on that schedule
    p = int(step_sizes is None)
    rep = tuple(_repeat(a, c + p) for a in args)
    latents = Latents(model, rep, jit=jit)
    u = latents.prior_draw(rep) if start is None else _repeat(start.to(rep[0]), c + p)
    if jit is None and use_compiled(model, rep, u):
        latents.jit = True
    evaluations = 0
    if step_sizes is None:  # the pilot's starting step sizes [B]
        schedule = find_step_size(latents, args, u[:b], u.new_tensor(0.1))
        evaluations += 9 * b  # its starting potential and 8 one-step trials
    else:
        schedule = step_sizes.to(u).repeat(1, c)  # [T, C * B], chain-major like rep
    log_w, accept, moves = _anneal(latents, rep, betas, hmc, u, schedule, b)
    est, stderr = _estimate(log_w[p * b :].reshape(c, b), reverse)
    if not bool(torch.isfinite(est).all()):
        raise _not_finite(model, args, est)
    return AISResult(est.float(), stderr.float(), accept, evaluations + moves)


def _betas(cfg: AISConfig, b: int, step_sizes, start, reverse: bool) -> torch.Tensor:
    """The temperatures (descending for reverse AIS), once the arguments are checked."""
    betas = sigmoid_schedule(cfg.num_temperatures, cfg.schedule_sharpness)
    if step_sizes is not None and tuple(step_sizes.shape) != (cfg.num_temperatures, b):
        raise ConfigError(
            f"step_sizes must have shape [num_temperatures, B] = "
            f"[{cfg.num_temperatures}, {b}], got {list(step_sizes.shape)}"
        )
    if not reverse:
        return betas
    if start is None:
        raise ConfigError("reverse AIS starts from exact posterior draws: give start")
    return betas.flip(0)


def _estimate(log_w: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log of the mean weight [B], its delta-method standard error [B]) of log weights
    [C, B]; for reverse AIS, whose weights estimate 1 / p(x), minus that log. A NaN weight
    makes the estimate NaN."""
    c, b = log_w.shape
    est = torch.logsumexp(log_w, 0) - math.log(c)
    est = -est if reverse else est
    est = torch.where(log_w.isnan().any(0), torch.full_like(est, math.nan), est)
    w = torch.exp(log_w - log_w.max(0).values)  # [C, B], stable
    stderr = w.std(0) / (math.sqrt(c) * w.mean(0)) if c > 1 else w.new_full((b,), math.nan)
    return est, stderr


def _anneal(latents, rep: tuple, betas, hmc: BatchedHMC, u, eps, b: int):
    """The annealing from u [R, D] (rows chain-major) through ``betas``: log weights [R]
    (float64), the chains' mean acceptance and the evaluations made. ``eps`` is the pilot's
    starting step sizes [B] (the first B rows are the pilot: they adapt them on their own
    acceptances, every row moves with them) or a fixed schedule [T, R]."""
    pilot = eps.dim() == 1
    parts = _parts(latents, u, rep)
    evaluations = len(u)
    log_w = u.new_zeros(u.shape[0], dtype=torch.float64)
    accept = u.new_zeros(())
    for t in range(1, len(betas)):
        log_lik = parts[1]
        log_w += (betas[t] - betas[t - 1]).double() * log_lik.double()
        target = _Annealed(latents, rep, float(betas[t]))
        U, grad = target.at(parts)
        step = eps.repeat(len(u) // b) if pilot else eps[t - 1]
        u, _, _, a, moved = hmc.transition(target, u, U, grad, step)
        evaluations += len(u) * hmc.num_steps
        parts = tuple(
            torch.where(moved.reshape(-1, *([1] * (new.dim() - 1))), new, old)
            for new, old in zip(target.last, parts)
        )
        if pilot:  # the pilot adapts on its own acceptances only
            eps = adapted(eps, a[:b], hmc.target_accept_prob, hmc.adapt_gain)
        accept = accept + a[b if pilot else 0 :].mean()
    return log_w, float(accept) / (len(betas) - 1), evaluations


def _not_finite(model, args: tuple, est: torch.Tensor) -> ObjectiveError:
    """The error for AIS weights that are not numbers: the model's first site whose
    log-density is NaN or infinite at a draw from the prior, if there is one."""
    i = int((~torch.isfinite(est)).nonzero()[0]) if not bool(torch.isfinite(est).all()) else 0
    with torch.no_grad(), pyro.validation_enabled(False):
        _, trace = trace_pair(model, None, args, what="the batch")
        site = non_finite_site(trace)
    where = f"; at a draw from the prior, the model's {site}" if site else ""
    return ObjectiveError(
        f"AIS: the log weights are not all numbers (datapoint {i}: {float(est[i])}){where}. "
        "Check the model's parameters (a scale of 0, a NaN from the network) and its data"
    )


def ais_dataset(model, data, config: AISConfig | None = None, batch_size: int = 100):
    """:func:`ais` for every datapoint of ``data``, in batches of ``batch_size``, on the
    model's device (results on the CPU).

    :param data: what :func:`aevb.inference.evaluate.bounds` takes: a
        :class:`~aevb.data.Dataset`, a tensor or array of datapoints [N, ...] or an
        ``(x, y)`` pair. A stochastic binarisation is drawn once (seed 0), as for IS, and the
        model's own data checks run first (:func:`aevb.models.base.check_dataset`): bad data
        raise a :class:`~aevb.errors.DataError`.
    """
    ds = scored_data(model, as_dataset(data).fixed(0))  # the binarisation IS sees too
    check_dataset(model, ds.x, ds.y)
    if isinstance(model, torch.nn.Module):  # evaluation is of the model itself
        model.eval()
    labels = hooks(model).uses_labels
    device = device_of(model)
    batches = ds.batches(max(1, batch_size), labels=labels)
    parts: list[AISResult] = []
    jit: bool | None = None  # None: as declared; a model that declares nothing is probed once
    for i, args in enumerate(batches):
        args = to_device(args, device)
        if i == 0 and getattr(model, "jit_compatible", None) is None:
            jit = bool(use_compiled(model, args, Latents(model, args).prior_draw(args)))
        parts.append(ais(model, args, config, jit=jit))
    return AISResult(
        torch.cat([p.log_likelihood for p in parts]).cpu(),
        torch.cat([p.stderr for p in parts]).cpu(),
        sum(p.accept_prob for p in parts) / len(parts),
        sum(p.evaluations for p in parts),
    )
