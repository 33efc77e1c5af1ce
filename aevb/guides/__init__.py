"""Approximate posteriors q(z | x), one file per family, reusable across models.

:data:`GUIDES` maps a name to a class with ``for_model(model)``; :func:`default_for` picks
the model's ``default_guide``. Any Pyro callable ``guide(*batch)`` works with
:func:`aevb.inference.fit` too, and :func:`build` takes a user's ``MODULE:NAME`` (a guide
class with ``for_model``, or a plain function ``guide(x)``) wherever a family is named.
"""

from __future__ import annotations

import inspect
from typing import Any

from aevb.errors import ConfigError
from aevb.guides.gaussian import GaussianEncoder, GaussianEncoderConfig
from aevb.guides.iaf import IAFEncoder, IAFEncoderConfig
from aevb.guides.linear import LinearGaussian, LinearGaussianConfig, LinearGaussianEncoder
from aevb.guides.mixture import MixtureEncoder, MixtureEncoderConfig
from aevb.guides.recurrent import RecurrentEncoder, RecurrentEncoderConfig
from aevb.guides.semisupervised import SemiSupervisedEncoder, SemiSupervisedEncoderConfig
from aevb.registry import add, import_reference, is_reference, lookup, make_config

GUIDES: dict[str, Any] = {
    "gaussian": GaussianEncoder,
    "iaf": IAFEncoder,
    "linear-gaussian": LinearGaussianEncoder,
    "mixture": MixtureEncoder,
    "recurrent": RecurrentEncoder,
    "semisupervised": SemiSupervisedEncoder,
}


def register(cls):
    """Add a user's guide class to :data:`GUIDES` (usable as a class decorator), so that a
    model's ``default_guide``, ``aevb train --guide NAME`` and grids can name it, as
    :func:`aevb.models.register` does for models.

    The class needs a ``name`` and ``for_model(model)`` (the guide sized for a model);
    ``config_class`` (a frozen dataclass, its only constructor argument) gives it settings.

    >>> from aevb.guides import GUIDES, GaussianEncoder, build, register
    >>> @register
    ... class WideEncoder(GaussianEncoder):
    ...     name = "wide-gaussian"
    >>> from aevb import models
    >>> type(build("wide-gaussian", models.build("vae", x_dim=4, z_dim=2))).__name__
    'WideEncoder'
    >>> _ = GUIDES.pop("wide-gaussian")
    """
    missing = [a for a in ("name", "for_model") if not hasattr(cls, a)]
    return add(GUIDES, cls, "guide", missing, "set name and a for_model(model) classmethod")


def build(name: str, model, **overrides):
    """The guide family ``name`` sized for ``model``, with ``overrides`` of its config fields
    (``build("iaf", model, flow_steps=4)``); a user's ``MODULE:NAME`` function is returned
    as it is (it takes no settings)."""
    cls: Any = _get(name)
    function = not inspect.isclass(cls)
    if function:
        _no_settings(name, overrides)
        return cls
    families = getattr(model, "guide_families", None) if not is_reference(name) else None
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
        if getattr(cls, "config_class", None) is None:
            _no_settings(name, overrides)
        guide = cls(make_config(cls.config_class, guide.config, f"guide {name!r}", **overrides))
    return guide


def _no_settings(name: str, overrides: dict) -> None:
    given = sorted(k for k, v in overrides.items() if v is not None)
    if given:
        raise ConfigError(
            f"guide {name!r} has no config_class: it takes no settings, got {given} (give "
            "it a config_class to give it settings)"
        )


def from_config(name: str, config: dict, model=None):
    """Rebuild a guide from its registry name and config fields (as in ``config.json``);
    a guide that follows its model's computation (the VRNN's) is bound to ``model``."""
    cls: Any = _get(name)
    guide = cls(make_config(cls.config_class, None, name, **config))
    bind = getattr(guide, "bind", None)
    if bind is not None:
        bind(model)
    return guide


def _get(name: str) -> Any:
    if is_reference(name):
        return _user_guide(name)
    also = "or MODULE:NAME (a guide class or a guide(x) function in your own module)"
    return lookup(GUIDES, name, "guide", also)


def _user_guide(ref: str) -> Any:
    """A user's guide ``MODULE:NAME``: a class with ``for_model(model)`` (like the
    registered families) or a plain Pyro function ``guide(x)``."""
    from aevb.models import check_program

    obj = import_reference(ref, "guide")
    if inspect.isclass(obj):
        if not callable(getattr(obj, "for_model", None)):
            raise ConfigError(
                f"guide {ref!r}: the class has no for_model(model) classmethod (the guide sized "
                "for the model); expected a guide class like aevb's or a function guide(x)"
            )
        return obj
    check_program(obj, ref, "guide")
    return obj


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
    "LinearGaussianEncoder",
    "MixtureEncoder",
    "MixtureEncoderConfig",
    "RecurrentEncoder",
    "RecurrentEncoderConfig",
    "SemiSupervisedEncoder",
    "SemiSupervisedEncoderConfig",
    "build",
    "default_for",
    "from_config",
    "register",
]
