"""A run as a value: :class:`RunSpec`, the one description of a training run.

A RunSpec is plain data: nested frozen dataclasses that :meth:`RunSpec.to_dict` turns into
JSON-able dicts (what ``config.json`` stores under ``"spec"``) and :meth:`RunSpec.from_dict`
turns back, checking every key and value on the way::

    RunSpec
      model       ModelSpec      registry name, preset, guide, config overrides
      data        DataSpec       dataset name or path, binarisation, subsets
      inference   SVISpec        objective, particles, alpha, lr schedule
                  | MCEMSpec     a SamplerSpec (name and the sampler's own options), MCEM's
                                 settings, the proposal fitted for evaluation
                  | VIMCMCSpec   the encoder's objective, HMC transitions from its draws
      schedule    ScheduleSpec   epochs, batch size, learning rate, time budget, seed
      evaluation  (EvaluationSpec, ...)   estimators run once training is done
      device      "cpu", "cuda", "cuda:N" or "auto" (:mod:`aevb.devices`)

A field left at ``None`` means "the model's recipe, else the library's default": the spec
records what was asked for, the run's ``config.json`` also records what it resolved to
(``"fit"``). The command line, ``aevb compare`` and scripts build RunSpecs;
:mod:`aevb.runs` runs them.

Two forms are accepted. The nested form is :meth:`RunSpec.from_dict`'s (JSON, a TOML file with
``[model]``, ``[schedule]``... tables). The flat form is the one of ``aevb train``'s options
and of ``aevb compare``'s cells (``objective = "iwae"``, ``particles = 5``, ``z_dim = 50``),
mapped by :data:`FLAT_KEYS` (:meth:`RunSpec.from_flat`).

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

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import tomllib

#: the binarisations :func:`aevb.data.load` knows (the data layer's own list)
from aevb.data.dataset import BINARIZATIONS
from aevb.devices import check_device_name
from aevb.errors import ConfigError
from aevb.registry import check_config_values

# ------------------------------------------------------------------ value checks


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def _integer(minimum: int) -> Callable[[Any, str], int]:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"{_where(path)}invalid int value: {value!r} (expected an integer >= {minimum})"
            )
        if value < minimum:
            raise ConfigError(f"{_where(path)}must be >= {minimum}, got {value}")
        return value

    return check


def _number(positive: bool = False) -> Callable[[Any, str], float]:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{_where(path)}invalid float value: {value!r} (expected a number)")
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"{_where(path)}must be finite, got {value!r}")
        if positive and not number > 0:
            raise ConfigError(f"{_where(path)}must be > 0, got {value!r}")
        return number

    return check


def _text(choices: tuple[str, ...] | None = None) -> Callable[[Any, str], str]:
    def check(value, path):
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path)}expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{_where(path)}invalid choice: {value!r} (choose from {', '.join(choices)})"
            )
        return value

    return check


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


def _setting(check: Callable[[Any, str], Any] | None = None, default: Any = None, **kw):
    """A spec field whose value is checked by ``check`` (None passes as "not set")."""
    return field(default=default, metadata={"check": check}, **kw)


def close_keys(key: str, valid) -> str:
    """``"; did you mean a, b?"`` for the valid keys closest to a misspelt ``key``."""
    close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


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
        elif f.metadata.get("check") is not None:
            kwargs[f.name] = f.metadata["check"](value, where)
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


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """Which model: a registry name (:data:`aevb.models.MODELS`), a named preset, the guide
    (a key of :data:`aevb.guides.GUIDES`; None = the model's default), overrides of the
    model's config fields (``{"z_dim": 50, "hidden": (200, 200)}``) and of the guide's
    (``{"flow_steps": 4}`` for the ``iaf`` guide).

    ``name`` and ``guide`` may instead be ``MODULE:NAME``, a user's class or plain Pyro
    function (``"my_models:GaussVAE"``, ``"my_models:guide"``), imported where the spec is
    resolved (:func:`aevb.models.get`); a plain model function needs a guide."""

    name: str = _setting(_text(), "vae")
    preset: str | None = _setting(_text())
    guide: str | None = _setting(_text())
    config: Mapping[str, Any] = _setting(_table, default=MISSING, default_factory=dict)
    guide_config: Mapping[str, Any] = _setting(_table, default=MISSING, default_factory=dict)

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

    source: str = _setting(_text(), "mnist")
    binarize: str | None = _setting(_text(tuple(sorted(BINARIZATIONS))))
    subset: int | None = _setting(_integer(1))
    test_subset: int | None = _setting(_integer(1))
    labels: int | None = _setting(_integer(1))


#: learning-rate schedules of SVI (:data:`aevb.inference.svi.LR_SCHEDULES`)
LR_SCHEDULE_NAMES = ("constant", "burda")


@dataclass(frozen=True)
class SVISpec(_Spec):
    """Stochastic variational inference: the objective (a key of
    :data:`aevb.inference.OBJECTIVES`; None = the model's default, else ``trace``), its
    particles per datapoint (None = the objective's default: 5 for iwae and renyi, else 1),
    the Renyi alpha (the ``renyi`` objective only) and the learning-rate schedule."""

    method = "svi"
    objective: str | None = _setting(_text())
    particles: int | None = _setting(_integer(1))
    alpha: float | None = _setting(_number())
    lr_schedule: str | None = _setting(_text(LR_SCHEDULE_NAMES))

    def __post_init__(self):
        from aevb.inference.objectives import check_alpha

        if self.objective is not None:
            check_alpha(self.objective, self.alpha, "inference.alpha")

    @staticmethod
    def unknown(key: str, path: str) -> ConfigError:
        return _unknown_setting(key, path, "svi")


@dataclass(frozen=True)
class SamplerSpec(_Spec):
    """MCEM's E-step sampler: a key of :data:`aevb.inference.samplers.SAMPLERS` and options
    of that sampler's own dataclass (e.g. ``{"num_steps": 20}`` for ``batched-hmc``,
    ``{"max_tree_depth": 6}`` for ``nuts``)."""

    name: str = _setting(_text(), "batched-hmc")
    options: Mapping[str, Any] = _setting(_table, default=MISSING, default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", _frozen(dict(self.options)))
        from aevb.inference.samplers import check_sampler_options

        check_sampler_options(self.name, self.options, "inference.sampler.options")


def _sampler(value, path) -> SamplerSpec:
    if isinstance(value, str):  # the flat form: just the name
        value = {"name": value}
    return _build(SamplerSpec, value, path)


@dataclass(frozen=True)
class MCEMSpec(_Spec):
    """Monte Carlo EM (:class:`aevb.inference.MCEMConfig` has what each setting means; None =
    the model's MCEM recipe, else that default)."""

    method = "mcem"
    sampler: SamplerSpec = field(default_factory=SamplerSpec, metadata={"spec": _sampler})
    proposal_epochs: int | None = _setting(_integer(0))
    proposal_objective: str | None = _setting(_text())
    m_steps: int | None = _setting(_integer(1))
    num_samples: int | None = _setting(_integer(1))
    first_visit_warmup: int | None = _setting(_integer(0))
    init_step_size: float | None = _setting(_number(positive=True))
    lr_decay: float | None = _setting(_number(positive=True))
    lr_decay_epochs: int | None = _setting(_integer(1))

    @staticmethod
    def unknown(key: str, path: str) -> ConfigError:
        return _unknown_setting(key, path, "mcem")


@dataclass(frozen=True)
class VIMCMCSpec(_Spec):
    """MCMC-refined VI (:class:`aevb.inference.VIMCMCConfig` has what each setting means;
    None = the model's recipe, else that default): the encoder's objective and particles,
    ``mcmc_steps`` HMC transitions from its draws, ``leapfrog_steps`` per transition."""

    method = "vi-mcmc"
    objective: str | None = _setting(_text())
    particles: int | None = _setting(_integer(1))
    alpha: float | None = _setting(_number())
    mcmc_steps: int | None = _setting(_integer(1))
    leapfrog_steps: int | None = _setting(_integer(1))
    init_step_size: float | None = _setting(_number(positive=True))

    def __post_init__(self):
        from aevb.inference.objectives import check_alpha

        if self.objective is not None:
            check_alpha(self.objective, self.alpha, "inference.alpha")

    @staticmethod
    def unknown(key: str, path: str) -> ConfigError:
        return _unknown_setting(key, path, "vi-mcmc")


INFERENCE_SPECS: dict[str, type] = {"svi": SVISpec, "mcem": MCEMSpec, "vi-mcmc": VIMCMCSpec}


#: each method's name in words, for errors
METHOD_NAMES = {"svi": "SVI", "mcem": "Monte Carlo EM", "vi-mcmc": "MCMC-refined VI"}


def _unknown_setting(key: str, path: str, method: str) -> ConfigError:
    """The error for an inference setting ``key`` that ``method``'s spec does not have: the
    methods that have it, if any, else the closest valid keys."""
    owners = [m for m, cls in INFERENCE_SPECS.items() if key in {f.name for f in fields(cls)}]
    if owners:
        names = " and ".join(f"{METHOD_NAMES[m]} ({m!r})" for m in owners)
        return ConfigError(
            f"{key} is a setting of {names}; {METHOD_NAMES[method]} (method {method!r}) has none"
        )
    return unknown_key(key, {f.name for f in fields(INFERENCE_SPECS[method])}, path)


def _inference(value, path) -> SVISpec | MCEMSpec | VIMCMCSpec:
    values = _table(value, path)
    method = _text(tuple(INFERENCE_SPECS))(values.pop("method", "svi"), f"{path}.method")
    return _build(INFERENCE_SPECS[method], values, path)


@dataclass(frozen=True)
class ScheduleSpec(_Spec):
    """How long and how fast: epochs (None = the model's recipe, else 10), minibatch size
    (recipe, else 20), Adam's learning rate (recipe, else 1e-3), a training-time budget in
    seconds and a step budget (None = none), and the seed that fixes the run."""

    epochs: int | None = _setting(_integer(1))
    batch_size: int | None = _setting(_integer(1))
    lr: float | None = _setting(_number(positive=True))
    max_seconds: float | None = _setting(_number(positive=True))
    max_steps: int | None = _setting(_integer(1))
    seed: int = _setting(_integer(0), 0)


#: estimators of log p(x) on the test set (:func:`aevb.inference.saved.evaluate_run`) and
#: their default sample counts: IS proposals per datapoint, AIS chains per datapoint
ESTIMATOR_DEFAULTS = {"is": 1000, "ais": 16}


@dataclass(frozen=True)
class EvaluationSpec(_Spec):
    """One estimate of the test log-likelihood once training is done: ``is`` with
    ``num_samples`` proposals per datapoint, or ``ais`` with ``num_samples`` chains and
    ``ais_temperatures`` temperatures; on the first ``subset`` test points (None = all)."""

    estimator: str = _setting(_text(tuple(ESTIMATOR_DEFAULTS)), "is")
    num_samples: int | None = _setting(_integer(1))
    ais_temperatures: int = _setting(_integer(1), 500)
    subset: int | None = _setting(_integer(1))
    batch_size: int = _setting(_integer(1), 100)
    seed: int = _setting(_integer(0), 0)

    @property
    def samples(self) -> int:
        """``num_samples``, or the estimator's default (IS: 1000, AIS: 16)."""
        return self.num_samples or ESTIMATOR_DEFAULTS[self.estimator]

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
        return check_device_name(_text()(value, path))
    except ConfigError as exc:
        raise ConfigError(f"{_where(path)}{exc}") from None


def _nested(cls):
    return lambda value, path: value if isinstance(value, cls) else _build(cls, value, path)


@dataclass(frozen=True)
class RunSpec(_Spec):
    """One training run, as plain data (see the module docstring)."""

    model: ModelSpec = field(default_factory=ModelSpec, metadata={"spec": _nested(ModelSpec)})
    data: DataSpec = field(default_factory=DataSpec, metadata={"spec": _nested(DataSpec)})
    inference: SVISpec | MCEMSpec | VIMCMCSpec = field(
        default_factory=SVISpec, metadata={"spec": _inference}
    )
    schedule: ScheduleSpec = field(
        default_factory=ScheduleSpec, metadata={"spec": _nested(ScheduleSpec)}
    )
    evaluation: tuple[EvaluationSpec, ...] = field(default=(), metadata={"spec": _evaluations})
    #: "cpu" (the default: published figures reproduce), "cuda", "cuda:N" or "auto"
    device: str = _setting(_device, "cpu")

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
        """The spec of a flat dict of :data:`FLAT_KEYS` (``aevb train``'s options with
        dashes as underscores; an ``aevb compare`` cell)."""
        return cls.from_dict(nest(flat))

    def replace(self, **parts) -> RunSpec:
        """A copy with whole parts replaced (``spec.replace(schedule=...)``)."""
        from dataclasses import replace

        return replace(self, **parts)


#: the flat form's keys and where each goes in the nested form
FLAT_KEYS: dict[str, tuple[str, ...]] = {
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
    "inference": ("inference", "method"),
    "objective": ("inference", "objective"),
    "particles": ("inference", "particles"),
    "alpha": ("inference", "alpha"),
    "lr_schedule": ("inference", "lr_schedule"),
    "sampler": ("inference", "sampler", "name"),
    "proposal_epochs": ("inference", "proposal_epochs"),
    "mcmc_steps": ("inference", "mcmc_steps"),
    "leapfrog_steps": ("inference", "leapfrog_steps"),
    "epochs": ("schedule", "epochs"),
    "batch_size": ("schedule", "batch_size"),
    "lr": ("schedule", "lr"),
    "max_seconds": ("schedule", "max_seconds"),
    "seed": ("schedule", "seed"),
    "device": ("device",),
}


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
    """The nested form of a flat dict of :data:`FLAT_KEYS` (None values are left out)."""
    out: dict = {}
    for key, value in flat.items():
        if key not in FLAT_KEYS:
            raise unknown_key(key, FLAT_KEYS)
        if value is None:
            continue
        if key == "hidden":
            value = hidden_sizes(value)
        where = out
        *parents, last = FLAT_KEYS[key]
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
    "FLAT_KEYS",
    "DataSpec",
    "EvaluationSpec",
    "MCEMSpec",
    "ModelSpec",
    "RunSpec",
    "SVISpec",
    "SamplerSpec",
    "VIMCMCSpec",
    "ScheduleSpec",
    "close_keys",
    "hidden_sizes",
    "load_spec",
    "nest",
    "unknown_key",
]
