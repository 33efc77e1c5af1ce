"""MetFlow / MetVAE (Thin, Kotelevskii, Denain, Grinsztajn, Durmus, Panov & Moulines 2020):
Metropolis-Hastings steps whose proposals are invertible flow maps, inside the variational
family, scored by an ELBO on the extended space of the accept/reject decisions.

Everything runs in the unconstrained space of the model's latents, as the Monte Carlo VAEs
do (:mod:`aevb.inference.objectives.mcvae`: u in R^D per datapoint, pi(u) = p_u(x, u) the
joint with the Jacobian of z = T(u), q_0(u|x) the guide's density of u).

**The kernel** (this module's equations (1)-(2); MetFlow's kernel with the simplest noise the
paper allows). Step k has one invertible map F_k: R^D -> R^D (Pyro's
``affine_autoregressive``, the IAF guide's transform family) and a noise xi_k = v_k, a
direction drawn uniformly from {+1, -1}; the move is T_{k,+1} = F_k, T_{k,-1} = F_k^{-1}.
From u, propose u' = T_{k,v}(u) and accept (a_k = 1) with probability

    (1)  alpha_{k,v}(u) = min(1, pi(T_{k,v}(u)) |det J_{T_{k,v}}(u)| / pi(u)),

else stay (a_k = 0). (u, v) -> (T_{k,v}(u), -v) is an involution and v's law is symmetric, so
this kernel leaves pi invariant (the deterministic-proposal Metropolis-Hastings of Tierney
1998, the involutive MCMC of Neklyudov et al. 2020); without the Jacobian in (1) it does not.

**The variational law.** u_0 ~ q_0 (reparameterised), then K such steps. Given the noises
xi = v_{1:K}, the pair (u_K, a_{1:K}) has the density (change of variables through the
accepted maps only, times the probability of each decision)

    (2)  q_K(u_K, a_{1:K} | xi) = q_0(u_0) prod_{k: a_k = 1} |det J_{T_k}(u_{k-1})|^(-1)
                                  prod_k alpha_k(u_{k-1})^(a_k) (1 - alpha_k(u_{k-1}))^(1 - a_k),

whose u_K-marginal, a sum over the 2^K decision paths, is a mixture of flow-based densities
(the paper's point): it is never computed.

**The extended-space ELBO** (3). The target on the same extended space is
pi(u_K) g(xi) m(a_{1:K}), with g the noises' own law (it cancels) and m a fixed law of the
decisions, Bernoulli(rho) per step (``decision_prior``). No reverse kernel on the states is
needed: u_K and the decisions determine the path. Per particle

    (3)  log w = log p_u(x, u_K) - log q_0(u_0|x) + sum_{k: a_k = 1} log|det J_{T_k}(u_{k-1})|
                 + sum_k [log m(a_k) - log P(a_k | u_{k-1})],

with E_q[w] = sum_a int p_u(x, u) m(a) du = p(x) for every xi, so E log w <= log p(x) and the
usual importance-weighted combination over particles is a bound too. Its gap is the flow
mixture's KL plus E KL(q(a | u_K, xi) || m): m is what makes (3) a bound. Dropping it (log w =
log p - log q_K(u_K, a | xi), the joint density (2) against pi alone) overstates log p(x) by
up to the decisions' conditional entropy, at most K log 2; this module keeps m and says so.
(We could read only the paper's abstract when this was written: (1)-(3) are derived here, on
the paper's construction, not copied from its equations.)

**Forced acceptance** (``force_accept``, for tests): a_k = 1 and m(1) = 1 at every step, so
(3) is the flow's own ELBO, log p_u(x, u_K) - log q_0(u_0) + sum_k log|det J_{T_k}(u_{k-1})|
with u_K = T_K o ... o T_1(u_0).

**Gradient.** The states, the maps and (1) are differentiated pathwise; the decisions a_k ~
Bernoulli(alpha_k) depend on the parameters, so the gradient adds their score term with the
leave-one-out baseline (with one particle: per decision, log w less what was fixed before it
and log p_u(x, u_{k-1})), as A-MCVAE does
(:class:`MonteCarloVAE_ELBO`). The maps F_k
belong to the variational family: they are made lazily (once D is known, on the latents'
device and dtype) and registered with ``pyro.module("metflow", ...)``, so the optimiser
trains them and checkpoints keep them. Evaluation (IS, AIS) still proposes from the guide q_0.

References:
    A. Thin, N. Kotelevskii, J.-S. Denain, L. Grinsztajn, A. Durmus, M. Panov, E. Moulines
    (2020), MetFlow: A New Efficient Method for Bridging the Gap between Markov Chain Monte
    Carlo and Variational Inference, arXiv:2002.12253.
    L. Tierney (1998), A note on Metropolis-Hastings kernels for general state spaces, Annals
    of Applied Probability 8(1).
    K. Neklyudov, M. Welling, E. Egorov, D. Vetrov (2020), Involutive MCMC: a Unifying
    Framework, ICML, arXiv:2006.16653.
    D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling (2016),
    Improved Variational Inference with Inverse Autoregressive Flow, NeurIPS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro.distributions.transforms import affine_autoregressive
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.infer import ELBO
from torch import nn

from aevb.errors import ConfigError
from aevb.inference.objectives.mcvae import MonteCarloVAE_ELBO, Target
from aevb.settings import check_fields, setting


@dataclass(frozen=True)
class MetFlowConfig:
    """The settings of the MetFlow objective."""

    steps: int = setting(
        3,
        minimum=0,
        help="MetFlow steps K per particle: 3, a few flow-proposal moves as A-MCVAE's default "
        "(each costs a flow pass each way and one model evaluation)",
    )
    flow_hidden: int = setting(
        0,
        minimum=0,
        help="width of each step's MADE hidden layer; 0: 4 D (D latent dimensions), as the IAF "
        "guide's linear-encoder default",
    )
    decision_prior: float = setting(
        0.5,
        minimum=0,
        above=True,
        help="rho, the target's probability of each accept decision (below 1): 0.5, the "
        "uniform law over the 2^K paths, which needs no knowledge of the acceptance rate",
    )
    score_warmup: int = setting(
        0,
        minimum=0,
        help="training steps over which the decisions' score term is weighted up linearly "
        "from 0 to 1 (a biased gradient meanwhile); 0: full weight from the start",
    )
    force_accept: bool = setting(
        False,
        help="accept every proposal (and m(1) = 1): the bound is then the flow's own ELBO; "
        "for tests",
    )

    def __post_init__(self):
        check_fields(self)
        if not self.decision_prior < 1:
            raise ConfigError(f"decision_prior: must be < 1, got {self.decision_prior}")


def _log_scale(flow, u: torch.Tensor):
    """(shift, clipped log scale) of the affine autoregressive map ``flow`` at u."""
    mean, log_scale = flow.arn(u)
    return mean, clamp_preserve_gradients(
        log_scale, flow.log_scale_min_clip, flow.log_scale_max_clip
    )


def flow_forward(flow, u: torch.Tensor):
    """F(u) = exp(s(u)) u + m(u) (Pyro's ``AffineAutoregressive``, non-stable form) and
    log|det J_F(u)| = sum_i s_i(u) [N]: one MADE pass."""
    mean, log_scale = _log_scale(flow, u)
    return log_scale.exp() * u + mean, log_scale.sum(-1)


def flow_inverse(flow, y: torch.Tensor):
    """F^{-1}(y), one coordinate per MADE pass in the MADE's order, and
    log|det J_{F^{-1}}(y)| = -sum_i s_i(F^{-1}(y)) [N]. (Pyro 1.9.2's own inverse starts
    from float32 zeros whatever y's dtype, so float64 latents need this one.)"""
    xs = [torch.zeros_like(y[..., 0])] * y.shape[-1]
    for idx in flow.arn.permutation.tolist():
        mean, log_scale = _log_scale(flow, torch.stack(xs, dim=-1))
        xs[idx] = (y[..., idx] - mean[..., idx]) * torch.exp(-log_scale[..., idx])
    x = torch.stack(xs, dim=-1)
    _, log_scale = _log_scale(flow, x)
    return x, -log_scale.sum(-1)


def flow_map(flow, u: torch.Tensor, forward: torch.Tensor):
    """T_v(u) per row and log|det J_{T_v}(u)| [N]: F where ``forward`` [N] is true, F^{-1}
    elsewhere."""
    ahead, ladj_ahead = flow_forward(flow, u)
    back, ladj_back = flow_inverse(flow, u)
    return (
        torch.where(forward.unsqueeze(-1), ahead, back),
        torch.where(forward, ladj_ahead, ladj_back),
    )


@dataclass
class Move:
    """One MetFlow step's outcome per row: the new state and its log p_u, the step's
    increment of (3), log P(a_k) of the decision taken, and alpha_k (detached)."""

    u: torch.Tensor
    log_p: torch.Tensor
    increment: torch.Tensor
    log_decision: torch.Tensor
    accept_prob: torch.Tensor


def metflow_step(
    target: Target, flow, u, log_p, forward, config: MetFlowConfig, uniform: torch.Tensor
) -> Move:
    """One Metropolis-Hastings move with the flow proposal (1); ``uniform`` [N] decides."""
    proposal, ladj = flow_map(flow, u, forward)
    log_p_new = target.latents.log_joint(proposal, target.args)
    log_alpha = (log_p_new + ladj - log_p).clamp(max=0.0)
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
    if config.force_accept:
        log_alpha = torch.zeros_like(log_alpha)
    accept = uniform.log() < log_alpha.detach()
    if config.force_accept:
        accept = torch.ones_like(accept)
    log_reject = torch.log1p(-log_alpha.exp().clamp(max=1.0 - 1e-7))
    log_decision = torch.where(accept, log_alpha, log_reject)
    rho = 1.0 if config.force_accept else config.decision_prior
    log_m = torch.where(
        accept,
        torch.full_like(log_alpha, math.log(rho)),
        torch.full_like(log_alpha, math.log1p(-rho) if rho < 1 else -math.inf),
    )
    jacobian = torch.where(accept, ladj, torch.zeros_like(ladj))
    return Move(
        torch.where(accept.unsqueeze(-1), proposal, u),
        torch.where(accept, log_p_new, log_p),
        jacobian + log_m - log_decision,
        log_decision,
        log_alpha.detach().exp(),
    )


class MetFlow_ELBO(MonteCarloVAE_ELBO):  # noqa: N801 (Pyro's naming)
    """MetFlow's extended-space bound (3), importance-weighted over ``num_particles``
    particles, with the decisions' score term (the module docstring has the derivation).

    Example::

        >>> from aevb import data, guides
        >>> from aevb.inference.objectives.metflow import MetFlow_ELBO
        >>> model = data.fa_truth(); guide = guides.default_for(model)
        >>> _, test = data.load("fa-synthetic")
        >>> loss = MetFlow_ELBO(2).loss_and_grads(model, guide, test.x[:10])
    """

    #: its own settings (not the Monte Carlo VAEs' MCVAEConfig)
    config: MetFlowConfig  # type: ignore[assignment]

    def __init__(self, num_particles: int = 1, config: MetFlowConfig | None = None, **kwargs):
        # not MonteCarloVAE_ELBO.__init__: MetFlow has no step size to adapt
        kwargs.setdefault("max_plate_nesting", 1)
        ELBO.__init__(self, num_particles=num_particles, **kwargs)
        self.config = config or MetFlowConfig()
        #: the mean acceptance probability of the last training step's moves (NaN: none yet)
        self.accept_prob = math.nan
        #: training steps taken (the score term's warm-in counts them)
        self.steps_taken = 0
        #: the last call's (log P(a_k), offset_k) per decision (the one-particle score term)
        self.decision_offsets: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: the K maps F_k, made on the first call (when D is known)
        self.flows: nn.ModuleList | None = None
        self._dim: int | None = None

    def state_dict(self) -> dict:
        """The last acceptance and the steps taken (the maps live in the param store)."""
        return {"accept_prob": self.accept_prob, "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        self.accept_prob = state["accept_prob"]
        self.steps_taken = state.get("steps_taken", 0)

    def epoch_diagnostics(self) -> dict:
        """``accept_prob`` of the last training step, for history.csv."""
        return {"accept_prob": self.accept_prob}

    def adapt(self, accept: torch.Tensor | None) -> None:
        """Record the mean acceptance (nothing is adapted)."""
        if accept is not None and accept.numel():
            self.accept_prob = float(torch.nan_to_num(accept, nan=0.0).mean())

    def maps(self, like: torch.Tensor) -> nn.ModuleList:
        """The K maps for latents shaped like ``like`` [N, D], registered with Pyro."""
        d = like.shape[-1]
        if self.flows is None or self._dim != d:
            self._dim = d
            hidden = self.config.flow_hidden or 4 * d
            self.flows = nn.ModuleList(
                affine_autoregressive(d, hidden_dims=[max(hidden, d)])
                for _ in range(self.config.steps)
            ).to(like)
        pyro.module("metflow", self.flows, update_module_params=True)
        return self.flows

    def log_weights(self, target: Target, create_graph: bool):
        u = target.draw()
        flows = self.maps(u)
        log_p = target.latents.log_joint(u, target.args)
        log_w = -target.log_q(u)
        self.decision_offsets = []
        log_decisions, accepts = torch.zeros_like(log_w), []
        n, steps = u.shape[0], len(flows)
        directions = torch.rand(steps, n, dtype=u.dtype, device=u.device) < 0.5
        for k, flow in enumerate(flows):
            uniform = torch.rand(n, dtype=u.dtype, device=u.device)
            # fixed before a_k: log w so far, and log p_u(x, u_{k-1}) (the end if it stayed)
            offset = (log_w + log_p).detach()
            move = metflow_step(target, flow, u, log_p, directions[k], self.config, uniform)
            self.decision_offsets.append((move.log_decision, offset))
            u, log_p = move.u, move.log_p
            log_w = log_w + move.increment
            log_decisions = log_decisions + move.log_decision
            accepts.append(move.accept_prob)
        log_w = log_w + log_p
        return log_w, log_decisions, torch.stack(accepts) if accepts else None


def make_metflow(k: int, alpha: float | None, nesting: int, config: MetFlowConfig | None = None):
    """MetFlow with ``k`` particles per datapoint (``config``: K, the maps' width, rho)."""
    return MetFlow_ELBO(k, config, max_plate_nesting=nesting)
