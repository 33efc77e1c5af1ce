"""RunSpec: a run as plain data that reads back to an equal value, and refuses every key or
value it cannot use with a message naming it."""

import json

import pytest

from aevb.errors import ConfigError
from aevb.spec import (
    EvaluationSpec,
    MCEMSpec,
    ModelSpec,
    RunSpec,
    ScheduleSpec,
    SVISpec,
    VIMCMCSpec,
    load_spec,
)

SPECS = [
    RunSpec(),
    RunSpec(
        model=ModelSpec("vae", config={"z_dim": 50, "hidden": [200, 200]}),
        inference=SVISpec("renyi", particles=10, alpha=0.5, lr_schedule="burda"),
        schedule=ScheduleSpec(epochs=3, batch_size=100, lr=3e-4, max_seconds=60.0, seed=7),
        evaluation=(EvaluationSpec("is", 5000, subset=1000), EvaluationSpec("ais", 16, 200)),
    ),
    RunSpec(
        model=ModelSpec("fa", guide="gaussian"),
        inference=MCEMSpec(
            sampler="nuts", sampler_options={"max_tree_depth": 6}, proposal_epochs=0
        ),
    ),
]


@pytest.mark.parametrize("spec", SPECS)
def test_to_dict_round_trips_exactly_through_json(spec):
    as_json = json.dumps(spec.to_dict())
    back = RunSpec.from_dict(json.loads(as_json))
    assert back == spec
    assert json.dumps(back.to_dict()) == as_json


def test_lists_become_tuples_so_equal_specs_compare_equal():
    assert SPECS[1].model.config["hidden"] == (200, 200)
    assert RunSpec.from_flat({"hidden": "200,200"}).model.config["hidden"] == (200, 200)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"schedule": {"epoch": 3}}, "unknown key 'epoch' in schedule; did you mean epochs"),
        ({"modle": {}}, "unknown key 'modle'; did you mean model"),
        ({"model": {"name": "vae", "config": {"zdim": 3}}}, "did you mean z_dim"),
        ({"schedule": {"epochs": 0}}, "schedule.epochs: must be >= 1, got 0"),
        ({"schedule": {"epochs": "ten"}}, "schedule.epochs: invalid int value: 'ten'"),
        ({"schedule": {"epochs": True}}, "invalid int value: True"),
        ({"schedule": {"batch_size": 0}}, "schedule.batch_size: must be >= 1"),
        ({"schedule": {"lr": -1}}, "schedule.lr: must be > 0, got -1"),
        ({"schedule": {"lr": 0.0}}, "schedule.lr: must be > 0"),
        ({"schedule": {"lr": "fast"}}, "schedule.lr: invalid float value: 'fast'"),
        ({"schedule": {"max_seconds": float("nan")}}, "must be finite"),
        ({"inference": {"particles": 0}}, "inference.particles: must be >= 1"),
        ({"inference": {"particles": -3}}, "inference.particles: must be >= 1"),
        ({"inference": {"lr_schedule": "cosine"}}, "invalid choice: 'cosine'"),
        ({"inference": {"method": "vi"}}, "inference.method: invalid choice: 'vi'"),
        ({"inference": {"objective": "renyi"}}, "renyi objective needs --alpha"),
        ({"inference": {"objective": "renyi", "alpha": 1}}, "alpha=1 is the ordinary ELBO"),
        ({"inference": {"objective": "iwae", "alpha": 0.5}}, "applies to the objectives renyi"),
        (
            {"inference": {"method": "mcem", "objective": "iwae"}},
            "objective is a setting of SVI .'svi'. and MCMC-refined VI",
        ),
        ({"inference": {"method": "svi", "sampler": "nuts"}}, "sampler is a setting of Monte"),
        ({"inference": {"method": "svi", "mcmc_steps": 5}}, "mcmc_steps is a setting of MCMC-"),
        ({"inference": {"method": "vi-mcmc", "mcmc_steps": 0}}, "mcmc_steps: must be >= 1"),
        ({"inference": {"method": "vi-mcmc", "sampler": "nuts"}}, "sampler is a setting of Mo"),
        (
            {
                "inference": {
                    "method": "mcem",
                    "sampler": {"name": "nuts", "options": {"num_steps": 5}},
                }
            },
            "nuts has no option 'num_steps'",
        ),
        (
            {
                "inference": {
                    "method": "mcem",
                    "sampler": {"name": "hmc", "options": {"num_step": 5}},
                }
            },
            "did you mean num_steps",
        ),
        ({"data": {"binarize": "otsu"}}, "data.binarize: invalid choice: 'otsu'"),
        ({"data": {"subset": 0}}, "data.subset: must be >= 1"),
        ({"evaluation": [{"num_samples": 0}]}, "evaluation[0].num_samples: must be >= 1"),
        ({"evaluation": [{"estimator": "elbo"}]}, "invalid choice: 'elbo'"),
        ({"device": "tpu"}, "device: invalid choice: 'tpu'"),
        ({"schedule": 3}, "schedule: expected a table of settings"),
    ],
)
def test_a_bad_key_or_value_is_a_clear_error_naming_it(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RunSpec.from_dict(raw)


def test_the_flat_form_is_the_command_lines():
    spec = RunSpec.from_flat({"model": "fa", "inference": "mcem", "sampler": "hmc", "epochs": 2})
    assert spec.inference == MCEMSpec(sampler="hmc")
    assert spec.schedule.epochs == 2 and spec.model.name == "fa"
    with pytest.raises(ConfigError, match="unknown key 'partciles'; did you mean particles"):
        RunSpec.from_flat({"partciles": 5})
    with pytest.raises(ConfigError, match="particles is a setting of SVI"):
        RunSpec.from_flat({"inference": "mcem", "particles": 5})
    spec = RunSpec.from_flat({"model": "fa", "inference": "vi-mcmc", "mcmc_steps": 3})
    assert spec.inference == VIMCMCSpec(mcmc_steps=3)
    assert RunSpec.from_dict(spec.to_dict()) == spec


def test_evaluation_defaults_follow_the_estimator():
    assert EvaluationSpec("is").key == "is-1000" and EvaluationSpec("ais").key == "ais-16"
    assert EvaluationSpec("ais", 4).samples == 4


def test_a_spec_file_in_toml_or_json(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[model]\nname = "vae"\nconfig = { z_dim = 50, hidden = [200, 200] }\n'
        '[inference]\nobjective = "iwae"\nparticles = 5\n'
        "[schedule]\nepochs = 3\n"
        '[[evaluation]]\nestimator = "is"\nnum_samples = 100\n'
    )
    spec = load_spec(toml)
    assert spec.model.config == {"z_dim": 50, "hidden": (200, 200)}
    assert spec.inference.particles == 5 and spec.evaluation[0].key == "is-100"
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps(spec.to_dict()))
    assert load_spec(as_json) == spec
    # a run directory's config.json holds the spec under "spec"
    as_json.write_text(json.dumps({"fit": {}, "spec": spec.to_dict()}))
    assert load_spec(as_json) == spec
    toml.write_text("[schedule]\nepochs = \n")
    with pytest.raises(ConfigError, match="run.toml: not valid toml: .*line 2"):
        load_spec(toml)
    toml.write_text("[schedule]\nepochs = 0\n")
    with pytest.raises(ConfigError, match="run.toml: schedule.epochs: must be >= 1"):
        load_spec(toml)
    with pytest.raises(ConfigError, match="cannot read the run spec"):
        load_spec(tmp_path / "missing.json")
