"""Stochastic variational inference for any (model, guide, objective).

Each step draws a minibatch x_1..x_B, evaluates the objective's surrogate for the batch (summed
over datapoints, never rescaled, so RenyiELBO stays a per-datapoint bound), divides the
gradients by B (the loss per datapoint) and takes an Adam step on every parameter the step
touched. Works for the package's models and for plain Pyro functions ``model(x)``,
``guide(x)`` written by a user.

The epochs, run directory (``config.json``, ``history.csv``, ``checkpoint.pt``), resume and
progress bar are the shared training loop's (:mod:`aevb.inference.loop`); this module adds
only what SVI does on a minibatch (:class:`SVIAlgorithm`).

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114
    (minibatch AEVB, Algorithm 1).
    M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley (2013), Stochastic Variational
    Inference, JMLR 14.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aevb.errors import ObjectiveError
from aevb.inference.loop import apply_gradients
from aevb.inference.method import (
    ObjectiveConfig,
    ObjectiveMethod,
    objective_settings,
    register,
    run_method,
)
from aevb.inference.objectives import (
    OBJECTIVES,
    check_compatible,
    make_jit_objective,
    make_objective,
    should_probe_jit,
    use_jit,
)
from aevb.inference.objectives.jit import compiled_matches_eager
from aevb.inference.optim import Adam
from aevb.inference.programs import (
    DataScale,
    global_latents,
    particle_problem,
    scaled_by,
    scaled_sites,
    trace_pair,
)
from aevb.inference.record import Run
from aevb.models.base import hooks
from aevb.settings import setting


@dataclass(frozen=True)
class FitConfig(ObjectiveConfig):
    """Settings of one SVI run (recorded in ``config.json``); the shared ones (epochs,
    batch size, Adam, seed, ...) are :class:`~aevb.inference.loop.LoopConfig`'s, the
    objective's :class:`~aevb.inference.method.ObjectiveConfig`'s."""

    lr_schedule: str = setting(
        "constant",
        choices=lambda: LR_SCHEDULES,
        help="the learning rate by epoch; burda: Burda et al. 2015's stages i = 0..7 of 3^i "
        "passes at lr * 10^(-i/7), 3,280 passes in all",
    )
    jit: bool | None = setting(
        None,
        kind=bool,
        exposed=False,
        help="train with the objective's compiled (torch.jit.trace) form: None where the model "
        "and guide declare jit_compatible, True/False always (an error if the objective has "
        "none) / never",
    )


#: the name that matches the other methods' (``MCEMConfig``, ``VIMCMCConfig``)
SVIConfig = FitConfig


def burda_lr(lr: float, epoch: int) -> float:
    """The learning rate of (1-based) ``epoch`` under Burda et al.'s schedule."""
    rest, stage = epoch - 1, 0
    while stage < 7 and rest >= 3**stage:
        rest -= 3**stage
        stage += 1
    return lr * 10 ** (-stage / 7)


#: ``lr_schedule`` names: (base lr, epoch) -> lr
LR_SCHEDULES: dict[str, Callable[[float, int], float]] = {
    "constant": lambda lr, epoch: lr,
    "burda": burda_lr,
}


