"""A run as a value: :class:`RunSpec`, the one description of a training run.

A RunSpec is plain data: nested frozen dataclasses that :meth:`RunSpec.to_dict` turns into
JSON-able dicts (what ``config.json`` stores under ``"spec"``) and :meth:`RunSpec.from_dict`
turns back, checking every key and value on the way::

    RunSpec
      model       ModelSpec      registry name, preset, guide, config overrides
      data        DataSpec       dataset name or path, binarisation, subsets
      inference   SVISpec        objective, particles, alpha, lr schedule
                  | MCEMSpec     sampler and its options, MCEM's settings, the proposal
                                 fitted for evaluation
                  | VIMCMCSpec   the encoder's objective, HMC transitions from its draws
                  | ...          one per method of :data:`aevb.inference.method.METHODS`
      schedule    ScheduleSpec   epochs, batch size, learning rate, time budget, seed
      evaluation  (EvaluationSpec, ...)   estimators run once training is done
      device      "cpu", "cuda", "cuda:N" or "auto" (:mod:`aevb.devices`)

Every setting is declared once, as a field of a config (:mod:`aevb.settings`): the inference
and schedule parts are made from the method's config (:func:`spec_for`), so a setting added
there is a spec key, a TOML key and an ``aevb train`` option at once.

A field left at ``None`` means "the model's recipe, else the library's default": the spec
records what was asked for, the run's ``config.json`` also records what it resolved to
(``"fit"``). The command line, ``aevb compare`` and scripts build RunSpecs;
:mod:`aevb.runs` runs them.

Two forms are accepted. The nested form is :meth:`RunSpec.from_dict`'s (JSON, a TOML file with
``[model]``, ``[schedule]``... tables). The flat form is the one of ``aevb train``'s options
and of ``aevb compare``'s cells (``objective = "iwae"``, ``particles = 5``, ``z_dim = 50``),
mapped by :func:`flat_keys` (:meth:`RunSpec.from_flat`).

Names that point into a registry (model, guide, objective, sampler, preset) are checked where
the spec is resolved (:func:`aevb.runs.resolve`), against the registries of the process that
runs it, since a user's module may register more; everything else is checked here.

Example:
    >>> from aevb.spec import RunSpec
    >>> spec = RunSpec.from_flat({"model": "vae", "objective": "iwae", "particles": 5})
    >>> spec.inference.particles, spec.schedule.seed
    (5, 0)
    >>> RunSpec.from_dict(spec.to_dict()) == spec
    True
    >>> RunSpec.from_flat({"model": "vae", "partciles": 5})
    Traceback (most recent call last):
    ...
    aevb.errors.ConfigError: unknown key 'partciles'; did you mean particles? (valid keys: ...)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, ClassVar

import tomllib

#: the binarisations :func:`aevb.data.load` knows (the data layer's own list)
from aevb.data.dataset import BINARIZATIONS
from aevb.devices import check_device_name
from aevb.errors import ConfigError
from aevb.inference import psis
from aevb.inference.estimators import ESTIMATORS
from aevb.inference.loop import LoopConfig
from aevb.inference.method import METHODS
from aevb.registry import check_config_values, lookup
from aevb.settings import Setting, check, close_keys, declared, default_of, of, setting

# ------------------------------------------------------------------ value checks


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def _table(value, path) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_where(path)}expected a table of settings, got {value!r}")
    return {str(k): _frozen(v) for k, v in value.items()}


def _frozen(value):
    """JSON and TOML lists as tuples, so that a spec read back equals the one written."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _frozen(v) for k, v in value.items()}
    return value


def unknown_key(key: str, valid, path: str = "") -> ConfigError:
    """The error for a key that names no setting: the closest valid keys, then all of them."""
    where = f" in {path}" if path else ""
    return ConfigError(
        f"unknown key {key!r}{where}{close_keys(key, valid)} (valid keys: "
        f"{', '.join(sorted(valid))})"
    )


