"""Monte Carlo VAEs (Thin, Kotelevskii, Durmus, Panov, Moulines & Doucet 2021): Langevin
and MALA transitions inside the importance weight, for any model with continuous latents.

Everything runs in the unconstrained space of the model's latents (:class:`Latents`:
z = T(u), one row u in R^D per datapoint), where the encoder's density is
q_u(u|x) = q(T(u)|x) |det dT/du| and the joint p_u(x, u) = p(x, T(u)) |det dT/du|; the
Jacobians cancel in every ratio below that is a density of z, so the bounds are those of z.

**Annealed targets.** With beta_k = k/K (k = 0..K; beta_0 = 0, beta_K = 1),

    pi_k(u) proportional to q_u(u|x)^(1 - beta_k) p_u(x, u)^beta_k,

from the encoder (pi_0 = q) to the posterior (pi_K proportional to p(x, u)).

**L-MCVAE** (:class:`LangevinMCVAE_ELBO`). From u_0 ~ q (reparameterised), K unadjusted
Langevin (ULA) steps, u_k = u_{k-1} + eta grad log pi_k(u_{k-1}) + sqrt(2 eta) eps_k, whose
transition density is M_k(u_{k-1}, u_k) = N(u_k; u_{k-1} + eta grad log pi_k(u_{k-1}), 2 eta I).
With the same kernel used backwards as the reverse kernel,
L_k(u_k, u_{k-1}) = N(u_{k-1}; u_k + eta grad log pi_k(u_k), 2 eta I), the weight

    log w = log p_u(x, u_K) - log q_u(u_0|x) + sum_k [log L_k(u_k, u_{k-1}) - log M_k(u_{k-1}, u_k)]

is the ratio of an extended target p(x, u_K) prod_k L_k to the extended proposal
q(u_0) prod_k M_k, whose u_{0..K-1}-marginal of the numerator integrates to p(x) for any
normalised L_k: E[w] = p(x), so log (1/n) sum_i w_i over n particles is a lower bound of
log p(x) (Jensen), tight when the L_k are the true reversals (Thin et al. 2021, sec. 3;
Del Moral, Doucet & Jasra 2006). Every step is reparameterised (the gradients are
differentiated again, ``create_graph``), so the bound's gradient reaches encoder and decoder
through the whole trajectory. K = 0 is the IWAE bound (the ELBO at n = 1).

**A-MCVAE** (:class:`MALAMCVAE_ELBO`). MALA moves, reversible with respect to pi_k, make
L_k the reversal of M_k, and the weight telescopes to the AIS weight (Neal 2001)

    log w = sum_{k=1}^K (beta_k - beta_{k-1}) (log p_u(x, u_{k-1}) - log q_u(u_{k-1}|x)),

which depends on the accept/reject decisions a_k ~ Bernoulli(alpha_k) as well as on the
reparameterised draws. Its gradient is the pathwise one plus the score term of the decisions,
sum_i (L - b_i) grad sum_k log P(a_k^i), with L = log (1/n) sum_j w_j and the leave-one-out
baseline b_i (L with w_i replaced by the geometric mean of the other weights; Mnih & Rezende
2016), as Thin et al. (2021, sec. 4) derive. With one particle there are no others, and
log w itself (~log p(x), a hundred nats on MNIST) would multiply every score: then each
decision a_k's score is multiplied by log w minus what was fixed before a_k was drawn (the
increments so far, and the remaining ones as if the chain stayed at u_{k-1}), which keeps
its expectation (:meth:`MonteCarloVAE_ELBO.score_surrogate`). ``score_warmup`` weights
the score term up linearly over the first training steps (biased meanwhile; 0: off).

**Learnt schedule** (``learn_schedule``). The increments beta_k - beta_{k-1} = softmax(c)_k of
K free logits c (``pyro.param("mcvae_schedule_logits")``, zeros at first: the linear schedule),
so beta stays increasing from 0 to 1. Both weights stay bounds for any such schedule, so c is
trained on the same bound as the networks (Thin et al. 2021 learn theirs the same way, by
the bound's gradient): through the drifts and reverse kernels (L-MCVAE), the AIS increments
and the decisions' probabilities (A-MCVAE).

**Step size.** One global eta (all latents, datapoints and steps share it; a per-latent eta
would need its own rule for the reverse kernel's scale), adapted after every training step by
the shared Robbins-Monro rule (:func:`aevb.inference.samplers.hmc.adapted`), log eta +=
gain (a - target), towards a target mean acceptance a of the moves. For ULA, a is the MALA
acceptance probability each move would have had, min(1, pi_k(u_k) L_k / (pi_k(u_{k-1}) M_k)),
computed without gradient and for adaptation only: a high acceptance means the unadjusted
move is close to one leaving pi_k invariant, so the reverse kernel is close to its reversal.

References:
    A. Thin, N. Kotelevskii, A. Durmus, M. Panov, E. Moulines, A. Doucet (2021), Monte Carlo
    Variational Auto-Encoders, ICML, arXiv:2106.15921.
    P. Del Moral, A. Doucet, A. Jasra (2006), Sequential Monte Carlo samplers, JRSS B 68(3).
    R. M. Neal (2001), Annealed importance sampling, Statistics and Computing 11.
    A. Mnih, D. J. Rezende (2016), Variational inference for Monte Carlo objectives, ICML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.poutine.util import prune_subsample_sites
from pyro.util import warn_if_nan

from aevb.errors import ObjectiveError
from aevb.settings import check_fields, setting


@dataclass(frozen=True)
class MCVAEConfig:
    """The settings of the Monte Carlo VAE objectives."""

    steps: int = setting(
        5, minimum=0, help="transitions K per particle: 5, one of Thin et al.'s L-MCVAE settings"
    )
    step_size: float = setting(
        0.01, minimum=0, above=True, help="the step size eta the adaptation starts from"
    )
    target_accept_prob: float = setting(
        0.8,
        minimum=0,
        above=True,
        help="the mean (MALA) acceptance eta is adapted towards: high, so that each ULA move "
        "nearly leaves its target invariant",
    )
    adapt_gain: float = setting(
        0.05, minimum=0, help="Robbins-Monro gain of log eta per training step (0: fixed eta)"
    )
    score_warmup: int = setting(
        0,
        minimum=0,
        help="A-MCVAE: training steps over which the decisions' score term is weighted up "
        "linearly from 0 to 1 (a biased gradient meanwhile); 0: full weight from the start",
    )
    learn_schedule: bool = setting(
        False,
        help="train the beta schedule's increments (softmax of K logits, linear at first) "
        "on the bound; False: beta_k = k / K",
    )

    def __post_init__(self):
        check_fields(self)


def betas(steps: int) -> list[float]:
    """The linear schedule beta_k = k / K, k = 0..K (beta_0 = 0: the encoder)."""
    return [k / steps for k in range(steps + 1)] if steps else [1.0]


#: the param-store name of the learnt schedule's logits
SCHEDULE_LOGITS = "mcvae_schedule_logits"


def learnt_betas(steps: int, like: torch.Tensor) -> list:
    """beta_0 = 0, then the cumulative softmax of ``steps`` logits (a Pyro parameter, zeros
    at first: k / steps); the last is set to exactly 1 and the others are tensors, so the
    bound's gradient reaches the logits."""
    if steps == 0:
        return [1.0]
    logits = pyro.param(SCHEDULE_LOGITS, lambda: like.new_zeros(steps))
    if logits.shape != (steps,):
        raise ObjectiveError(
            f"{SCHEDULE_LOGITS}: the param store holds {tuple(logits.shape)} logits, "
            f"expected ({steps},) for {steps} steps; clear the param store"
        )
    cumulative = torch.cumsum(torch.softmax(logits, 0), 0)
    return [0.0, *cumulative[:-1].unbind(), 1.0]


