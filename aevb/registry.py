"""Helpers shared by the plain-dict registries (models, guides): configs from overrides, and
a user's own programs named ``MODULE:NAME`` instead of a registry key."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeGuard

from aevb.errors import AevbError, ConfigError
from aevb.settings import Setting, check


def unknown_name(
    name: object, known, what: str, also: str = "", error: type[AevbError] = ConfigError
) -> AevbError:
    """The one error for a name no registry holds: ``unknown WHAT 'x'; expected one of
    [...]`` (``also``: other accepted forms, e.g. ``or MODULE:NAME``), with the closest
    names where some are close; an ``error`` (the data layer raises a ``DataError``)."""
    names = sorted(known)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    extra = f" {also}" if also else ""
    return error(f"unknown {what} {name!r}; expected one of {names}{extra}{hint}")


def put(registry: dict, name: str, entry, kind: str):
    """Put ``entry`` in ``registry`` under ``name`` (what every ``register`` does: models,
    guides, objectives, samplers, estimators, inference methods): refused if the name is
    not a non-empty string or another entry holds it."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {kind} is registered under a non-empty name, got {name!r}")
    held = registry.get(name)
    if held is not None and held is not entry:
        raise ConfigError(f"a {kind} named {name!r} is already registered: {held!r}")
    registry[name] = entry
    return entry


def add(registry: dict, cls, kind: str, missing: list[str], hint: str):
    """Put ``cls`` in ``registry`` under ``cls.name`` (``models.register``,
    ``guides.register``): refused if it lacks the attributes in ``missing`` (``hint`` says
    what to do) or if another class holds the name."""
    if missing:
        raise ConfigError(
            f"{cls.__name__} cannot be registered as a {kind}: it has no {missing} ({hint})"
        )
    return put(registry, cls.name, cls, kind)


def lookup(
    registry: typing.Mapping[str, Any],
    name: str,
    what: str,
    also: str = "",
    error: type[AevbError] = ConfigError,
) -> Any:
    """``registry[name]``, or :func:`unknown_name`'s error.

    >>> from aevb.registry import lookup, unknown_name
    >>> lookup({"trace": 1, "iwae": 2}, "iwae", "objective")
    2
    >>> str(unknown_name("iwea", ["trace", "iwae"], "objective")).split("; ")[-1]
    "did you mean 'iwae'?"
    """
    if name not in registry:
        raise unknown_name(name, registry, what, also, error)
    return registry[name]


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


def _implied(kind, least: int) -> Setting | None:
    """The :class:`~aevb.settings.Setting` a model config field's type implies: sizes (int)
    >= ``least``, reals (float) finite and >= 0, layer sizes integers >= 1 (None: a type the
    model checks itself)."""
    if kind in (int, float, bool, str):
        return Setting(kind, minimum=least if kind is int else 0 if kind is float else None)
    if typing.get_origin(kind) is tuple and typing.get_args(kind)[:1] == (int,):
        return Setting(tuple, minimum=1)
    return None


def check_config_values(config_class: Any, values: dict, what: str = "") -> None:
    """Raise :class:`ConfigError` for a value of the wrong type or range for its field of
    ``config_class`` (a dataclass): sizes must be integers >= 1 (>= 0 where the default is
    0 or the field's metadata says ``{"min": 0}``), reals finite and >= 0,
    layer sizes lists of integers >= 1, by the one range checker (:func:`aevb.settings.check`).
    Fields of other types are the model's to check."""
    hints = typing.get_type_hints(config_class)
    least = {
        f.name: f.metadata.get("min", 0 if f.default == 0 else 1) for f in fields(config_class)
    }
    for key, value in values.items():
        implied = _implied(hints.get(key), least.get(key, 1))
        if implied is not None:
            check(implied, value, f"{what}.{key}" if what else key)


# ------------------------------------------------------------------ a user's own programs
#
# Besides a registry key, a model or guide may be named ``MODULE:NAME``: an attribute of a
# module the user wrote (a class like the registered ones, or a plain Pyro function). A run
# records where it came from (:func:`program_source`), and :func:`reimport` finds it again.


def is_reference(name: object) -> TypeGuard[str]:
    """Whether ``name`` is ``MODULE:NAME`` (a user's object) rather than a registry key."""
    return isinstance(name, str) and ":" in name


def split_reference(ref: str, role: str = "model") -> tuple[str, str]:
    """``(module, attribute)`` of ``MODULE:NAME``; a clear error for anything else."""
    module, _, attribute = ref.partition(":")
    names = [*module.split("."), *attribute.split(".")]
    if not all(part.isidentifier() for part in names):
        raise ConfigError(
            f"{role} {ref!r}: expected MODULE:NAME (e.g. my_models:GaussVAE, a dotted module "
            "path and an attribute of it)"
        )
    return module, attribute


def _import_module(name: str, ref: str, role: str, first: Path | None):
    """The module ``name``, imported as ``python -m`` does (the current directory, then
    ``PYTHONPATH``), after ``first`` if given (the folder a run recorded it in)."""
    folders = [str(p) for p in (first, Path.cwd()) if p is not None]
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise ConfigError(
                f"{role} {ref!r}: no module named {name!r} in {' or '.join(folders)} or on "
                "PYTHONPATH; run aevb from the folder that holds it, or add that folder to "
                "PYTHONPATH"
            ) from None
        raise ConfigError(f"{role} {ref!r}: importing {name} failed: {exc}") from exc
    except (ImportError, SyntaxError) as exc:
        raise ConfigError(f"{role} {ref!r}: importing {name} failed: {exc}") from exc