def _build(cls, raw, path: str):
    """An instance of the spec dataclass ``cls`` from a dict, every key and value checked."""
    values = _table(raw, path)
    names = {f.name for f in fields(cls)}
    for key in values:
        if key not in names:
            raise (
                cls.unknown(key, path) if hasattr(cls, "unknown") else unknown_key(key, names, path)
            )
    kwargs = {}
    for f in fields(cls):
        if values.get(f.name) is None:  # None: not set, the field's default
            continue
        value, where = values[f.name], f"{path}.{f.name}" if path else f.name
        nested = f.metadata.get("spec")
        if nested is not None:
            kwargs[f.name] = nested(value, where)
        elif "setting" in f.metadata:
            kwargs[f.name] = _frozen(check(of(f), value, where))
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def _to_dict(obj) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj)}
        kind = getattr(type(obj), "method", None)
        return {"method": kind, **out} if kind is not None else out
    if isinstance(obj, tuple | list):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------ the parts of a run


class _Spec:
    """What every part of a spec can do: be read from a dict and written back."""

    @classmethod
    def from_dict(cls, raw: Mapping):
        """The part of a dict; unknown keys and bad values are clear errors."""
        return _build(cls, raw, "")

    def to_dict(self) -> dict:
        """The part as a dict of plain values (:meth:`from_dict` reads it back)."""
        return _to_dict(self)

    def given(self) -> dict:
        """The fields that are set (not None), by name."""
        return {name: value for name, value in vars(self).items() if value is not None}


def _guide_names():
    from aevb import guides

    return guides.GUIDES


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """Which model: a registry name (:data:`aevb.models.MODELS`), a named preset, the guide
    (a key of :data:`aevb.guides.GUIDES`; None = the model's default), overrides of the
    model's config fields (``{"z_dim": 50, "hidden": (200, 200)}``) and of the guide's
    (``{"flow_steps": 4}`` for the ``iaf`` guide).

    ``name`` and ``guide`` may instead be ``MODULE:NAME``, a user's class or plain Pyro
    function (``"my_models:GaussVAE"``, ``"my_models:guide"``), imported where the spec is
    resolved (:func:`aevb.models.get`); a plain model function needs a guide."""

    name: str = setting("vae", help="a registered model name or MODULE:NAME")
    preset: str | None = setting(
        None, kind=str, help="a named model configuration, e.g. tutorial-cb", unset="none"
    )
    guide: str | None = setting(
        None,
        kind=str,
        names=_guide_names,
        help="the approximate posterior's family, or MODULE:NAME: a guide class or a Pyro "
        "function guide(x) of your own (needed for a plain model function)",
        unset="the model's",
    )
    config: Mapping[str, Any] = setting(
        default_factory=dict, exposed=False, help="overrides of the model's config fields"
    )
    guide_config: Mapping[str, Any] = setting(
        default_factory=dict, exposed=False, help="overrides of the guide's config fields"
    )

    def __post_init__(self):
        object.__setattr__(self, "config", _frozen(dict(self.config)))
        object.__setattr__(self, "guide_config", _frozen(dict(self.guide_config)))
        from aevb import guides, models
        from aevb.registry import is_reference, split_reference

        for role, name in (("model.name", self.name), ("model.guide", self.guide)):
            if is_reference(name):  # checked here; imported where the spec is resolved
                split_reference(name, role)

        cls = models.MODELS.get(self.name)
        config_class = getattr(cls, "config_class", None)
        if config_class is not None:  # unregistered names fail where the spec is resolved
            valid = {f.name for f in fields(config_class)}
            for key in self.config:
                if key not in valid:
                    raise unknown_key(key, valid, f"model.config ({self.name})")
            check_config_values(config_class, dict(self.config), "model.config")
        guide = self.guide or getattr(cls, "default_guide", None)
        guide_class = getattr(guides.GUIDES.get(guide or ""), "config_class", None)
        if self.guide_config and guide_class is not None:
            _check_guide_config(guide, guide_class, self.guide_config, guides.GUIDES)


def _check_guide_config(name, config_class, values: Mapping, registry: Mapping) -> None:
    """Every key of ``values`` a field of the guide ``name``'s config (else the error names
    the guides that have it), with a value of its type and range."""
    valid = {f.name for f in fields(config_class)}
    for key in values:
        if key in valid:
            continue
        owners = sorted(
            other
            for other, g in registry.items()
            if key in getattr(getattr(g, "config_class", None), "__dataclass_fields__", {})
        )
        hint = f"; {key} is a setting of the guide(s) {owners}" if owners else ""
        raise ConfigError(
            f"model.guide_config: the {name!r} guide has no setting {key!r}{hint}"
            f" (its settings: {', '.join(sorted(valid))})"
        )
    check_config_values(config_class, dict(values), "model.guide_config")