def ula_log_density(u_from, u_to, grad_from, eta: float) -> torch.Tensor:
    """log N(u_to; u_from + eta grad_from, 2 eta I) per row [N] of [N, D] tensors: the ULA
    (and MALA proposal) transition density, written out."""
    d = u_to.shape[-1]
    r = u_to - u_from - eta * grad_from
    return -(r * r).sum(-1) / (4.0 * eta) - 0.5 * d * math.log(4.0 * math.pi * eta)


def repeated(args: tuple, n: int) -> tuple:
    """Each tensor argument with a leading batch axis of ``args[0]``'s length, repeated ``n``
    times along it (row i * B + b is particle i of datapoint b)."""
    batch = args[0].shape[0]

    def rep(a):
        if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == batch:
            return a.repeat(n, *([1] * (a.dim() - 1)))
        return a

    return tuple(rep(a) for a in args)


@dataclass
class Point:
    """A state u [N, D] with log q_u, log p_u [N] and their gradients in u [N, D]."""

    u: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    grad_q: torch.Tensor
    grad_p: torch.Tensor

    def log_pi(self, beta: float) -> torch.Tensor:
        """log pi_beta(u) up to its constant: (1 - beta) log q_u + beta log p_u."""
        return (1.0 - beta) * self.log_q + beta * self.log_p

    def grad_pi(self, beta: float) -> torch.Tensor:
        """grad_u log pi_beta(u)."""
        return (1.0 - beta) * self.grad_q + beta * self.grad_p


