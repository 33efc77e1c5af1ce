"""Generative models p(x, z), one file each. A model is an ``nn.Module`` whose ``forward`` is a
Pyro model over a minibatch inside ``pyro.plate("data", B)``.

Registry :data:`MODELS` maps a name to the class; each class carries ``config_class`` (a
frozen dataclass), ``default_guide`` (a key of :data:`aevb.guides.GUIDES`) and
``uses_labels``. Adding a model is one new file plus one entry here. A user's model needs
neither: :func:`get` and :func:`build` also take ``MODULE:NAME``, a class like these or a
plain Pyro function ``model(x)`` in the user's own module.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from aevb.errors import ConfigError
from aevb.models.cvae import CVAE, CVAEConfig
from aevb.models.fa import FAConfig, FactorAnalysis
from aevb.models.gmvae import GMVAE, GMVAEConfig
from aevb.models.m2 import M2, M2Config
from aevb.models.nets import mlp
from aevb.models.vae import VAE, VAEConfig
from aevb.models.vrnn import VRNN, VRNNConfig
from aevb.registry import add, import_reference, is_reference, lookup, make_config

MODELS: dict[str, Any] = {
    "vae": VAE,
    "fa": FactorAnalysis,
    "cvae": CVAE,
    "gmvae": GMVAE,
    "vrnn": VRNN,
    "m2": M2,
}


def presets_of(cls) -> dict[str, Any]:
    """The named configurations a model class declares itself (its own ``presets``; a
    subclass such as M2 does not inherit the VAE's, whose configs are of another class)."""
    return dict(vars(cls).get("presets", {}))


class _Presets(Mapping[str, dict]):
    """``PRESETS[name]``: the presets of the model registered as ``name``, read from its
    class every time (so a registered user model's appear too)."""

    def __getitem__(self, name: str) -> dict:
        return presets_of(MODELS[name])

    def __iter__(self):
        return iter(MODELS)

    def __len__(self) -> int:
        return len(MODELS)


#: Named configurations per model, e.g. ``PRESETS["vae"]["tutorial-cb"]``, declared by each
#: model class (``presets``)
PRESETS: Mapping[str, dict] = _Presets()


#: what a model class needs to be built by name (:func:`register`, :func:`build`)
CLASS_ATTRIBUTES = ("name", "config_class", "default_guide", "config_from_data")


def _missing_attributes(cls) -> list[str]:
    return [a for a in CLASS_ATTRIBUTES if not hasattr(cls, a)]


def register(cls):
    """Add a user's model class to :data:`MODELS` (usable as a class decorator), so that
    its ``name`` can be used wherever a model is named: :func:`build`, a RunSpec, and, once
    its module is imported (a grid's ``modules = [...]``), ``aevb compare`` cells. Its
    runs record the module (file and SHA-256), so ``aevb evaluate RUN`` and ``aevb train
    --resume`` import it again. On the command line, name it ``MODULE:CLASS``
    (``aevb train my_models:WideVAE``): that imports the module, registered or not.

    The class needs what the registered models have: ``name``, a frozen-dataclass
    ``config_class`` whose instance is its only constructor argument, ``default_guide`` (a
    key of :data:`aevb.guides.GUIDES`) and ``config_from_data`` -- subclassing
    :class:`aevb.models.base.LatentVariableModel` provides the last one and the ``x_dim`` /
    ``z_dim`` properties the guides read.

    >>> from aevb.models import MODELS, VAE, build, register
    >>> @register
    ... class WideVAE(VAE):
    ...     name = "wide-vae"
    >>> build("wide-vae", hidden=(400,)).config.hidden
    (400,)
    >>> _ = MODELS.pop("wide-vae")
    """
    hint = "subclass aevb.models.base.LatentVariableModel and set name, config_class, default_guide"
    return add(MODELS, cls, "model", _missing_attributes(cls), hint)


def get(name: str) -> Any:
    """The model ``name`` names: a registered class (a key of :data:`MODELS`), or a user's
    ``MODULE:NAME`` -- a model class with what :func:`register` asks for (registered or
    not), or a plain Pyro function ``model(x)`` -- imported from the current directory and
    ``PYTHONPATH`` (:func:`aevb.registry.import_reference`)."""
    if not is_reference(name):
        also = "or MODULE:NAME (a model class or a model(x) function in your own module)"
        return lookup(MODELS, name, "model", also)
    obj = import_reference(name, "model")
    if inspect.isclass(obj):
        missing = _missing_attributes(obj)
        if missing:
            raise ConfigError(
                f"model {name!r}: the class has no {missing}; expected a subclass of "
                "aevb.models.base.LatentVariableModel with name, config_class and "
                "default_guide, or a plain Pyro function model(x)"
            )
        return obj
    check_program(obj, name, "model")
    return obj


def check_program(fn, ref: str, role: str) -> None:
    """Refuse a user's ``MODULE:NAME`` that is not a function taking a minibatch
    (``fn(x)``, or ``fn(x, y)`` where it sets ``uses_labels``)."""
    if not callable(fn):
        raise ConfigError(
            f"{role} {ref!r}: expected a class or a function {role}(x), found a {type(fn).__name__}"
        )
    args = (None, None) if getattr(fn, "uses_labels", False) else (None,)
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as exc:
        raise ConfigError(
            f"{role} {ref!r}: expected a function {role}({', '.join('xy'[: len(args)])}) "
            f"taking the minibatch, found {fn.__name__}{inspect.signature(fn)} ({exc})"
        ) from None
    except ValueError:  # a builtin without a signature: let Pyro try it
        pass


def build(name: str, preset: str | None = None, **overrides):
    """Instantiate a registered model (or a user's ``MODULE:NAME`` class, :func:`get`)
    from a preset (or the defaults) with field overrides; a user's plain function is
    returned as it is (and takes no settings).

    >>> from aevb.models import build
    >>> build("vae", z_dim=2, hidden=(16,)).config.z_dim
    2
    """
    cls: Any = get(name)
    function = not inspect.isclass(cls)
    if function:
        given = sorted(k for k, v in overrides.items() if v is not None)
        if given or preset is not None:
            raise ConfigError(
                f"model {name!r} is a plain function: it takes no settings, got "
                f"{given or [f'preset {preset!r}']} (make it a class with a config_class "
                "to give it settings)"
            )
        return cls
    base = None
    if preset is not None:
        base = lookup(PRESETS.get(name, {}), preset, "preset", f"(the {name} model's presets)")
    return cls(make_config(cls.config_class, base, name, **overrides))


__all__ = [
    "CVAE",
    "CVAEConfig",
    "GMVAE",
    "GMVAEConfig",
    "M2",
    "M2Config",
    "MODELS",
    "PRESETS",
    "presets_of",
    "VAE",
    "FAConfig",
    "FactorAnalysis",
    "VAEConfig",
    "VRNN",
    "VRNNConfig",
    "build",
    "check_program",
    "get",
    "mlp",
    "register",
]