@dataclass(frozen=True)
class DataSpec(_Spec):
    """Which data: a registered name (``mnist``, ``fa-synthetic``) or a path (IDX folder,
    ``.npz``/``.npy``); the binarisation (None = the model's, else the dataset's default);
    the first ``subset`` training and ``test_subset`` test datapoints (None = all); ``labels``
    training labels kept, balanced over the classes and chosen by the run's seed, the rest
    hidden (None = all kept; semi-supervised models such as M2 only)."""

    source: str = setting("mnist", help="dataset name, IDX folder or .npz/.npy")
    binarize: str | None = setting(
        None,
        kind=str,
        choices=tuple(sorted(BINARIZATIONS)),
        help="the data transform",
        unset="the model's, else the dataset's",
    )
    subset: int | None = setting(
        None, kind=int, minimum=1, help="train on the first N datapoints", unset="all"
    )
    test_subset: int | None = setting(
        None, kind=int, minimum=1, help="score the first N test points", unset="all"
    )
    labels: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="keep N training labels, balanced over the classes and chosen by the seed; hide "
        "the rest (semi-supervised models)",
        unset="all",
    )
    validation: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="hold the last N training datapoints out as a validation set, scored after "
        "every epoch (valid_* columns of history.csv; what schedule.patience stops on)",
        unset="none",
    )


@dataclass(frozen=True)
class InferenceSpec(_Spec):
    """The inference part of a spec: one subclass per method of
    :data:`aevb.inference.method.METHODS`, made by :func:`spec_for` from the exposed settings
    of the method's config (each None: the model's recipe, else the config's default)."""

    method: ClassVar[str] = ""


#: each method's spec class, made once per (name, config class)
_SPECS: dict[tuple[str, type], type[InferenceSpec]] = {}


def spec_for(name: str) -> type[InferenceSpec]:
    """The spec class of the inference method ``name``: one optional field per exposed
    setting of its config (:mod:`aevb.settings`) that is not a schedule setting."""
    method = lookup(METHODS, name, "inference method")
    key = (name, method.config)
    if key not in _SPECS:
        shared = {f.name for f in fields(LoopConfig)}
        own = [
            (f.name, Any, field(default=None, metadata=f.metadata))
            for f in declared(method.config).values()
            if of(f).exposed and f.name not in shared
        ]
        namespace = {
            "method": name,
            "__doc__": f"The settings of {method.title} (``{name}``): :class:"
            f"`{method.config.__module__}.{method.config.__qualname__}` has what each means.",
            "__post_init__": lambda self: method.check_spec(self.given(), "inference"),
            "unknown": staticmethod(lambda key, path: _unknown_setting(key, path, name)),
        }
        title = "".join(part.upper() for part in name.split("-"))
        cls = make_dataclass(
            f"{title}Spec", own, bases=(InferenceSpec,), frozen=True, namespace=namespace
        )
        cls.__module__ = __name__
        _SPECS[key] = cls
    return _SPECS[key]


def inference_specs() -> dict[str, type[InferenceSpec]]:
    """Every registered method's spec class, by name."""
    return {name: spec_for(name) for name in METHODS}


def _unknown_setting(key: str, path: str, method: str) -> ConfigError:
    """The error for an inference setting ``key`` that ``method``'s spec does not have: the
    methods that have it, if any, else the closest valid keys."""
    specs = inference_specs()
    owners = [m for m, cls in specs.items() if key in {f.name for f in fields(cls)}]
    if owners:
        names = " and ".join(f"{METHODS[m].title} ({m!r})" for m in owners)
        return ConfigError(
            f"{key} is a setting of {names}; {METHODS[method].title} (method {method!r}) has none"
        )
    return unknown_key(key, {f.name for f in fields(specs[method])}, path)


def _inference(value, path) -> InferenceSpec:
    if isinstance(value, InferenceSpec):
        return value
    values = _table(value, path)
    method = check(
        Setting(str, choices=lambda: METHODS), values.pop("method", "svi"), f"{path}.method"
    )
    values = METHODS[method].upgrade_spec(values)
    return _build(spec_for(method), values, path)


