"""Every setting is declared once (:mod:`aevb.settings`), and the spec, the flat form (TOML
grid keys, ``config.json``), the command line's options, choices and help texts come from that
declaration: a setting added to a method's config appears in all of them."""

import argparse
from dataclasses import dataclass, fields

import pytest

from aevb.cli import build_parser
from aevb.errors import ConfigError
from aevb.experiments.cells import cell_spec
from aevb.inference import method as methods
from aevb.inference.loop import LoopConfig
from aevb.inference.svi import SVI, FitConfig
from aevb.settings import Setting, check, declared, describe, of, setting
from aevb.spec import MODEL_KEYS, RunSpec, flat_keys, inference_specs, spec_for


@dataclass(frozen=True)
class WarmConfig(FitConfig):
    warmup_epochs: int = setting(3, minimum=1, help="epochs over which beta rises to 1")
    schedule_shape: str = setting("linear", choices=("linear", "cosine"), help="beta's shape")


class Warm(SVI):
    name, title, config = "warm-test", "SVI with a warm-up", WarmConfig


@pytest.fixture
def warm():
    methods.register(Warm())
    yield "warm-test"
    methods.METHODS.pop("warm-test")


def _train_options() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


def test_a_new_setting_is_a_spec_field_a_toml_key_and_an_option_at_once(warm):
    assert {"warmup_epochs", "schedule_shape"} <= {f.name for f in fields(spec_for(warm))}
    assert flat_keys()["warmup_epochs"] == ("inference", "warmup_epochs")
    spec = RunSpec.from_flat({"model": "vae", "inference": warm, "warmup_epochs": 2})
    assert spec.inference.warmup_epochs == 2 and RunSpec.from_dict(spec.to_dict()) == spec
    cell = {"label": "a", "model": "vae", "inference": warm, "warmup_epochs": 4}
    assert cell_spec(cell, seed=0).inference.warmup_epochs == 4  # a grid cell's key
    option = _train_options()["warmup_epochs"]
    assert option.option_strings == ["--warmup-epochs"] and option.type is int
    assert "epochs over which beta rises to 1 (default the model's recipe, else 3)" in option.help
    assert _train_options()["schedule_shape"].choices == ["linear", "cosine"]
    with pytest.raises(ConfigError, match="inference.warmup_epochs: must be >= 1, got 0"):
        RunSpec.from_flat({"model": "vae", "inference": warm, "warmup_epochs": 0})
    with pytest.raises(ConfigError, match="warmup_epochs: must be >= 1, got 0"):
        WarmConfig(warmup_epochs=0)  # the library's check is the same one
    with pytest.raises(ConfigError, match="warmup_epochs is a setting of SVI with a warm-up"):
        RunSpec.from_flat({"model": "vae", "warmup_epochs": 2})


def test_every_option_of_train_is_a_flat_key_and_every_flat_key_an_option():
    options = {d for d in _train_options() if d not in ("help", "out", "resume", "quiet")}
    options -= {"track", "func"}
    tables = {"sampler_options", "objective_options"}  # a spec file's or grid's
    assert options == set(flat_keys()) - tables
    assert set(MODEL_KEYS) <= options


def test_every_spec_and_config_field_is_declared_once():
    for cls in [LoopConfig, *(m.config for m in methods.METHODS.values())]:
        assert set(declared(cls)) == {f.name for f in fields(cls)}, cls
    for name, spec in inference_specs().items():
        config = declared(methods.METHODS[name].config)
        for f in fields(spec):  # the spec's field carries the config's declaration itself
            assert of(f) is of(config[f.name]) and f.default is None


def test_the_range_checker_says_what_it_expected_and_what_it_found():
    size = Setting(int, minimum=1)
    assert check(size, 3) == 3 and check(size, None) is None
    for value, message in [
        (0, "n: must be >= 1, got 0"),
        (1.5, "n: invalid int value: 1.5"),
        (True, "n: invalid int value: True"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check(size, value, "n")
    rate = Setting(float, minimum=0, above=True)
    assert check(rate, 2) == 2.0 and isinstance(check(rate, 2), float)
    for value, message in [(0, "must be > 0, got 0"), (float("nan"), "must be finite")]:
        with pytest.raises(ConfigError, match=message):
            check(rate, value, "lr")
    with pytest.raises(ConfigError, match=r"invalid choice: 'b' \(choose from a, c\)"):
        check(Setting(str, choices=("a", "c")), "b")
    with pytest.raises(ConfigError, match="every size must be >= 1"):
        check(Setting(tuple, minimum=1), [200, 0])


def test_a_help_text_ends_with_the_default_or_what_none_means():
    f = {f.name: f for f in fields(FitConfig)}
    assert describe(f["lr_schedule"]).endswith("(default constant)")
    assert "5 for iwae" in describe(f["particles"])  # read from the objective registry
    assert describe(f["objective"]).count("iwae") >= 1  # the registry's names are listed


def test_old_setting_names_still_work_with_a_warning():
    import torch

    from aevb import inference, models

    x = torch.bernoulli(torch.full((32, 6), 0.3))
    model = models.build("vae", x_dim=6, z_dim=2, hidden=(8,))
    with pytest.warns(FutureWarning, match="num_particles= is now particles="):
        run = inference.fit(model, None, x, "iwae", num_particles=3, epochs=1, batch_size=16)
    assert run.config["fit"]["particles"] == 3
