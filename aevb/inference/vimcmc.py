"""MCMC-refined variational inference: the encoder proposes, HMC refines, the decoder learns
from the refined draws (Hoffman 2017).

Fisher's identity gives the model's gradient as an expectation under the exact posterior,

    grad_theta log p_theta(x) = E_{p_theta(z|x)}[grad_theta log p_theta(x, z)],

so any draw from p_theta(z|x) gives an unbiased gradient of the evidence itself, not of a bound.
Per minibatch x_1..x_B::

    encoder:  one Adam step on its own objective (``trace``: the ELBO; ``iwae``: the
              k-sample bound), gradients to the guide's parameters only, plus, with
              ``encoder_refined`` = lambda > 0, on -(lambda/B) sum_i log q_phi(z_i^K|x_i);
    refine:   z_i^0 ~ q_phi(z|x_i), then K HMC transitions per datapoint on p_theta(z|x_i)
              (:class:`~aevb.inference.samplers.hmc.BatchedHMC`: one chain, step size and
              Metropolis test per datapoint, the step size adapting towards 90% acceptance
              and kept per datapoint between visits);
    decoder:  one Adam step on -(1/B) sum_i log p_theta(x_i, z_i^K).

Each transition leaves p_theta(z|x) invariant, so z^K is closer to the posterior than z^0 and
exact once the chain has mixed; the decoder's gradient is then Fisher's identity at one
draw. With K = 0 the decoder would learn from q's draws: the ELBO's decoder gradient. The
encoder starts every chain, so its bias is corrected rather than inherited (the decoder is no
longer pulled towards posteriors the encoder can represent, Cremer et al. 2018), while q's
quality decides how few transitions suffice. MCEM (:mod:`aevb.inference.mcem`) is the case
without an encoder: chains start where they stopped one epoch earlier.

**The encoder's lag.** The decoder follows Fisher's identity, not the encoder's bound, so
nothing keeps its posteriors where q can follow: in aevb's own grid at K = 5 the encoder's test
ELBO fell every epoch while the decoder's AIS was the grid's best. ``encoder_refined`` adds
the fit of q to the refined draws, the maximum-likelihood step of amortised MCMC (Li, Turner &
Liu 2017): z^K is detached, so -log q_phi(z^K|x) moves q towards where HMC took its draws
(towards KL(p_K || q) of the refined law p_K, an inclusive divergence, alongside the
ELBO's exclusive one). The term reads q's density in the latents' unconstrained space
(:meth:`~aevb.inference.samplers.target.Latents.guide_log_density`); the Jacobian of z = T(u)
does not depend on phi, so its gradient is that of log q(z^K|x).

The history records, per epoch, the mean acceptance probability and step size of the
transitions and ``refine_gain``, the mean increase of log p(x, z) from z^0 to z^K per
datapoint (how far HMC moved q's draws towards the posterior's typical set).

References:
    M. D. Hoffman (2017), Learning Deep Latent Gaussian Models with Markov Chain Monte Carlo,
    ICML.
    A. Thin, A. Durmus, E. Moulines (2020), MCMC and Variational Inference for
    AutoEncoders (slides; the project's seed 004).
    C. Cremer, X. Li, D. Duvenaud (2018), Inference Suboptimality in Variational
    Autoencoders, ICML.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from aevb.inference import rundir
from aevb.inference.loop import apply_gradients
from aevb.inference.mcem import model_param_names
from aevb.inference.method import (
    ObjectiveConfig,
    ObjectiveMethod,
    objective_settings,
    register,
    run_method,
)
from aevb.inference.objectives import OBJECTIVES, check_compatible, make_objective
from aevb.inference.optim import Adam
from aevb.inference.record import Run
from aevb.inference.samplers import BatchedHMC, Latents, sampler_from_options
from aevb.inference.samplers.chains import ChainState
from aevb.settings import setting


@dataclass(frozen=True)
class VIMCMCConfig(ObjectiveConfig):
    """Settings of one MCMC-refined VI run (recorded in ``config.json``): the encoder's
    objective (:class:`~aevb.inference.method.ObjectiveConfig`) and the HMC refinement."""

    mcmc_steps: int = setting(
        5, minimum=1, help="K, HMC transitions from the encoder's draw per datapoint and minibatch"
    )
    leapfrog_steps: int = setting(
        BatchedHMC.num_steps, minimum=1, help="leapfrog steps per HMC transition"
    )
    init_step_size: float = setting(
        0.1,
        minimum=0,
        above=True,
        help="the first step size of a datapoint's chain before its one-step search",
    )
    encoder_refined: float = setting(
        0.0,
        minimum=0,
        help="lambda: the encoder's loss gains -lambda log q(z^K|x) at the refined draws "
        "(amortised MCMC's fit of q to them); 0: the encoder learns from its objective only",
    )


def leapfrog(cfg: VIMCMCConfig) -> dict:
    """The batched HMC sampler's options of a vi-mcmc run."""
    return {"num_steps": cfg.leapfrog_steps}