def _schedule_spec() -> type:
    """The schedule part: the exposed settings every method shares (:class:`LoopConfig`'s),
    None: the model's recipe, else the config's default; the seed defaults to the config's."""
    parts = [
        (
            f.name,
            Any,
            field(default=default_of(f) if f.name == "seed" else None, metadata=f.metadata),
        )
        for f in declared(LoopConfig).values()
        if of(f).exposed
    ]
    doc = (
        "How long and how fast: the settings every method shares (:class:"
        "`aevb.inference.loop.LoopConfig` has what each means); None: the model's recipe, else "
        "the config's default."
    )
    cls = make_dataclass(
        "ScheduleSpec", parts, bases=(_Spec,), frozen=True, namespace={"__doc__": doc}
    )
    cls.__module__ = __name__
    return cls


#: the schedule part, and the three methods' parts (made, so typed as Any)
ScheduleSpec: Any = _schedule_spec()
SVISpec: Any = spec_for("svi")
MCEMSpec: Any = spec_for("mcem")
VIMCMCSpec: Any = spec_for("vi-mcmc")


def estimator_defaults() -> dict[str, int]:
    """Each estimator's ``num_samples`` where none is given (its ``default_samples``)."""
    return {name: e.default_samples for name, e in ESTIMATORS.items()}


@dataclass(frozen=True)
class EvaluationSpec(_Spec):
    """One estimate of the test log-likelihood once training is done: ``is`` with
    ``num_samples`` proposals per datapoint, or ``ais`` with ``num_samples`` chains and
    ``ais_temperatures`` temperatures; on the first ``subset`` test points (None = all)."""

    estimator: str = setting("is", choices=lambda: ESTIMATORS, help="the estimator")
    num_samples: int | None = setting(
        None,
        kind=int,
        minimum=1,
        help="the estimator's draws per datapoint",
        unset="the estimator's default_samples",
    )
    ais_temperatures: int = setting(500, minimum=1, help="AIS: annealing steps")
    subset: int | None = setting(
        None, kind=int, minimum=1, help="first N test points only", unset="all"
    )
    batch_size: int = setting(100, minimum=1, help="test points per batch")
    seed: int = setting(0, minimum=0, help="the seed of the estimate's draws")
    khat_share: float = setting(
        psis.FLAG_SHARE,
        minimum=0,
        help="an IS estimate is flagged when more than this share of the test points have a "
        "Pareto k-hat above min(1 - 1/log10 S, 0.7): one point in twenty whose estimate "
        "cannot be trusted moves the test-set mean by an unknown amount",
    )

    @property
    def samples(self) -> int:
        """``num_samples``, or the estimator's default (IS: 1000, AIS: 16)."""
        return self.num_samples or ESTIMATORS[self.estimator].default_samples

    @property
    def key(self) -> str:
        """The estimate's name in ``evaluation.json``, e.g. ``is-1000``."""
        return f"{self.estimator}-{self.samples}"


def _evaluations(value, path) -> tuple[EvaluationSpec, ...]:
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{path}: expected a list of estimators, got {value!r}")
    return tuple(
        v if isinstance(v, EvaluationSpec) else _build(EvaluationSpec, v, f"{path}[{i}]")
        for i, v in enumerate(value)
    )


def _device(value, path) -> str:
    try:
        return check_device_name(check(Setting(str), value, path))
    except ConfigError as exc:
        raise ConfigError(f"{_where(path)}{exc}") from None


def _nested(cls):
    return lambda value, path: value if isinstance(value, cls) else _build(cls, value, path)