class Target:
    """log q_u(u|x) and log p_u(x, u) of a (model, guide) pair per row of u, on the batch
    ``args`` repeated for ``particles`` particles (rows particle-major)."""

    def __init__(self, model, guide, args: tuple, particles: int):
        # imported here: the samplers import objectives.jit, so this package's __init__
        # (which imports this module) must not import them at load time
        from aevb.inference.samplers.target import Latents

        self.model, self.guide = model, guide
        self.args = repeated(args, particles)
        # the guide draws first, so that the draws are those of the ELBOs under one seed
        # (finding the latents runs the model, whose prior draws use the generator too)
        with poutine.block(hide_types=["sample"]):
            self._draw = poutine.trace(guide).get_trace(*self.args)
        self.latents = Latents(model, self.args, jit=False)

    def draw(self) -> torch.Tensor:
        """u_0 [N, D]: the guide's reparameterised draw, made when the target was built."""
        values = {}
        for s in self.latents.sites:
            if s.name not in self._draw.nodes:
                raise ObjectiveError(f"the guide has no site {s.name!r}, a latent of the model")
            values[s.name] = self._draw.nodes[s.name]["value"]
        return self.latents.flatten(values)

    def log_q(self, u: torch.Tensor) -> torch.Tensor:
        """log q(T(u)|x) + log|det dT/du| per row [N], by the guide conditioned on T(u)."""
        return self.latents.guide_log_density(self.guide, u, self.args)

    def point(self, u: torch.Tensor, create_graph: bool) -> Point:
        """u with its log densities and their gradients (differentiable again with
        ``create_graph``, which needs u itself on the graph)."""
        with torch.enable_grad():
            if not u.requires_grad:
                u, create_graph = u.detach().requires_grad_(True), False
            log_q = self.log_q(u)
            log_p = self.latents.log_joint(u, self.args)
            (grad_q,) = torch.autograd.grad(log_q.sum(), u, create_graph=create_graph)
            (grad_p,) = torch.autograd.grad(log_p.sum(), u, create_graph=create_graph)
        return Point(u, log_q, log_p, grad_q, grad_p)


def ula_step(target: Target, start: Point, beta: float, eta: float, create_graph: bool):
    """One ULA move on pi_beta from ``start``: returns (end point, log L - log M [N],
    the move's MALA log acceptance probability [N], detached)."""
    grad_start = start.grad_pi(beta)
    u = start.u + eta * grad_start + math.sqrt(2.0 * eta) * torch.randn_like(start.u)
    end = target.point(u, create_graph)
    log_m = ula_log_density(start.u, end.u, grad_start, eta)
    log_l = ula_log_density(end.u, start.u, end.grad_pi(beta), eta)
    log_ratio = log_l - log_m
    with torch.no_grad():
        log_a = end.log_pi(beta) - start.log_pi(beta) + log_ratio
        log_a = torch.nan_to_num(log_a, nan=-math.inf).clamp(max=0.0)
    return end, log_ratio, log_a


