"""Generative models p(x, z), one file each. A model is an ``nn.Module`` whose ``forward`` is a
Pyro model over a minibatch inside ``pyro.plate("data", B)``.

Registry :data:`MODELS` maps a name to the class; each class carries ``config_class`` (a
frozen dataclass), ``default_guide`` (a key of :data:`aevb.guides.GUIDES`) and
``uses_labels``. Adding a model is one new file plus one entry here.
"""

from __future__ import annotations

from typing import Any

from aevb.errors import ConfigError
from aevb.models.cvae import CVAE, CVAE_PRESETS, CVAEConfig
from aevb.models.fa import FAConfig, FactorAnalysis
from aevb.models.gmvae import GMVAE, GMVAE_PRESETS, GMVAEConfig, cluster_accuracy
from aevb.models.m2 import M2, M2Config
from aevb.models.nets import mlp
from aevb.models.vae import VAE, VAE_PRESETS, VAEConfig
from aevb.models.vrnn import VRNN, VRNN_PRESETS, VRNNConfig
from aevb.registry import make_config

MODELS: dict[str, Any] = {
    "vae": VAE,
    "fa": FactorAnalysis,
    "cvae": CVAE,
    "gmvae": GMVAE,
    "vrnn": VRNN,
    "m2": M2,
}

#: Named configurations per model, e.g. ``PRESETS["vae"]["tutorial-cb"]``.
PRESETS: dict[str, dict[str, object]] = {
    "vae": dict(VAE_PRESETS),
    "cvae": dict(CVAE_PRESETS),
    "gmvae": dict(GMVAE_PRESETS),
    "vrnn": dict(VRNN_PRESETS),
}


def register(cls):
    """Add a user's model class to :data:`MODELS` (usable as a class decorator), so that
    ``aevb train``, ``aevb evaluate`` and ``aevb compare`` can name it.

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
    missing = [
        a
        for a in ("name", "config_class", "default_guide", "config_from_data")
        if not hasattr(cls, a)
    ]
    if missing:
        raise ConfigError(
            f"{cls.__name__} cannot be registered: it has no {missing} (subclass "
            "aevb.models.base.LatentVariableModel and set name, config_class, default_guide)"
        )
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ConfigError(f"a model named {cls.name!r} is already registered")
    MODELS[cls.name] = cls
    return cls


def build(name: str, preset: str | None = None, **overrides):
    """Instantiate a registered model from a preset (or the defaults) with field overrides.

    >>> from aevb.models import build
    >>> build("vae", z_dim=2, hidden=(16,)).config.z_dim
    2
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    cls = MODELS[name]
    base = None
    if preset is not None:
        presets = PRESETS.get(name, {})
        if preset not in presets:
            raise ConfigError(
                f"unknown preset {preset!r} for {name}; expected one of {sorted(presets)}"
            )
        base = presets[preset]
    return cls(make_config(cls.config_class, base, name, **overrides))


__all__ = [
    "CVAE",
    "CVAEConfig",
    "GMVAE",
    "GMVAEConfig",
    "M2",
    "M2Config",
    "MODELS",
    "cluster_accuracy",
    "PRESETS",
    "VAE",
    "FAConfig",
    "FactorAnalysis",
    "VAEConfig",
    "VRNN",
    "VRNNConfig",
    "build",
    "mlp",
    "register",
]