@dataclass(frozen=True)
class RunSpec(_Spec):
    """One training run, as plain data (see the module docstring)."""

    model: ModelSpec = field(default_factory=ModelSpec, metadata={"spec": _nested(ModelSpec)})
    data: DataSpec = field(default_factory=DataSpec, metadata={"spec": _nested(DataSpec)})
    inference: InferenceSpec = field(default_factory=SVISpec, metadata={"spec": _inference})
    schedule: Any = field(default_factory=ScheduleSpec, metadata={"spec": _nested(ScheduleSpec)})
    evaluation: tuple[EvaluationSpec, ...] = field(default=(), metadata={"spec": _evaluations})
    #: "cpu" (the default: published figures reproduce), "cuda", "cuda:N" or "auto"
    device: str = field(default="cpu", metadata={"spec": _device})

    def __post_init__(self):
        object.__setattr__(self, "evaluation", tuple(self.evaluation))

    @classmethod
    def from_dict(cls, raw: Mapping) -> RunSpec:
        """The spec of a nested dict (:meth:`to_dict`'s form, JSON, a TOML file's tables);
        an unknown key is an error naming it and the closest valid keys, and values are
        checked for their types and ranges."""
        return _build(cls, raw, "")

    def to_dict(self) -> dict:
        """The nested dict of plain values that :meth:`from_dict` reads back to an equal
        spec (what ``config.json`` stores under ``"spec"``)."""
        return _to_dict(self)

    @classmethod
    def from_flat(cls, flat: Mapping) -> RunSpec:
        """The spec of a flat dict of :func:`flat_keys` (``aevb train``'s options with
        dashes as underscores; an ``aevb compare`` cell)."""
        return cls.from_dict(nest(flat))

    def replace(self, **parts) -> RunSpec:
        """A copy with whole parts replaced (``spec.replace(schedule=...)``)."""
        from dataclasses import replace

        return replace(self, **parts)


#: the flat form's keys of the model and the data, and where each goes in the nested form
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("model", "name"),
    "preset": ("model", "preset"),
    "guide": ("model", "guide"),
    "flow_steps": ("model", "guide_config", "flow_steps"),
    "z_dim": ("model", "config", "z_dim"),
    "hidden": ("model", "config", "hidden"),
    "likelihood": ("model", "config", "likelihood"),
    "data": ("data", "source"),
    "binarize": ("data", "binarize"),
    "subset": ("data", "subset"),
    "test_subset": ("data", "test_subset"),
    "labels": ("data", "labels"),
    "validation": ("data", "validation"),
}


def flat_keys() -> dict[str, tuple[str, ...]]:
    """The flat form's keys (``aevb train``'s options, an ``aevb compare`` cell's keys) and
    where each goes in the nested form: :data:`MODEL_KEYS`, ``inference`` (the method), every
    registered method's settings, the schedule's and ``device``. Read from the declarations
    each time, so a method a user's module registers adds its settings."""
    keys = {**MODEL_KEYS, "inference": ("inference", "method")}
    for cls in inference_specs().values():
        keys.update({f.name: ("inference", f.name) for f in fields(cls)})
    keys.update({f.name: ("schedule", f.name) for f in fields(ScheduleSpec)})
    keys["device"] = ("device",)
    return keys


def hidden_sizes(value, path: str = "hidden") -> tuple[int, ...]:
    """Hidden layer sizes from ``"200,200"``, ``200`` or ``[200, 200]``."""
    if isinstance(value, str):
        try:
            return tuple(int(t) for t in value.split(",") if t.strip())
        except ValueError:
            raise ConfigError(f"{path}: expected comma-separated ints, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    raise ConfigError(f"{path}: expected layer sizes such as [200, 200], got {value!r}")


def nest(flat: Mapping) -> dict:
    """The nested form of a flat dict of :func:`flat_keys` (None values are left out)."""
    out: dict = {}
    keys = flat_keys()
    for key, value in flat.items():
        if key not in keys:
            raise unknown_key(key, keys)
        if value is None:
            continue
        if key == "hidden":
            value = hidden_sizes(value)
        where = out
        *parents, last = keys[key]
        for part in parents:
            where = where.setdefault(part, {})
        where[last] = value
    return out


def load_spec(path) -> RunSpec:
    """The RunSpec in a ``.json`` file (:meth:`RunSpec.to_dict`'s form, or a run directory's
    ``config.json``, whose ``"spec"`` is taken) or a ``.toml`` file (the same keys as tables:
    ``[model]``, ``[inference]``, ``[schedule]``, ``[[evaluation]]``...)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the run spec: {exc}") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if isinstance(raw, dict) and "spec" in raw and "fit" in raw:  # a run's config.json
        raw = raw["spec"]
    try:
        return RunSpec.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


__all__ = [
    "MODEL_KEYS",
    "InferenceSpec",
    "DataSpec",
    "EvaluationSpec",
    "MCEMSpec",
    "ModelSpec",
    "RunSpec",
    "SVISpec",
    "VIMCMCSpec",
    "ScheduleSpec",
    "close_keys",
    "estimator_defaults",
    "flat_keys",
    "inference_specs",
    "spec_for",
    "hidden_sizes",
    "load_spec",
    "nest",
    "unknown_key",
]
