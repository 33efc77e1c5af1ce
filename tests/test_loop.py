"""The run's resume rules (:mod:`aevb.inference.record`): what resume may change, and the step
and time budgets."""

import pytest

from aevb.errors import ConfigError
from aevb.inference.loop import LoopConfig
from aevb.inference.record import Counters, check_resumable

RECORD = {
    "inference": "svi",
    "fit": {"objective": "trace", "epochs": 5, "lr": 1e-3, "alpha": None},
    "spec": {"schedule": {"epochs": 5, "seed": 0}, "evaluation": [], "device": "cpu"},
    "versions": {"torch": "2.13.0"},
}


def _with(record, path, value):
    import copy

    out = copy.deepcopy(record)
    where = out
    *parents, last = path.split(".")
    for part in parents:
        where = where[part]
    where[last] = value
    return out


@pytest.mark.parametrize(
    "path, value",
    [
        ("fit.epochs", 9),
        ("spec.schedule.epochs", 9),
        ("spec.evaluation", [{"estimator": "is"}]),
        ("versions.torch", "2.14.0"),
        ("fit.alpha", None),
        ("spec.device", "cuda"),  # a run resumes on another device (device-free checkpoints)
    ],
)
def test_length_evaluation_versions_and_device_may_change(path, value):
    check_resumable(RECORD, _with(RECORD, path, value))


@pytest.mark.parametrize(
    "path, value",
    [
        ("fit.lr", 1e-2),
        ("spec.schedule.seed", 1),
        ("spec.schedule.batch_size", 32),
        ("inference", "mcem"),
    ],
)
def test_anything_else_is_refused_and_named(path, value):
    with pytest.raises(ConfigError, match=rf"{path}: .* then, .* now"):
        check_resumable(RECORD, _with(RECORD, path, value))


def test_a_record_from_before_specs_is_compared_on_the_rest():
    old = {k: v for k, v in RECORD.items() if k != "spec"}
    check_resumable(old, _with(RECORD, "spec.schedule.seed", 3))
    with pytest.raises(ConfigError, match="fit.lr"):
        check_resumable(old, _with(RECORD, "fit.lr", 1.0))


def test_a_missing_setting_equals_none():
    check_resumable(_with(RECORD, "fit.alpha", None), {**RECORD, "fit": {**RECORD["fit"]}})
    trimmed = _with(RECORD, "fit", {k: v for k, v in RECORD["fit"].items() if k != "alpha"})
    check_resumable(RECORD, trimmed)


def test_the_step_and_time_budgets():
    c = Counters(step=10, train_seconds=5.0)
    assert not c.out_of_budget(LoopConfig())
    assert c.out_of_budget(LoopConfig(max_steps=10))
    assert not c.out_of_budget(LoopConfig(max_steps=11))
    assert c.out_of_budget(LoopConfig(max_seconds=6.0), running=1.0)
    assert not c.out_of_budget(LoopConfig(max_seconds=6.0), running=0.5)
    assert Counters.from_history([{"step": 4, "train_seconds": 2.0}]) == Counters(4, 2.0, 0)
