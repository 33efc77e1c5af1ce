"""Helpers shared by the plain-dict registries (models, guides)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from aevb.errors import ConfigError


def make_config(config_class: Any, base: Any = None, what: str = "", **overrides):
    """``config_class`` from ``base`` (or its defaults) with non-None ``overrides``.

    JSON lists become tuples, so a config read back from ``config.json`` equals the original.
    """
    known = {f.name for f in fields(config_class)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(
            f"{what} has no config field(s) {sorted(unknown)}; fields: {sorted(known)}"
        )
    base = base if base is not None else config_class()
    values = {name: getattr(base, name) for name in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_class(**values)
