"""Approximate posteriors q(z | x), one file per family, reusable across models.

:data:`GUIDES` maps a name to a class with ``for_model(model)``; :func:`default_for` picks
the model's ``default_guide``. Any Pyro callable ``guide(*batch)`` works with
:func:`aevb.inference.fit` too.
"""

from __future__ import annotations

from typing import Any

from aevb.errors import ConfigError
from aevb.guides.gaussian import GaussianEncoder, GaussianEncoderConfig
from aevb.guides.iaf import IAFEncoder, IAFEncoderConfig
from aevb.guides.linear import LinearGaussian, LinearGaussianConfig
from aevb.guides.mixture import MixtureEncoder, MixtureEncoderConfig
from aevb.guides.recurrent import RecurrentEncoder, RecurrentEncoderConfig
from aevb.guides.semisupervised import SemiSupervisedEncoder, SemiSupervisedEncoderConfig
from aevb.registry import make_config

GUIDES: dict[str, Any] = {
    "gaussian": GaussianEncoder,
    "iaf": IAFEncoder,
    "linear-gaussian": LinearGaussian,
    "mixture": MixtureEncoder,
    "recurrent": RecurrentEncoder,
    "semisupervised": SemiSupervisedEncoder,
}


def build(name: str, model, **overrides):
    """The guide family ``name`` sized for ``model``, with ``overrides`` of its config fields
    (``build("iaf", model, flow_steps=4)``)."""
    cls = _get(name)
    families = getattr(model, "guide_families", None)
    what = getattr(model, "name", type(model).__name__)
    if families is not None and name not in families:
        raise ConfigError(
            f"the {what} model works with the guide(s) {list(families)}, not {name!r}"
        )
    try:
        guide = cls.for_model(model)
    except (AttributeError, TypeError) as exc:  # the family needs a part the model lacks
        raise ConfigError(f"the {name!r} guide does not fit the {what} model ({exc})") from None
    if overrides:
        guide = cls(make_config(cls.config_class, guide.config, f"guide {name!r}", **overrides))
    return guide


def from_config(name: str, config: dict, model=None):
    """Rebuild a guide from its registry name and config fields (as in ``config.json``);
    a guide that follows its model's computation (the VRNN's) is bound to ``model``."""
    cls = _get(name)
    guide = cls(make_config(cls.config_class, None, name, **config))
    bind = getattr(guide, "bind", None)
    if bind is not None:
        bind(model)
    return guide


def _get(name: str):
    if name not in GUIDES:
        raise ConfigError(f"unknown guide {name!r}; expected one of {sorted(GUIDES)}")
    return GUIDES[name]


def default_for(model, **overrides):
    """The guide a registered model is paired with by default (its ``default_guide``),
    with ``overrides`` of its config fields."""
    name = getattr(model, "default_guide", None)
    if name is None:
        raise ConfigError(f"{type(model).__name__} names no default_guide; pass a guide explicitly")
    return build(name, model, **overrides)


__all__ = [
    "GUIDES",
    "GaussianEncoder",
    "GaussianEncoderConfig",
    "IAFEncoder",
    "IAFEncoderConfig",
    "LinearGaussian",
    "LinearGaussianConfig",
    "MixtureEncoder",
    "MixtureEncoderConfig",
    "RecurrentEncoder",
    "RecurrentEncoderConfig",
    "SemiSupervisedEncoder",
    "SemiSupervisedEncoderConfig",
    "build",
    "default_for",
    "from_config",
]