class VIMCMCAlgorithm:
    """Encoder step on its objective, K HMC transitions from its draws, decoder step on the
    refined draws; one step size per training datapoint, kept in the checkpoint."""

    def __init__(self, model, guide, cfg: VIMCMCConfig):
        self.model, self.guide, self.cfg = model, guide, cfg
        k = cfg.particles or OBJECTIVES[cfg.objective].default_particles
        self.elbo: Any = make_objective(
            cfg.objective, k, cfg.alpha, cfg.max_plate_nesting, cfg.objective_options
        )
        self.sampler = sampler_from_options("batched-hmc", leapfrog(cfg), adapt_online=True)
        self.optim = Adam(cfg.lr, cfg.betas, cfg.eps)
        self.latents: Latents | None = None
        self.model_params: set[str] = set()
        #: one step size per datapoint, visit marks, running means
        self.chains = ChainState()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.chains.reset_counters()
        self._gain: list[float] = []
        self._refined_log_q: list[float] = []
        self._mcmc_seconds = 0.0

    def prepare(self, ds, first_batch: tuple) -> None:
        """Refuse a guide the encoder's objective would train wrong and a model HMC cannot
        sample; allocate one step size per datapoint."""
        cfg = self.cfg
        check_compatible(cfg.objective, self.model, self.guide, *first_batch, alpha=cfg.alpha)
        self.latents = Latents(self.model, first_batch)
        self.model_params = set(model_param_names(self.model, ds))
        self.chains.allocate(len(ds), len(ds), first_batch[0], cfg.init_step_size)

    def begin_epoch(self, epoch: int) -> None:
        """Nothing per epoch."""

    def encoder_step(self, args: tuple) -> float:
        """The objective's gradients, kept for the guide's parameters only."""
        loss = self.elbo.loss_and_grads(self.model, self.guide, *args)
        for name, p in pyro.get_param_store().named_parameters():
            if name in self.model_params:
                p.grad = None
        return float(loss)

    def refine(self, args: tuple, index: torch.Tensor) -> torch.Tensor:
        """z^0 ~ q(z|x), K transitions per datapoint; the refined u^K [B, D] (detached)."""
        assert self.latents is not None
        t0 = time.perf_counter()
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(self.guide).get_trace(*args)
        u0 = self.latents.flatten(
            {s.name: trace.nodes[s.name]["value"] for s in self.latents.sites}
        )
        chains = self.chains
        new = chains.new(index)
        eps = chains.start_step_sizes(self.sampler, self.latents, args, u0, index, new)
        state = self.sampler.sample(self.latents, args, u0, eps, self.cfg.mcmc_steps)
        chains.step_size[index] = state.step_size.detach()
        chains.visited[index] = True
        # log p(x, z) + log|J| = -U: the sampler's potentials at the start and the end
        gain = state.diagnostics["start_potential"] - state.diagnostics["potential"]
        self._gain.append(float(gain.mean()))
        chains.record(state)
        self._mcmc_seconds += time.perf_counter() - t0
        return state.u.detach()

    def decoder_loss(self, u: torch.Tensor, args: tuple) -> torch.Tensor:
        """-sum_i log p_theta(x_i, z_i) at the (detached) draws u [B, D]: its theta-gradient
        is Fisher's identity at one draw per datapoint when u ~ p_theta(z|x)."""
        assert self.latents is not None
        return -self.latents.log_joint(u, args).sum()

    def refined_fit_loss(self, u: torch.Tensor, args: tuple) -> torch.Tensor:
        """-lambda sum_i log q_phi(z_i|x_i) at the (detached) refined draws u [B, D]: the
        encoder's fit to them (its gradient reaches the guide's parameters only)."""
        assert self.latents is not None
        log_q = self.latents.guide_log_density(self.guide, u, args)
        self._refined_log_q.append(float(log_q.detach().mean()))
        return -self.cfg.encoder_refined * log_q.sum()

    def step(self, args: tuple, index: torch.Tensor) -> float:
        """Encoder step, refinement, decoder step; returns the encoder's loss (summed)."""
        index = index.to(self.chains.step_size.device)
        loss = self.encoder_step(args)
        u = self.refine(args, index)
        if self.cfg.encoder_refined > 0:
            self.refined_fit_loss(u, args).backward()
        self.decoder_loss(u, args).backward()
        apply_gradients(self.optim, len(index), self.cfg.freeze)
        return loss

    def epoch_diagnostics(self) -> dict:
        """Mean acceptance, step size, log-joint gain, seconds spent in HMC and (with
        ``encoder_refined``) the mean log q(z^K|x) at the refined draws (then reset)."""
        row = {
            **self.chains.means(),
            "refine_gain": sum(self._gain) / max(len(self._gain), 1),
            "mcmc_seconds": self._mcmc_seconds,
        }
        if self.cfg.encoder_refined > 0:
            row["refined_log_q"] = sum(self._refined_log_q) / max(len(self._refined_log_q), 1)
        self._reset_counters()
        return row

    def state_dict(self) -> dict:
        """Optimiser, step sizes and visit marks for the checkpoint."""
        return {
            "optim": self.optim.state_dict(),
            **self.chains.state_dict(),  # step_size, visited
            "epoch_diagnostics": (list(self.chains.acc), list(self.chains.eps), list(self._gain)),
            "refined_log_q": list(self._refined_log_q),
            "mcmc_seconds": self._mcmc_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.optim.load_state_dict(state["optim"])
        self.chains.load_state_dict(state)
        acc, eps, gain = state["epoch_diagnostics"]
        self.chains.acc, self.chains.eps, self._gain = list(acc), list(eps), list(gain)
        self._mcmc_seconds = state["mcmc_seconds"]
        self._refined_log_q = list(state.get("refined_log_q", []))


class VIMCMC(ObjectiveMethod):
    """What MCMC-refined VI adds to the shared path (:mod:`aevb.inference.method`): the
    encoder's objective (``trace`` where none is given), the sampler's options checked."""

    name, title, config, settings_name = "vi-mcmc", "MCMC-refined VI", VIMCMCConfig, "vi-mcmc"
    curve = "encoder bound"

    def configure(self, model, settings: dict) -> VIMCMCConfig:
        cfg = self.config(**objective_settings(settings, "trace"))
        return cfg

    def algorithm(self, model, guide, cfg: VIMCMCConfig) -> VIMCMCAlgorithm:
        return VIMCMCAlgorithm(model, guide, cfg)

    def label(self, cfg: VIMCMCConfig) -> str:
        return f"vi-mcmc{cfg.mcmc_steps}" + ("-refined" if cfg.encoder_refined else "")

    def run_name(self, cfg: VIMCMCConfig) -> str:
        refined = f"-refined{cfg.encoder_refined:g}" if cfg.encoder_refined else ""
        return f"vi-mcmc{cfg.mcmc_steps}-{cfg.objective}{cfg.particles}{refined}"

    def upgrade_spec(self, settings: dict) -> dict:
        return rundir.upgrade_vimcmc_settings(settings)


register(VIMCMC())


def fit(model, guide=None, train=None, **kwargs) -> Run:
    """Train ``model`` and ``guide`` by MCMC-refined VI on ``train``; return a :class:`Run`.

    :param kwargs: how the run runs (:class:`~aevb.inference.method.RunOptions`, as for
        :func:`aevb.inference.fit`) and fields of :class:`VIMCMCConfig` (``mcmc_steps``,
        ``objective``, ``epochs``, ...); those left out take the model's recipe, then the
        defaults.

    The history's ``train_loss`` is the encoder objective's loss per datapoint.

    Example:
        >>> from aevb import data, inference, models
        >>> x = data.fa_truth().generate(64)
        >>> run = inference.vimcmc_fit(models.build("fa"), None, x, epochs=2, batch_size=32)
        >>> list(run.history["epoch"]), "refine_gain" in run.history
        ([1, 2], True)
    """
    return run_method("vi-mcmc", model, guide, train, **kwargs)


__all__ = ["VIMCMC", "VIMCMCAlgorithm", "VIMCMCConfig", "fit"]