class SVIAlgorithm:
    """One SVI step per minibatch: the objective's surrogate summed over the batch, gradients
    divided by B, one Adam step on every parameter the step touched."""

    def __init__(self, model, guide, cfg: FitConfig):
        self.model, self.guide, self.cfg = model, guide, cfg
        self.jit = use_jit(cfg.objective, model, guide, cfg.jit)
        k = cfg.particles
        if k is None:
            k = OBJECTIVES[cfg.objective].default_particles
        self.k = k
        #: the eager objective and the batch a probed compiled one is re-checked on
        self.eager: Any = None
        self.probe_batch: tuple = ()
        self.elbo: Any = (
            make_jit_objective(
                cfg.objective, k, cfg.alpha, cfg.max_plate_nesting, cfg.objective_options
            )
            if self.jit
            else make_objective(
                cfg.objective, k, cfg.alpha, cfg.max_plate_nesting, cfg.objective_options
            )
        )
        self.optim = Adam(cfg.lr, cfg.betas, cfg.eps)
        self.train_guide = OBJECTIVES[cfg.objective].prepare_guide(guide)
        #: the model as trained (scaled by N / B where it has global latents)
        self.train_model = model
        self.lr = cfg.lr
        #: the N / B scaling of a model with global latents (:meth:`_scale_minibatches`)
        self.data_scale: DataScale | None = None

    def prepare(self, ds, first_batch) -> None:
        """Refuse a (model, guide, objective) that would train silently wrong; for a pair
        that declares nothing about its structure, compile the objective if the compiled
        form reproduces the eager loss and gradients on two batches."""
        cfg = self.cfg
        check_compatible(cfg.objective, self.model, self.guide, *first_batch, alpha=cfg.alpha)
        self._check_particles(first_batch)
        self._scale_minibatches(ds, first_batch)
        bind = getattr(self.elbo, "bind_data", None)
        if bind is not None:  # weights set by the training set (semisupervised)
            bind(ds)
        if should_probe_jit(cfg.objective, self.model, self.guide, cfg.jit):
            self._probe_jit(ds, first_batch)

    def _check_particles(self, first_batch) -> None:
        """Refuse a pair that cannot run under a leading particle dimension when the
        objective vectorises particles (k > 1); with one particle, warn that the estimators
        of log p(x) (which always vectorise) will refuse it."""
        why = particle_problem(self.model, self.guide, first_batch, self.cfg.max_plate_nesting)
        if why is None:
            return
        if self.k > 1:
            raise ObjectiveError(f"{self.cfg.objective} with {self.k} particles: {why}")
        print(
            f"aevb: warning: this pair trains with one particle, but bounds, log_likelihood "
            f"and the test ELBO will refuse it: {why}",
            file=sys.stderr,
        )

    def _scale_minibatches(self, ds, first_batch) -> None:
        """A model with a latent outside the data plate, trained on minibatches of B < N
        datapoints, gets its data-plate terms scaled by N / B (as ``pyro.plate("data", N,
        subsample_size=B)`` would), so each step estimates the full data set's ELBO and the
        posterior over the global latent is that of N datapoints, not of B. A program that
        scales its own sites is left as it is."""
        batch, n = first_batch[0].shape[0], len(ds)
        with torch.no_grad():
            guide_trace, model_trace = trace_pair(self.model, self.guide, first_batch)
        shared = global_latents(model_trace, batch)
        if not shared or self.cfg.batch_size >= n or scaled_sites(guide_trace, model_trace):
            return
        self.data_scale = DataScale(n)
        self.train_model = scaled_by(self.model, self.data_scale)
        self.train_guide = scaled_by(self.train_guide, self.data_scale)
        print(
            f"aevb: the model's latent(s) {', '.join(map(repr, shared))} lie outside the data "
            f"plate: each minibatch's data-plate terms are scaled by N/B = {n}/"
            f"{self.cfg.batch_size}, so that the posterior is that of all {n} datapoints "
            "(to scale them yourself, write pyro.plate('data', N, subsample=...))",
            file=sys.stderr,
        )

    def _probe_jit(self, ds, first_batch) -> None:
        cfg = self.cfg
        x = first_batch[0]
        g = torch.Generator().manual_seed(cfg.seed + 1)
        labels = hooks(self.model).uses_labels
        second = next(
            ds.batches(x.shape[0], shuffle=True, labels=labels, generator=g, device=x.device)
        )
        compiled = make_jit_objective(
            cfg.objective, self.k, cfg.alpha, cfg.max_plate_nesting, cfg.objective_options
        )
        compiled.bind_data(ds)
        why = compiled_matches_eager(
            compiled, self.elbo, self.train_model, self.train_guide, [first_batch, second]
        )
        if why is None:
            self.eager, self.elbo, self.jit = self.elbo, compiled, True
            self.probe_batch = first_batch
            print(
                f"aevb: training {cfg.objective} compiled: its trace reproduced the eager "
                "loss and gradients on two batches (checked again at every epoch's start; a "
                "model that reads Python state changing during training should set "
                "jit_compatible = False, or pass jit=False)",
                file=sys.stderr,
            )
        else:
            print(
                f"aevb: training {cfg.objective} eagerly: the compiled objective was tried "
                f"and {why} (set jit=False to skip the check)",
                file=sys.stderr,
            )

    def step(self, args, index) -> float:
        """One objective evaluation and Adam step on the minibatch; returns the summed loss."""
        loss = self.elbo.loss_and_grads(self.train_model, self.train_guide, *args)
        if self.data_scale is None:
            apply_gradients(self.optim, len(index), self.cfg.freeze)
            return float(loss)
        # a scaled step estimates the whole data set's loss: per datapoint is per N, and the
        # loop's sum over the batch is that times B
        n = self.data_scale.full
        apply_gradients(self.optim, n, self.cfg.freeze)
        return float(loss) * len(index) / n

    def begin_epoch(self, epoch: int) -> None:
        """Set the learning rate the schedule gives this (1-based) epoch; a probed compiled
        objective is checked against the eager one again (a trace cannot see Python state
        that changes between epochs) and dropped, with a notice, if they now differ."""
        self.lr = LR_SCHEDULES[self.cfg.lr_schedule](self.cfg.lr, epoch)
        self.optim.set_lr(self.lr)
        if self.eager is not None and self.jit:
            why = compiled_matches_eager(
                self.elbo, self.eager, self.train_model, self.train_guide, [self.probe_batch]
            )
            if why is not None:
                self.elbo, self.jit = self.eager, False
                print(
                    f"aevb: epoch {epoch}: training {self.cfg.objective} eagerly from now on: "
                    f"the compiled objective no longer matches the eager one ({why})",
                    file=sys.stderr,
                )

    def epoch_diagnostics(self) -> dict:
        """The learning rate, when it follows a schedule, and what an objective with state
        of its own reports (the Monte Carlo VAEs' step size and acceptance)."""
        row = {"lr": self.lr} if self.cfg.lr_schedule != "constant" else {}
        own = getattr(self.eager or self.elbo, "epoch_diagnostics", None)
        return {**row, **own()} if own is not None else row

    def state_dict(self) -> dict:
        """The optimiser state for the checkpoint, and the objective's own where it has one
        (an adapted step size): a resumed run continues exactly."""
        state = {"optim": self.optim.state_dict()}
        own = getattr(self.elbo, "state_dict", None)
        return {**state, "objective": own()} if own is not None else state

    def load_state_dict(self, state: dict) -> None:
        """Restore the optimiser (and objective) state before the first step."""
        self.optim.load_state_dict(state["optim"])
        if "objective" in state:
            self.elbo.load_state_dict(state["objective"])


