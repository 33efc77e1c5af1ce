"""Every setting declared once: its type, default, range, choices and the reason for its default.

A setting is a field of a config dataclass (:class:`aevb.inference.loop.LoopConfig` and each
method's config, :class:`aevb.spec.DataSpec`, ...) made by :func:`setting`::

    m_steps: int = setting(5, minimum=1, help="Adam steps per E-step: 5 'weight updates' per "
                           "HMC sample in Kingma & Welling")

Everything else is derived from that one declaration: the config checks its values with
:func:`check_fields` (the one range checker, also used for a RunSpec's values and a model's
config overrides), :mod:`aevb.spec` builds each inference method's spec from its config's
``exposed`` settings (a key of the RunSpec, of TOML grids and of ``config.json``), and the
command line (:mod:`aevb.cli`) makes one option per exposed setting with its type, its
``choices`` and a help text that ends with its default.

Example:
    >>> from dataclasses import dataclass
    >>> from aevb.settings import check_fields, declared, describe, setting
    >>> @dataclass(frozen=True)
    ... class Config:
    ...     steps: int = setting(10, minimum=1, help="leapfrog steps per transition")
    ...     def __post_init__(self):
    ...         check_fields(self)
    >>> Config(steps=0)
    Traceback (most recent call last):
    ...
    aevb.errors.ConfigError: steps: must be >= 1, got 0
    >>> describe(declared(Config)["steps"])
    'leapfrog steps per transition (default 10)'
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from aevb.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """What a field of a config declares besides its name and default (see :func:`setting`)."""

    kind: type
    minimum: float | None = None
    above: bool = False
    choices: Callable[[], Iterable[str]] | tuple[str, ...] | None = None
    help: str = ""
    exposed: bool = True
    #: how an empty value reads in the help text ("the model's", "none", ...; or a function
    #: that says it from a registry); None: the default
    unset: str | Callable[[], str] | None = None
    #: a registry whose keys name this setting's valid values (objectives, samplers): listed
    #: in the help, but checked where the name is used, since a user's module may register more
    names: Callable[[], Iterable[str]] | None = None

    def registry_names(self) -> list[str]:
        """The names of the setting's registry (empty if it has none)."""
        return [] if self.names is None else list(self.names())

    def choice_list(self) -> list[str] | None:
        """The valid values of a setting with choices (read from their registry now)."""
        if self.choices is None:
            return None
        found = self.choices() if callable(self.choices) else self.choices
        return list(found)


def setting(
    default: Any = MISSING,
    *,
    kind: type | None = None,
    minimum: float | None = None,
    above: bool = False,
    choices: Callable[[], Iterable[str]] | tuple[str, ...] | None = None,
    help: str = "",
    exposed: bool = True,
    unset: str | Callable[[], str] | None = None,
    names: Callable[[], Iterable[str]] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field declaring a setting: ``default``; ``kind`` (int, float, str, bool, dict,
    tuple; else the default's type); ``minimum`` (with ``above``: strictly greater); ``choices``
    (a tuple, or a function returning a registry's names, read when checked); ``help`` (one line:
    what it is and why its default); ``exposed``: a key of the RunSpec, grids and ``aevb train``;
    ``unset``: what None means, for the help text; ``names``: a registry of valid names,
    checked where they are used (a user's module may register more)."""
    if kind is None:
        sample = default_factory() if default_factory is not None else default
        if sample is None or sample is MISSING:
            raise TypeError("setting(): give kind= for a setting whose default is None")
        kind = type(sample)
    meta = {"setting": Setting(kind, minimum, above, choices, help, exposed, unset, names)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def declared(cls) -> dict[str, Field]:
    """The fields of the dataclass ``cls`` (or of an instance's class) that declare a setting."""
    return {f.name: f for f in fields(cls) if "setting" in f.metadata}


def of(f: Field) -> Setting:
    """The :class:`Setting` a field declares."""
    return f.metadata["setting"]


def default_of(f: Field) -> Any:
    """A field's default value (its factory's value for a mutable one)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(s: Setting) -> str:
    return f"{'>' if s.above else '>='} {s.minimum:g}" if s.minimum is not None else ""


def _check_number(s: Setting, value, path: str):
    if s.kind is int and not _is_int(value):
        bound = f" >= {s.minimum:g}" if s.minimum is not None else ""
        raise ConfigError(
            f"{_where(path)}invalid int value: {value!r} (expected an integer{bound})"
        )
    if s.kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{_where(path)}invalid float value: {value!r} (expected a number)")
    if not math.isfinite(value):
        raise ConfigError(f"{_where(path)}must be finite, got {value!r}")
    low = s.minimum
    if low is not None and (value <= low if s.above else value < low):
        raise ConfigError(f"{_where(path)}must be {_bound(s)}, got {value!r}")
    return float(value) if s.kind is float else value


def _check_sizes(s: Setting, value, path: str) -> tuple:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{_where(path)}expected a list, got {value!r}")
    if s.minimum is None:
        return tuple(value)
    if not all(_is_int(v) for v in value):
        raise ConfigError(f"{_where(path)}expected a list of integers, got {value!r}")
    if not all(v >= s.minimum for v in value):
        raise ConfigError(f"{_where(path)}every size must be {_bound(s)}, got {value!r}")
    return tuple(value)


def check(s: Setting, value: Any, path: str = "") -> Any:
    """``value`` checked against the setting ``s`` (None passes: "not set"), as the setting's
    type (an int given for a float is a float); a :class:`~aevb.errors.ConfigError` naming
    ``path`` says what was expected and what was found. The one range checker of the
    package."""
    if value is None:
        return None
    if s.kind in (int, float):
        return _check_number(s, value, path)
    if s.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(path)}expected true or false, got {value!r}")
        return value
    if s.kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path)}expected a string, got {value!r}")
        valid = s.choice_list()
        if valid is not None and value not in valid:
            raise ConfigError(
                f"{_where(path)}invalid choice: {value!r} (choose from {', '.join(valid)})"
            )
        return value
    if s.kind is tuple:
        return _check_sizes(s, value, path)
    if s.kind is dict and not isinstance(value, Mapping):
        raise ConfigError(f"{_where(path)}expected a table of settings, got {value!r}")
    return value


def check_fields(obj, path: str = "") -> None:
    """Check every declared setting of the dataclass instance ``obj`` (its ``__post_init__``)."""
    for name, f in declared(obj).items():
        check(of(f), getattr(obj, name), f"{path}.{name}" if path else name)


def close_keys(key: str, valid) -> str:
    """``"; did you mean a, b?"`` for the valid keys closest to a misspelt ``key``."""
    close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def describe(f: Field, recipe: bool = False) -> str:
    """The help text of a setting: its ``help``, its registry's names and its default
    (``unset`` where it is None; with ``recipe``: "the model's recipe, else" first)."""
    s, default = of(f), default_of(f)
    if default is None or default == {} or default == ():
        shown = s.unset() if callable(s.unset) else s.unset
    elif isinstance(default, tuple):
        shown = ",".join(str(v) for v in default)
    else:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    text = s.help.rstrip(".")
    names = s.registry_names()
    if names:
        text = f"{text}: {', '.join(names)}"
    if not shown:
        return text
    first = "the model's recipe, else " if recipe else ""
    return f"{text} (default {first}{shown})"


__all__ = [
    "Setting",
    "check",
    "close_keys",
    "check_fields",
    "declared",
    "default_of",
    "describe",
    "of",
    "setting",
]
