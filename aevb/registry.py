"""Helpers shared by the plain-dict registries (models, guides)."""

from __future__ import annotations

import math
import typing
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
    check_config_values(config_class, values, what)
    return config_class(**values)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value_problem(kind, value, least: int) -> str | None:
    """What is wrong with ``value`` for a config field of type ``kind`` (None: nothing).
    Sizes (int) are >= ``least``, reals (float) finite and >= 0, layer sizes ints >= 1."""
    if kind is int:
        if not _is_int(value):
            return "expected an integer"
        return None if value >= least else f"must be >= {least}"
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "expected a number"
        return None if math.isfinite(value) and value >= 0 else "must be finite and >= 0"
    if kind is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if kind is str:
        return None if isinstance(value, str) else "expected a string"
    if typing.get_origin(kind) is tuple and typing.get_args(kind)[:1] == (int,):
        if not isinstance(value, tuple | list) or not all(_is_int(v) for v in value):
            return "expected a list of integers"
        return None if all(v >= 1 for v in value) else "every size must be >= 1"
    return None


def check_config_values(config_class: Any, values: dict, what: str = "") -> None:
    """Raise :class:`ConfigError` for a value of the wrong type or range for its field of
    ``config_class`` (a dataclass): sizes must be integers >= 1 (>= 0 where the default is
    0 or the field's metadata says ``{"min": 0}``), reals finite and >= 0,
    layer sizes lists of integers >= 1. Fields of other types are the model's to check."""
    hints = typing.get_type_hints(config_class)
    least = {
        f.name: f.metadata.get("min", 0 if f.default == 0 else 1) for f in fields(config_class)
    }
    for key, value in values.items():
        if key not in hints or value is None:
            continue
        problem = _value_problem(hints[key], value, least.get(key, 1))
        if problem is not None:
            where = f"{what}.{key}" if what else key
            raise ConfigError(f"{where}: {problem}, got {value!r}")