class SVI(ObjectiveMethod):
    """What SVI adds to the shared path (:mod:`aevb.inference.method`): the objective (the
    model's ``default_objective`` where none is given) and :class:`SVIAlgorithm`."""

    name, title, config = "svi", "SVI", FitConfig

    def configure(self, model, settings: dict) -> FitConfig:
        default = hooks(model).default_objective or "trace"
        return self.config(**objective_settings(settings, default))

    def algorithm(self, model, guide, cfg: FitConfig) -> SVIAlgorithm:
        return SVIAlgorithm(model, guide, cfg)

    def label(self, cfg: FitConfig) -> str:
        return cfg.objective

    def run_name(self, cfg: FitConfig) -> str:
        return f"{cfg.objective}{cfg.particles}"


register(SVI())


def fit(model, guide=None, train=None, objective: str | None = None, **kwargs) -> Run:
    """Train ``guide`` and ``model`` by SVI on ``train``; return a :class:`Run`.

    :param model: a Pyro model ``model(x)`` (or ``model(x, y)`` if ``model.uses_labels``).
    :param guide: a Pyro guide with the same signature; None -> :func:`aevb.guides.default_for`.
    :param train: a :class:`~aevb.data.Dataset`, a tensor/array [N, ...] or an ``(x, y)`` pair.
    :param objective: a key of :data:`aevb.inference.objectives.OBJECTIVES`; None -> the
        model's ``default_objective``, else ``trace``.
    :param kwargs: how the run runs (:class:`~aevb.inference.method.RunOptions`: ``test``
        data scored after every epoch, ``validation`` data scored too and what ``patience``
        stops on (:mod:`aevb.inference.stopping`), the run directory ``out``, ``resume``,
        ``progress``, ``reset``, per-step ``callback(epoch, step, loss)`` and
        ``epoch_callback(row)``) and fields of :class:`FitConfig` (``particles``, ``epochs``,
        ``lr``, ``patience``, ...); those left out
        take the model's recipe (``fit_defaults``, e.g. FA's batch 32, lr 1e-2, 35 epochs),
        then :class:`FitConfig`'s defaults, as on the command line.

    Example:
        >>> import torch
        >>> from aevb import inference, models
        >>> x = torch.bernoulli(torch.full((64, 6), 0.3))
        >>> model = models.build("vae", x_dim=6, z_dim=2, hidden=(8,))
        >>> run = inference.fit(model, None, x, "iwae", particles=5, epochs=2, batch_size=16)
        >>> list(run.history["epoch"])
        [1, 2]
    """
    return run_method("svi", model, guide, train, objective=objective, **kwargs)
