"""Monte Carlo EM: learn theta of p_theta(x, z) with posterior samples instead of an encoder.

EM maximises log p_theta(x) by alternating an E-step (the posterior p_theta(z | x)) and an
M-step (maximise E_{p_theta_old(z|x)}[log p_theta(x, z)] over theta). With an intractable
posterior the E-step is replaced by MCMC draws, and the M-step by stochastic gradient steps on
the Monte Carlo average (Wei & Tanner 1990). Per minibatch x_1..x_B::

    E-step:  z_i^(s) ~ p_theta(z | x_i), s = 1..S, by HMC/NUTS with theta held fixed,
             continuing each datapoint's chain from where it stopped at its last visit;
    M-step:  ``m_steps`` Adam steps on  -(1/(B S)) sum_i sum_s log p_theta(x_i, z_i^(s)).

This is the baseline of Kingma & Welling (2013, sec. 5): 10 leapfrog steps per E-step with the
step size tuned to ~90% acceptance, then 5 weight updates. MCEM needs the model only; no guide
is trained. To score the trained model by importance sampling, :func:`fit` then fits a
proposal q(z | x) (the model's default guide) with theta frozen — the approximate E-step of
AEVB — and stores it in the run, so ``aevb evaluate`` works as for an SVI run. The proposal
used is recorded in ``config.json`` under ``"proposal"``.

References:
    G. C. G. Wei, M. A. Tanner (1990), A Monte Carlo Implementation of the EM Algorithm,
    JASA 85(411).
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 5.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyro
import pyro.poutine as poutine
import torch

from aevb.data.dataset import Dataset
from aevb.errors import ConfigError
from aevb.inference import rundir
from aevb.inference.diagnostics import EpochChainDiagnostics
from aevb.inference.loop import LoopConfig, apply_gradients
from aevb.inference.method import Method, RunOptions, launch, prepare, register, run_method
from aevb.inference.objectives import OBJECTIVES
from aevb.inference.optim import Adam
from aevb.inference.record import Run, describe
from aevb.inference.samplers import (
    SAMPLERS,
    Latents,
    check_sampler_options,
    log_step_change,
    sampler_from_options,
)
from aevb.inference.samplers.chains import ChainState
from aevb.inference.saved import load_params
from aevb.settings import setting


@dataclass(frozen=True)
class MCEMConfig(LoopConfig):
    """Settings of one MCEM run (recorded in ``config.json``)."""

    sampler: str = setting(
        "batched-hmc",
        names=lambda: SAMPLERS,
        help="the E-step's sampler: hmc / nuts (Pyro's kernels, the minibatch as one chain) "
        "or batched-hmc (one chain and step size per datapoint)",
    )
    sampler_options: dict = setting(
        default_factory=dict,
        help="the sampler's own settings (fields of its class in SAMPLERS); each sampler's "
        "defaults follow Kingma & Welling's MCEM: 10 leapfrog steps per transition, step "
        "sizes tuned to 90% acceptance",
        unset="the sampler's",
    )
    num_samples: int = setting(
        1, minimum=1, help="transitions per E-step, each one draw in the M-step average"
    )
    first_visit_warmup: int = setting(
        10,
        minimum=0,
        help="extra adapting transitions at a datapoint's (or the shared chain's) first visit",
    )
    m_steps: int = setting(
        5, minimum=1, help="Adam steps per E-step: 5 weight updates per HMC sample in K&W"
    )
    init_step_size: float = setting(
        0.1, minimum=0, above=True, help="the step size before the first-visit search"
    )
    lr_decay: float = setting(
        1.0,
        minimum=0,
        above=True,
        help="the learning rate decays geometrically to lr * lr_decay over the first "
        "lr_decay_epochs epochs' steps and stays there, so the M-step's Monte Carlo noise "
        "averages out (decreasing gains as in stochastic-approximation EM, Delyon et al. 1999)",
    )
    lr_decay_epochs: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="the decay's length in epochs (needed when lr_decay != 1); a function of the step "
        "alone, so --resume --epochs N gives the same result as an uninterrupted N-epoch run",
        unset="none",
    )
    proposal_epochs: int = setting(
        10,
        minimum=0,
        help="after training, epochs fitting the proposal q(z|x) with theta frozen (0: none), "
        "for evaluation: on fa-synthetic 5 left IS-1000 1.4 nats below the exact evidence, 10 "
        "reached it within 0.001",
    )
    proposal_objective: str = setting(
        "trace", names=lambda: OBJECTIVES, help="the objective that fits the proposal"
    )


class MCEMAlgorithm:
    """E-step by a sampler from :data:`aevb.inference.samplers.SAMPLERS`, M-step by Adam;
    one chain state per training datapoint, kept in the checkpoint."""

    def __init__(self, model, cfg: MCEMConfig):
        self.model, self.cfg = model, cfg
        self.sampler = sampler_from_options(cfg.sampler, cfg.sampler_options, adapt_online=True)
        self.per_datapoint = self.sampler.per_datapoint
        self.optim = Adam(cfg.lr, cfg.betas, cfg.eps)
        self.latents: Latents | None = None
        # allocated by prepare(), on the device of the data
        self.u = torch.empty(0, device="cpu")
        #: per-datapoint (batched-hmc) or shared step sizes, visit marks, running means
        self.chains = ChainState()
        #: R-hat and ESS of the E-steps' kept draws (the first training datapoints')
        self.mixing = EpochChainDiagnostics(cfg.num_samples)
        #: batched-hmc: a shared log-scale on every chain's step size, moved after each
        #: E-step by the batch's mean acceptance. theta changes between two visits of a
        #: datapoint (one epoch apart); the shared scale follows it every step, the
        #: per-datapoint sizes keep what differs between datapoints.
        self.log_scale = 0.0
        self.t = 0
        self.decay_steps = 1
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.chains.reset_counters()
        self.mixing.reset()
        self._e_seconds = 0.0
        self._m_seconds = 0.0
        self._divergences = 0

    def prepare(self, ds: Dataset, first_batch: tuple) -> None:
        """Find the model's latents and allocate one chain state per datapoint."""
        self.latents = Latents(self.model, first_batch)
        n, d = len(ds), self.latents.dim
        x = first_batch[0]
        self.u = x.new_zeros(n, d)
        self.chains.allocate(n, n if self.per_datapoint else 1, x, self.cfg.init_step_size)
        if self.cfg.lr_decay_epochs is not None:
            self.decay_steps = self.cfg.lr_decay_epochs * ds.num_batches(self.cfg.batch_size)

    def begin_epoch(self, epoch: int) -> None:
        """Nothing per epoch: the learning rate follows the step (:meth:`lr_at`)."""

    def step(self, args: tuple, index: torch.Tensor) -> float:
        """E-step on the minibatch's chains, then ``m_steps`` Adam steps on the joint; returns the
        loss.
        """
        assert self.latents is not None
        cfg = self.cfg
        t0 = time.perf_counter()
        chains = self.chains
        index = index.to(self.u.device)
        new = chains.new(index)
        warmup = 0
        if bool(new.any()):  # start fresh chains from z ~ p(z)
            self.u[index[new]] = self.latents.prior_draw(args)[new]
        u0 = self.u[index]
        adapt = True
        if self.per_datapoint:  # a starting step size per new chain, then adapting warm-up
            scale = math.exp(self.log_scale)
            eps = chains.start_step_sizes(self.sampler, self.latents, args, u0, index, new, scale)
            if bool(new.any()):
                warmup = cfg.first_visit_warmup
        else:
            eps = chains.step_size
            if bool(new.any()):  # burn the new chains in; Pyro's dual averaging only once
                warmup = cfg.first_visit_warmup
                adapt = not bool(chains.visited.any())
        state = self.sampler.sample(
            self.latents, args, u0, eps, cfg.num_samples, warmup, adapt=adapt
        )
        self.u[index] = state.u.detach()
        chains.visited[index] = True
        if self.per_datapoint:
            chains.step_size[index] = state.step_size / math.exp(self.log_scale)
            accept = float(state.accept_prob.mean())
            gain = self.sampler.adapt_gain
            target = self.sampler.target_accept_prob
            self.log_scale += log_step_change(accept, target, gain)
        else:
            chains.step_size = state.step_size.reshape(1)
        chains.record(state)
        self._divergences += int(state.diagnostics.get("divergences", 0))
        self._e_seconds += time.perf_counter() - t0
        self.mixing.add(state.samples.detach(), index)  # R-hat, ESS: in neither step's seconds
        t1 = time.perf_counter()

        samples = state.samples.detach()
        self.optim.set_lr(self.lr_at(self.t))
        self.t += 1
        losses = []
        for _ in range(cfg.m_steps):
            joint = torch.stack([self.latents.log_joint(z, args).sum() for z in samples])
            loss = -joint.mean()
            loss.backward()
            apply_gradients(self.optim, len(index), cfg.freeze)
            losses.append(loss.item())
        self._m_seconds += time.perf_counter() - t1
        return losses[0] if losses else float("nan")  # at the E-step's theta, as in EM

    def lr_at(self, t: int) -> float:
        """The M-step's learning rate at (0-based) step t: lr * lr_decay^(t / (H - 1)) for the
        H steps of ``lr_decay_epochs`` epochs, then lr * lr_decay."""
        frac = min(t / max(self.decay_steps - 1, 1), 1.0)
        return self.cfg.lr * self.cfg.lr_decay**frac

    def epoch_diagnostics(self) -> dict:
        """Mean acceptance, step size, the E-step chains' R-hat and ESS
        (:class:`~aevb.inference.diagnostics.EpochChainDiagnostics`) and E/M-step seconds of
        the epoch (then reset)."""
        row = {
            **self.chains.means(),
            **self.mixing.summary(),
            "e_step_seconds": self._e_seconds,
            "m_step_seconds": self._m_seconds,
        }
        if not self.per_datapoint:
            row["divergences"] = self._divergences
        self._reset_counters()
        return row

    def state_dict(self) -> dict:
        """Optimiser, chains, step sizes and visit marks for the checkpoint."""
        return {
            "optim": self.optim.state_dict(),
            "u": self.u.clone(),
            **self.chains.state_dict(),  # step_size, visited
            "t": self.t,
            "log_scale": self.log_scale,
            # the epoch's diagnostics so far (a checkpoint written mid-epoch continues them)
            "epoch_diagnostics": {
                "acc": list(self.chains.acc),
                "eps": list(self.chains.eps),
                "divergences": self._divergences,
                "seconds": (self._e_seconds, self._m_seconds),
                "mixing": self.mixing.state_dict(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (a resumed run continues every chain)."""
        self.optim.load_state_dict(state["optim"])
        device = self.u.device  # prepare() has allocated the chains on the data's device
        self.u = state["u"].to(device)
        self.chains.load_state_dict(state)
        self.t, self.log_scale = state["t"], state["log_scale"]
        running = state.get("epoch_diagnostics")
        if running is not None:
            self.chains.acc, self.chains.eps = list(running["acc"]), list(running["eps"])
            self._divergences = running["divergences"]
            self._e_seconds, self._m_seconds = running["seconds"]
            if "mixing" in running:  # (checkpoints before R-hat and ESS have none)
                self.mixing.load_state_dict(running["mixing"])


class MCEM(Method):
    """What MCEM adds to the shared path (:mod:`aevb.inference.method`): its recipe, its
    checks, a guide only as the evaluation proposal (the loop trains the model alone)."""

    name, title, config, settings_name = "mcem", "Monte Carlo EM", MCEMConfig, "MCEM"
    mcem_recipe, trains_guide, curve = True, False, "log p(x, z) at draws"

    def configure(self, model, settings: dict) -> MCEMConfig:
        cfg = self.config(**settings)
        sampler_from_options(cfg.sampler, cfg.sampler_options)  # bad names fail before any run
        if cfg.lr_decay != 1.0 and cfg.lr_decay_epochs is None:
            raise ConfigError(
                f"lr_decay={cfg.lr_decay} needs lr_decay_epochs >= 1 (the epochs over which "
                f"the learning rate falls to lr * lr_decay), got {cfg.lr_decay_epochs}"
            )
        return cfg

    def wants_guide(self, cfg: MCEMConfig) -> bool:
        return cfg.proposal_epochs > 0

    def algorithm(self, model, guide, cfg: MCEMConfig) -> MCEMAlgorithm:
        return MCEMAlgorithm(model, cfg)

    def record_extras(self, cfg: MCEMConfig, guide) -> dict:
        if guide is None or cfg.proposal_epochs == 0:
            return {"proposal": None}
        note = "q(z|x) fitted after MCEM with the model's parameters frozen"
        return {
            "proposal": {
                "guide": describe(guide),
                "objective": cfg.proposal_objective,
                "epochs": cfg.proposal_epochs,
                "note": note,
            }
        }

    def label(self, cfg: MCEMConfig) -> str:
        return f"mcem-{cfg.sampler}"

    def check_spec(self, settings: dict, where: str) -> None:
        name = settings.get("sampler") or MCEMConfig.sampler
        options = settings.get("sampler_options") or {}
        check_sampler_options(name, options, f"{where}.sampler_options")

    def upgrade_spec(self, settings: dict) -> dict:
        return rundir.upgrade_sampler_spec(settings)

    def fit(self, model, guide, train, settings: dict, options: RunOptions) -> Run:
        """Train the model, then fit the evaluation proposal q(z|x) with the model frozen
        (restored instead if a resumed run trained nothing since it was fitted)."""
        setup = prepare(self, model, guide, train, settings, options)
        before = _saved_proposal(options.out) if options.resume else None
        run = launch(self, model, setup, options)
        if setup.guide is None or setup.cfg.proposal_epochs == 0:
            return run
        if before is not None and len(run.history) == before[0]:
            load_params(model, setup.guide, before[1])
            run.guide = setup.guide
            run.extra["proposal_history"] = pd.DataFrame(before[1]["proposal_history"])
            return run
        cfg, progress = setup.cfg, options.progress
        fit_proposal(run, setup.guide, setup.ds, cfg, test=setup.test, progress=progress)
        return run


register(MCEM())


def fit(model, guide=None, train=None, **kwargs) -> Run:
    """Train ``model`` by Monte Carlo EM on ``train``; return a :class:`Run`.

    :param model: a Pyro model ``model(x)`` whose latents are continuous and local (inside one
        data plate); its default guide (or ``guide``) becomes the evaluation proposal.
    :param kwargs: how the run runs (:class:`~aevb.inference.method.RunOptions`, as for
        :func:`aevb.inference.fit`) and fields of :class:`MCEMConfig` (``sampler``,
        ``epochs``, ``m_steps``, ...); those left out take the model's MCEM recipe
        (``mcem_defaults``, else ``fit_defaults``), then :class:`MCEMConfig`'s defaults, as
        on the command line.

    The history's ``train_loss`` is -log p_theta(x, z) per datapoint at the E-step's draws
    (before the M-step); it also records the mean acceptance probability, step size and the
    seconds spent in E- and M-steps per epoch, and how well the E-step's chains mix, as
    ArviZ computes it (Vehtari et al. 2021): ``rhat_max`` and ``rhat_share_over_1_01``
    (rank-normalised split-R-hat of each datapoint's draws in one E-step, over the first
    training datapoints and every latent dimension), ``ess_bulk`` and ``ess_tail`` (the
    median over those datapoints of the worst dimension's ESS);
    see :class:`~aevb.inference.diagnostics.EpochChainDiagnostics`. They need ``num_samples``
    >= 8 draws per E-step (ESS: >= 4) and are NaN with fewer, as with the default of one.

    Example:
        >>> from aevb import data, inference, models
        >>> x = data.fa_truth().generate(64)
        >>> fa = models.build("fa")
        >>> run = inference.mcem_fit(fa, None, x, epochs=2, batch_size=32, proposal_epochs=0)
        >>> list(run.history["epoch"])
        [1, 2]
    """
    _check_order(guide, train)
    return run_method("mcem", model, guide, train, **kwargs)


def _check_order(guide, train) -> None:
    """Refuse the old ``mcem_fit(model, train)`` order: data where the guide belongs."""
    if train is None and isinstance(guide, torch.Tensor | np.ndarray | Dataset | tuple):
        raise ConfigError("mcem_fit's arguments are (model, guide, train): pass train=...")


def _saved_proposal(out) -> tuple[int, dict] | None:
    """(epochs trained, checkpoint) of a run directory whose checkpoint holds a fitted
    proposal (a finished MCEM run), else None."""
    if out is None or not rundir.has_checkpoint(out):
        return None
    state = rundir.read_checkpoint(out, fallback=True)
    return (len(state["history"]), state) if "proposal_history" in state else None


def fit_proposal(run: Run, guide, ds: Dataset, cfg: MCEMConfig, *, test=None, progress=None):
    """Fit q(z|x) to the trained model with the model's parameters frozen; store it in the
    run directory's checkpoint so the run can be evaluated like an SVI run."""
    from aevb.inference import svi

    model = run.model
    frozen = model_param_names(model, ds)
    prop = svi.fit(
        model,
        guide,
        ds,
        cfg.proposal_objective,
        test=test,
        epochs=cfg.proposal_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        freeze=tuple(frozen),
        reset=False,
        progress=progress,
        device=cfg.device,
    )
    # the model's parameters were restored untouched; reset the guide only once, here
    run.guide = guide
    run.extra["proposal_history"] = prop.history
    if run.out is not None:
        params = pyro.get_param_store().get_state()
        rundir.write_proposal(run.out, params, rundir.module_states(model, guide), prop.history)
    return run


def model_param_names(model, ds: Dataset) -> list[str]:
    """The Pyro param names the model registers (to freeze them while fitting a guide)."""
    x = next(ds.batches(min(2, len(ds)), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad(), poutine.trace(param_only=True) as capture:
        model(*x)
    return list(capture.trace.nodes)