def mala_step(target: Target, start: Point, beta: float, eta: float, create_graph: bool):
    """One MALA move on pi_beta from ``start``: returns (end point, log P(a) [N] of the
    decision taken, log acceptance probability [N], detached). A rejected row keeps
    ``start``'s values."""
    end, log_ratio, _ = ula_step(target, start, beta, eta, create_graph)
    log_alpha = (end.log_pi(beta) - start.log_pi(beta) + log_ratio).clamp(max=0.0)
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
    accept = torch.rand_like(log_alpha).log() < log_alpha.detach()
    log_reject = torch.log1p(-log_alpha.exp().clamp(max=1.0 - 1e-7))
    log_decision = torch.where(accept, log_alpha, log_reject)
    keep = accept.unsqueeze(-1)
    moved = Point(
        torch.where(keep, end.u, start.u),
        torch.where(accept, end.log_q, start.log_q),
        torch.where(accept, end.log_p, start.log_p),
        torch.where(keep, end.grad_q, start.grad_q),
        torch.where(keep, end.grad_p, start.grad_p),
    )
    return moved, log_decision, log_alpha.detach()


def log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/n) sum_i w_i over the particle axis 0 of [n, B]: one bound per datapoint."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def leave_one_out(log_w: torch.Tensor) -> torch.Tensor:
    """VIMCO's baseline per particle [n, B]: log (1/n) sum_j w_j with w_i replaced by the
    geometric mean of the other weights (Mnih & Rezende 2016); zeros when n = 1."""
    n = log_w.shape[0]
    if n == 1:
        return torch.zeros_like(log_w)
    others = (log_w.sum(0, keepdim=True) - log_w) / (n - 1)
    eye = torch.eye(n, dtype=torch.bool, device=log_w.device)
    swapped = torch.where(eye.unsqueeze(-1), others.unsqueeze(1), log_w.unsqueeze(0))
    return torch.logsumexp(swapped, dim=1) - math.log(n)


