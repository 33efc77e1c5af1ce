"""Plumbing shared by the package's models (sizes, data checks, the decoder p(x | z)).

A model need not inherit from these: any Pyro callable works with :func:`aevb.inference.fit`.
They only keep the registered models from repeating the same few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from aevb.errors import DataError
from aevb.models import likelihoods
from aevb.models.nets import mlp, output_layer, safe_logit


@dataclass(frozen=True)
class ModelHooks:
    """The optional hooks the training loop and the estimators call on a model (or guide),
    declared once here with their defaults. The package's models define them as methods or
    attributes of the same names; a user's plain Pyro function has none and gets the
    defaults. Read them with :func:`hooks`.
    """

    #: ``check_data(x)``: raise a clear error for data of the wrong shape or support
    check_data: Callable[[torch.Tensor], None] | None = None
    #: ``check_labels(y)``: raise a clear error for labels outside the model's classes
    check_labels: Callable[[torch.Tensor], None] | None = None
    #: ``init_from_data(x_mean)``: initialise from the training set's mean datapoint
    init_from_data: Callable[[torch.Tensor], None] | None = None
    #: ``set_step(step)``: called before every training step (e.g. an annealed temperature)
    set_step: Callable[[int], None] | None = None
    #: the model is ``model(x, y)``: batches carry the labels
    uses_labels: bool = False
    #: ``evaluation_metrics(guide, test) -> dict``: model-specific test metrics
    evaluation_metrics: Callable[..., dict] | None = None
    #: static structure: the compiled objectives and log-densities may trace it
    jit_compatible: bool = False
    #: the model's recipe for SVI: settings used where a run gives none (FA: the
    #: aevb-tutorial's batch 32, lr 1e-2, 35 epochs), by the library and the CLI alike
    fit_defaults: Mapping[str, Any] | None = None
    #: the recipe for Monte Carlo EM (None: ``fit_defaults``)
    mcem_defaults: Mapping[str, Any] | None = None
    #: the objective used where a run names none (``enum`` for the GMVAE); None means ``trace``
    default_objective: str | None = None
    #: the data transform used where a run names none (``threshold`` for the VRNN and GMVAE)
    default_binarize: str | None = None
    #: the registered guide families the model works with (the GMVAE's cluster metrics need
    #: ``mixture``'s q(y|x), the VRNN's model runs ``recurrent``'s recurrence); None: any
    guide_families: tuple[str, ...] | None = None
    #: the model sums out a missing label (label -1, ``Dataset.keep_labels``) and its
    #: likelihood is log p(x): the estimators score the test set with its labels hidden, and
    #: only ``evaluation_metrics`` sees them (M2's classification error)
    marginal_labels: bool = False


def recipe(model, settings: Mapping[str, Any], mcem: bool = False) -> dict:
    """``settings`` completed by the model's recipe: a key the caller leaves out takes the
    recipe's value (one given, even as None, is kept). The one place a recipe is applied."""
    h = hooks(model)
    defaults = (h.mcem_defaults if mcem else None) or h.fit_defaults or {}
    return {**defaults, **settings}


def check_dataset(model, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """The model's own checks of (transformed) datapoints ``x`` and, for a model of labelled
    data, of their labels ``y``: the one place the data checks run, before training or
    estimating anything."""
    h = hooks(model)
    if h.check_data is not None:
        h.check_data(x)
    if h.uses_labels and h.check_labels is not None and y is not None:
        h.check_labels(y)


def scored_data(model, ds):
    """The dataset the estimators of log p(x) see for ``model``: ``ds`` itself, or, for a
    model that sums out missing labels (``marginal_labels``), ``ds`` with every label
    hidden, so that they estimate log p(x) and not log p(x, y)."""
    if hooks(model).marginal_labels and ds.y is not None:
        return ds.without_labels()
    return ds


def check_class_labels(y: torch.Tensor, num_classes: int, what: str, missing: bool = False) -> None:
    """Raise a :class:`~aevb.errors.DataError` unless every label is an integer in
    0..num_classes-1, or -1 (a hidden label) where ``missing`` (the message gives the first
    bad one and its position)."""
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{what} expects integer labels, got dtype {y.dtype}")
    least = -1 if missing else 0
    bad = (y < least) | (y >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        allowed = f"0..{num_classes - 1}" + (" or -1 (unlabelled)" if missing else "")
        raise DataError(
            f"{what} expects labels in {allowed}, found {int(bad.sum())} outside "
            f"(the first: {int(y[i])} at datapoint {i})"
        )


def hooks(obj) -> ModelHooks:
    """The :class:`ModelHooks` of ``obj`` (a model, a guide, or any Pyro callable)."""
    found = {f.name: getattr(obj, f.name, None) for f in fields(ModelHooks)}
    return ModelHooks(**{k: v for k, v in found.items() if v is not None})


class LatentVariableModel(nn.Module):
    """A model p(x, z) over flat datapoints x in R^{x_dim} with latents z in R^{z_dim}."""

    config: Any
    #: named configurations of this class's ``config_class`` (``aevb train vae --preset
    #: tutorial-cb``); not inherited: :func:`aevb.models.presets_of` reads the class's own
    presets: Mapping[str, Any] = {}
    default_guide = "gaussian"
    uses_labels = False
    #: the package's models declare whether a trace of them is valid (the VAE and CVAE: yes);
    #: only a user's own, undeclared pair is probed (aevb.inference.objectives.should_probe_jit)
    jit_compatible = False

    @classmethod
    def config_from_data(cls, data) -> dict:
        """Config fields a dataset fixes (here the datapoint size ``x_dim``)."""
        return {"x_dim": data.x_dim}

    @property
    def x_dim(self) -> int:
        return self.config.x_dim

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @staticmethod
    def batch_size(x: torch.Tensor | None, num_samples: int | None) -> int:
        """B for ``model(x)`` (observe x) or ``model(None, num_samples=B)`` (generate)."""
        if x is not None:
            return x.shape[0]
        if num_samples is None:
            raise ValueError("give x or num_samples")
        return num_samples

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a clear :class:`~aevb.errors.DataError` if ``x`` has the wrong shape or lies
        outside the support of p(x | z)."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise DataError(
                f"{type(self).__name__} expects data of shape [N, {self.x_dim}], "
                f"got {tuple(x.shape)}"
            )
        likelihood = getattr(self, "likelihood", None)
        if likelihood is not None:
            likelihood.check(x, self.config.likelihood)


class DecoderModel(LatentVariableModel):
    """A model whose p(x | z) is an MLP decoder f_theta with a likelihood from
    :mod:`aevb.models.likelihoods` (config fields ``hidden``, ``activation``, ``likelihood``)."""

    #: start the decoder's output bias at logit(mean pixel) (see :meth:`init_from_data`)
    init_output_bias = True

    def build_decoder(self, in_dim: int) -> None:
        """The MLP f_theta from ``in_dim`` to ``x_dim`` and the likelihood p(x | z)."""
        c = self.config
        self.likelihood = likelihoods.get(c.likelihood)
        self.decoder = mlp(in_dim, c.hidden, c.x_dim, c.activation)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z)."""
        return self.likelihood.pixels(self.decoder(z))

    def init_from_data(self, x_mean: torch.Tensor) -> None:
        """Set the decoder's output bias to logit(mean pixel): the model starts at the
        independent-pixel fit instead of p = 1/2 (Burda et al.'s code does the same)."""
        if not self.init_output_bias:
            return
        with torch.no_grad():
            output_layer(self.decoder).bias.copy_(safe_logit(x_mean.reshape(-1)))