#: the user modules imported by name in this process (``aevb --module``, a grid's
#: ``modules``, a run's record), in order: what a run records, to import them again
EXTENSIONS: dict[str, str | None] = {}


def import_extensions(names, first: Path | None = None) -> None:
    """Import each module of ``names``: a user's module that registers models, guides,
    objectives, samplers, estimators or inference methods when imported, found as
    ``python -m`` finds it (``first``: a folder searched before). Remembered in
    :data:`EXTENSIONS` (name -> file), so that a run records them."""
    for name in names:
        module = _import_module(name, name, "module", first)
        EXTENSIONS[name] = getattr(module, "__file__", None)


def recorded_extensions() -> list[dict]:
    """The imported extensions as a run records them: ``{"name", "file", "sha256"}``."""
    return [{"name": n, "file": f, "sha256": _sha256(f)} for n, f in EXTENSIONS.items()]


def import_reference(ref: str, role: str = "model", first: Path | None = None) -> Any:
    """The object ``MODULE:NAME`` names, its module imported from the current directory and
    ``PYTHONPATH`` (like ``python -m``; ``first``: a folder searched before them). A missing
    module or attribute is a :class:`~aevb.errors.ConfigError` naming what was searched."""
    module_name, attribute = split_reference(ref, role)
    module = _import_module(module_name, ref, role, first)
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            where = getattr(module, "__file__", None) or module_name
            public = [n for n in vars(module) if not n.startswith("_")]
            hint = difflib.get_close_matches(part, public, n=3, cutoff=0.5)
            also = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise ConfigError(f"{role} {ref!r}: {where} has no attribute {attribute!r}{also}")
        obj = getattr(obj, part)
    return obj


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def program_source(obj: Any, ref: str | None = None) -> dict | None:
    """Where a user's model or guide comes from, as a run records it: ``ref``
    (``MODULE:NAME``), ``kind`` (what ``ref`` names: ``class``, ``function`` or ``object``,
    e.g. a module-level ``nn.Module``), the module's ``file`` and its ``sha256``. Without
    ``ref``, ``obj`` is an instance of (or is) a registered class: its class's module is
    recorded, unless it is the package's own (None)."""
    if ref is None:
        target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
        module = getattr(target, "__module__", None) or ""
        if module == "aevb" or module.startswith("aevb."):
            return None
        ref = f"{module}:{getattr(target, '__qualname__', target.__name__)}"
        obj = target
    module = ref.partition(":")[0]
    kind = "class" if inspect.isclass(obj) else "function" if inspect.isroutine(obj) else "object"
    file = getattr(sys.modules.get(module), "__file__", None)
    return {
        "ref": ref,
        "kind": kind,
        "file": None if file is None else str(Path(file).resolve()),
        "sha256": _sha256(file),
    }


def _recorded_root(entry: dict) -> Path | None:
    """The folder to import a recorded module from (its file's folder, less the package
    folders of a dotted module name), if the file is still there."""
    file = entry.get("file")
    if not file or not Path(file).is_file():
        return None
    depth = split_reference(entry["ref"])[0].count(".")
    depth += Path(file).name == "__init__.py"
    return Path(file).parents[depth]


def reimport(entry: dict, role: str, run: str | Path) -> Any:
    """The model or guide a run recorded (:func:`program_source`), imported again: from the
    folder of the recorded file first, then as :func:`import_reference` does. An error if
    it is gone or is no longer a ``kind`` (class / function); a line on stderr if its file
    changed since (the run's parameters are then loaded into today's code)."""
    ref = entry["ref"]
    if ref.startswith("__main__:"):
        raise ConfigError(
            f"{run}: the run's {role} was defined in a script run as __main__ "
            f"({entry.get('file')}), which cannot be imported again; move it into a module "
            "and name it MODULE:NAME"
        )
    try:
        obj = import_reference(ref, role, _recorded_root(entry))
    except ConfigError as exc:
        raise ConfigError(f"{run}: cannot find the run's {role} again: {exc}") from None
    now = program_source(obj, ref) or {"kind": entry.get("kind"), "file": None}
    if now["kind"] != entry.get("kind"):
        raise ConfigError(
            f"{run}: the run's {role} {ref!r} was a {entry.get('kind')} when it was trained; "
            f"{now['file']} now makes it a {now['kind']}"
        )
    if entry.get("sha256") and now.get("sha256") != entry["sha256"]:
        moved = "" if now["file"] == entry.get("file") else f" (now {now['file']})"
        print(
            f"aevb: warning: {entry.get('file')}{moved}, which defines the run's {role} "
            f"{ref!r}, changed since the run was trained (sha256 {entry['sha256'][:12]} then, "
            f"{str(now.get('sha256'))[:12]} now); its parameters are loaded into today's code",
            file=sys.stderr,
        )
    return obj