class MonteCarloVAE_ELBO(ELBO):  # noqa: N801 (Pyro's naming)
    """The shared part of L-MCVAE and A-MCVAE: ``num_particles`` particles per datapoint
    (vectorised: the batch is repeated, rows particle-major), the importance-weighted
    combination, and the step-size adaptation after each training step. A subclass says
    how one particle's log weight is made (:meth:`log_weights`)."""

    def __init__(self, num_particles: int = 1, config: MCVAEConfig | None = None, **kwargs):
        kwargs.setdefault("max_plate_nesting", 1)
        super().__init__(num_particles=num_particles, **kwargs)
        self.config = config or MCVAEConfig()
        #: the current step size eta (a float: one for every latent, datapoint and step)
        self.step_size = self.config.step_size
        #: the mean acceptance probability of the last training step's moves (NaN: none yet)
        self.accept_prob = math.nan
        #: training steps taken (the score term's warm-in counts them)
        self.steps_taken = 0
        #: the last call's (log P(a_k) [N], offset_k [N]) per decision: the one-particle
        #: score term's pieces (:meth:`score_surrogate`)
        self.decision_offsets: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("the Monte Carlo VAEs run their own traces (Target)")

    def state_dict(self) -> dict:
        """The adapted step size (and the last acceptance) and the steps taken, for the
        run's checkpoint."""
        return {
            "step_size": self.step_size,
            "accept_prob": self.accept_prob,
            "steps_taken": self.steps_taken,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's step size (and step count)."""
        self.step_size, self.accept_prob = state["step_size"], state["accept_prob"]
        self.steps_taken = state.get("steps_taken", 0)

    def score_weight(self) -> float:
        """The score term's weight at this step: min(1, steps taken / ``score_warmup``)."""
        warmup = self.config.score_warmup
        return 1.0 if warmup == 0 else min(1.0, self.steps_taken / warmup)

    def epoch_diagnostics(self) -> dict:
        """``step_size`` and ``accept_prob`` of the last training step, for history.csv."""
        return {"step_size": self.step_size, "accept_prob": self.accept_prob}

    def schedule(self, steps: int, like: torch.Tensor) -> list:
        """beta_0..beta_steps: linear, or learnt (``learn_schedule``)."""
        if self.config.learn_schedule:
            return learnt_betas(steps, like)
        return betas(steps)

    def log_weights(self, target: Target, create_graph: bool):
        """(log w [N], log P of the accept/reject decisions [N] or None, acceptance
        probabilities [steps, N] detached) for one run of the particles."""
        raise NotImplementedError

    def _run(self, model, guide, args, create_graph: bool):
        if not args:
            raise ObjectiveError("the Monte Carlo VAE objectives need the batch as an argument")
        target = Target(model, guide, args, self.num_particles)
        log_w, log_decisions, accept = self.log_weights(target, create_graph)
        n = self.num_particles
        log_w = log_w.reshape(n, -1)
        if log_decisions is not None:
            log_decisions = log_decisions.reshape(n, -1)
        return log_w, log_decisions, accept

    def loss(self, model, guide, *args, **kwargs):
        """-sum over the batch of log (1/n) sum_i w_i (no gradients kept, no adaptation)."""
        log_w, _, _ = self._run(model, guide, args, create_graph=False)
        loss = -float(log_mean_exp(log_w.detach()).sum())
        warn_if_nan(loss, "loss")
        return loss

    def score_surrogate(self, log_w: torch.Tensor, log_decisions: torch.Tensor, bound):
        """sum of signal x log P(decisions), whose gradient is the score term.

        Several particles: VIMCO's signal, the bound minus the leave-one-out baseline, times
        each particle's summed log P(a). One particle: per decision k, log w minus
        ``offsets[k]`` (recorded by :meth:`log_weights`): the part of log w fixed before a_k
        is drawn plus a baseline that is too (what the weight's remaining terms would be if
        the chain stayed where it is). Dropping terms that do not depend on a_k keeps each
        score's expectation; what is left is the change a_k and later moves make, a few nats
        where log w itself is ~log p(x) (a hundred on MNIST)."""
        if log_w.shape[0] > 1 or not self.decision_offsets:
            signal = (bound.unsqueeze(0) - leave_one_out(log_w)).detach()
            return (signal * log_decisions).sum()
        flat = log_w.reshape(-1).detach()
        return sum(((flat - offset) * log_p).sum() for log_p, offset in self.decision_offsets)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The loss, its gradients (pathwise, plus the decisions' score term where there are
        decisions) accumulated in the parameters, then one step-size update."""
        log_w, log_decisions, accept = self._run(model, guide, args, create_graph=True)
        bound = log_mean_exp(log_w)
        surrogate = bound.sum()
        if log_decisions is not None:  # the score term of the accept/reject decisions
            score = self.score_surrogate(log_w, log_decisions, bound)
            surrogate = surrogate + self.score_weight() * score
        if surrogate.requires_grad:
            (-surrogate).backward()
        self.steps_taken += 1
        self.adapt(accept)
        loss = -float(bound.detach().sum())
        warn_if_nan(loss, "loss")
        return loss

    def adapt(self, accept: torch.Tensor | None) -> None:
        """eta <- eta exp(gain (mean acceptance - target)), the shared Robbins-Monro rule."""
        from aevb.inference.samplers.hmc import adapted  # see Target.__init__

        if accept is None or accept.numel() == 0:
            return
        self.accept_prob = float(torch.nan_to_num(accept, nan=0.0).mean())
        cfg = self.config
        self.step_size = adapted(
            self.step_size, self.accept_prob, cfg.target_accept_prob, cfg.adapt_gain
        )


class LangevinMCVAE_ELBO(MonteCarloVAE_ELBO):  # noqa: N801 (Pyro's naming)
    """L-MCVAE: K annealed ULA steps from the encoder's draw, the ULA kernel as its own
    reverse kernel (see the module docstring for the weight).

    Example::

        >>> from aevb import data, guides
        >>> from aevb.inference.objectives.mcvae import LangevinMCVAE_ELBO
        >>> model = data.fa_truth(); guide = guides.default_for(model)
        >>> _, test = data.load("fa-synthetic")
        >>> loss = LangevinMCVAE_ELBO(5).loss_and_grads(model, guide, test.x[:10])
    """

    def log_weights(self, target: Target, create_graph: bool):
        point = target.point(target.draw(), create_graph)
        eta, schedule = self.step_size, self.schedule(self.config.steps, point.u)
        log_w, accepts = -point.log_q, []
        for beta in schedule[1:]:
            point, log_ratio, log_a = ula_step(target, point, beta, eta, create_graph)
            log_w = log_w + log_ratio
            accepts.append(log_a.exp())
        log_w = log_w + point.log_p
        return log_w, None, torch.stack(accepts) if accepts else None


class MALAMCVAE_ELBO(MonteCarloVAE_ELBO):  # noqa: N801 (Pyro's naming)
    """A-MCVAE: AIS with K MALA moves. The schedule has K + 1 increments,
    beta_k = k / (K + 1), so that every move changes the weight:
    log w = sum_{k=1}^{K+1} (beta_k - beta_{k-1}) (log p_u(x, u_{k-1}) - log q_u(u_{k-1}|x))
    with u_k ~ MALA(pi_k) from u_{k-1}, k = 1..K (K = 0: the ELBO's weight)."""

    def log_weights(self, target: Target, create_graph: bool):
        point = target.point(target.draw(), create_graph)
        eta, schedule = self.step_size, self.schedule(self.config.steps + 1, point.u)
        self.decision_offsets = []
        log_w = torch.zeros_like(point.log_q)
        log_decisions, accepts = torch.zeros_like(log_w), []
        for k in range(1, len(schedule)):
            log_w = log_w + (schedule[k] - schedule[k - 1]) * (point.log_p - point.log_q)
            if k < len(schedule) - 1:
                # fixed before a_k: log w so far, and the remaining increments at u_{k-1}
                stay = (1.0 - schedule[k]) * (point.log_p - point.log_q)
                offset = (log_w + stay).detach()
                point, log_decision, log_a = mala_step(
                    target, point, schedule[k], eta, create_graph
                )
                self.decision_offsets.append((log_decision, offset))
                log_decisions = log_decisions + log_decision
                accepts.append(log_a.exp())
        return log_w, log_decisions, torch.stack(accepts) if accepts else None


def make_l_mcvae(k: int, alpha: float | None, nesting: int, config: MCVAEConfig | None = None):
    """L-MCVAE with ``k`` particles per datapoint (``config``: K, eta and its adaptation)."""
    return LangevinMCVAE_ELBO(k, config, max_plate_nesting=nesting)


def make_a_mcvae(k: int, alpha: float | None, nesting: int, config: MCVAEConfig | None = None):
    """A-MCVAE with ``k`` particles per datapoint (``config``: K, eta and its adaptation)."""
    cfg = config or MCVAEConfig(steps=3)
    return MALAMCVAE_ELBO(k, cfg, max_plate_nesting=nesting)


def continuous_latents(model_trace, guide_trace) -> str | None:
    """Why the Monte Carlo VAEs cannot run on this pair (None: they can): every latent of
    the model continuous, and the guide's sites exactly the model's latents."""
    latents = []
    model_trace, guide_trace = (prune_subsample_sites(t) for t in (model_trace, guide_trace))
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn: Any = site["fn"]
        if fn.support.is_discrete:
            return (
                f"Langevin and MALA moves need continuous latents; the model's site {name!r} "
                f"is discrete ({type(fn).__name__}). Marginalise it in the model, or use "
                "enum, trace or rws"
            )
        latents.append(name)
    guided = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"]
    if sorted(guided) != sorted(latents):
        return (
            f"the guide must propose exactly the model's latents {sorted(latents)} (one "
            f"q(z|x) for the moves to start from); it samples {sorted(guided)}"
        )
    return None
