"""aevb.runs: the one path from a RunSpec to a run, shared by the library, the command line
and grids (same recipe, same defaults, same numbers), and resume that checks the spec."""

import json

import pyro
import pytest
import torch

from aevb import data, inference, models, runs
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.inference import rundir
from aevb.spec import EvaluationSpec, RunSpec, ScheduleSpec

FA = {"model": "fa", "data": "fa-synthetic", "subset": 96, "test_subset": 40}


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _fit_record(out):
    return rundir.read_config(out)["fit"]


@pytest.mark.parametrize("objective, k", [("iwae", 5), ("meanfield", 1)])
def test_the_library_and_the_cli_use_the_same_recipe_and_particles(tmp_path, objective, k):
    """``inference.fit(fa, None, x, "iwae")`` trains as ``aevb train fa --objective iwae``:
    FA's recipe (batch 32, lr 1e-2) and the objective's particle count, recorded alike."""
    argv = ["train", "fa", "--data", "fa-synthetic", "--subset", "96", "--test-subset", "40"]
    argv += ["--objective", objective, "--epochs", "1", "--out", str(tmp_path / "cli")]
    assert main([*argv, "--quiet"]) == 0
    train, _ = data.load("fa-synthetic")
    run = inference.fit(models.build("fa"), None, train.subset(96), objective, epochs=1)
    cli = _fit_record(tmp_path / "cli")
    assert json.loads(json.dumps(run.config["fit"])) == cli
    assert (cli["batch_size"], cli["lr"], cli["particles"]) == (32, 1e-2, k)


def test_the_mcem_recipe_is_the_same_in_the_library_and_the_cli(tmp_path):
    argv = ["train", "fa", "--data", "fa-synthetic", "--subset", "64", "--test-subset", "20"]
    argv += ["--inference", "mcem", "--epochs", "1", "--proposal-epochs", "0"]
    assert main([*argv, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    train, _ = data.load("fa-synthetic")
    fa = models.build("fa")
    run = inference.mcem_fit(fa, None, train.subset(64), epochs=1, proposal_epochs=0)
    cli = _fit_record(tmp_path / "cli")
    assert json.loads(json.dumps(run.config["fit"])) == cli
    assert (cli["lr_decay"], cli["lr_decay_epochs"], cli["batch_size"]) == (0.1, 30, 32)


def test_a_models_default_objective_is_the_librarys_too():
    model = models.build("gmvae", x_dim=6, z_dim=2, hidden=(8,), num_clusters=3)
    x = torch.bernoulli(torch.full((24, 6), 0.4))
    run = inference.fit(model, None, x, epochs=1)
    assert run.config["fit"]["objective"] == "enum"
    spec = RunSpec.from_flat({"model": "gmvae"})
    cfg = runs.resolved_config(spec)
    assert (cfg.objective, cfg.particles) == ("enum", 1)


def test_runs_train_is_the_cli_bit_for_bit(tmp_path):
    flags = ["--data", "fa-synthetic", "--subset", "96", "--test-subset", "40"]
    assert (
        main(["train", "fa", *flags, "--epochs", "2", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    )
    by_cli = _params()
    spec = RunSpec.from_flat({**FA, "epochs": 2})
    run = runs.train(spec, tmp_path / "b", progress=False)
    assert run.config["spec"] == spec.to_dict()
    for name, value in _params().items():
        assert torch.equal(value, by_cli[name]), name
    assert RunSpec.from_dict(rundir.read_config(tmp_path / "a")["spec"]) == spec


@pytest.mark.parametrize("inference_keys", [{"objective": "iwae"}, {"inference": "mcem"}])
def test_resume_with_the_same_spec_is_bit_identical(tmp_path, inference_keys):
    spec = RunSpec.from_flat({**FA, **inference_keys, "epochs": 3})
    if "inference" in inference_keys:
        spec = RunSpec.from_dict(
            {**spec.to_dict(), "inference": {"method": "mcem", "proposal_epochs": 1}}
        )
    runs.train(spec, tmp_path / "straight", progress=False, figures=False)
    straight = _params()
    short = spec.replace(schedule=ScheduleSpec(epochs=1))
    runs.train(short, tmp_path / "resumed", progress=False, figures=False)
    runs.train(spec, tmp_path / "resumed", resume=True, progress=False, figures=False)
    for name, value in _params().items():
        assert torch.equal(value, straight[name]), name
    a = torch.load(tmp_path / "straight" / rundir.CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "resumed" / rundir.CHECKPOINT, weights_only=False)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


def test_resume_refuses_a_changed_spec_and_lists_the_differences(tmp_path):
    spec = RunSpec.from_flat({**FA, "epochs": 1})
    runs.train(spec, tmp_path, progress=False, figures=False)
    changed = RunSpec.from_flat({**FA, "epochs": 2, "objective": "iwae", "particles": 3})
    with pytest.raises(ConfigError, match="different settings") as err:
        runs.train(changed, tmp_path, resume=True, progress=False)
    assert "spec.inference.objective" in str(err.value)
    assert "spec.inference.particles" in str(err.value)
    # a longer run, or other estimators afterwards, are not changes
    longer = spec.replace(schedule=ScheduleSpec(epochs=2), evaluation=(EvaluationSpec("is", 5),))
    assert len(runs.train(longer, tmp_path, resume=True, progress=False).history) == 2


def test_a_run_directory_written_before_specs_still_resumes(tmp_path):
    """Records without ``"spec"``, ``data_spec`` without its subsets and an MCEM ``fit`` with
    the sampler's settings beside MCEM's own (the previous format) resume as before."""
    spec = RunSpec.from_dict(
        {
            "model": {"name": "fa"},
            "data": {"source": "fa-synthetic", "subset": 64, "test_subset": 20},
            "inference": {"method": "mcem", "proposal_epochs": 0},
            "schedule": {"epochs": 1},
        }
    )
    runs.train(spec, tmp_path, progress=False, figures=False)
    path = tmp_path / rundir.CHECKPOINT
    state = torch.load(path, weights_only=False)
    old = state["config"]
    del old["spec"]
    old["fit"].pop("sampler_options")
    old["fit"].update(num_steps=10, target_accept_prob=0.9, max_tree_depth=10)
    torch.save(state, path)
    run = runs.train(spec.replace(schedule=ScheduleSpec(epochs=2)), tmp_path, resume=True)
    assert list(run.history["epoch"]) == [1, 2]
    old["fit"]["num_steps"] = 20  # a setting that did differ is still caught
    torch.save(state, path)
    with pytest.raises(ConfigError, match="sampler_options.num_steps"):
        runs.train(spec.replace(schedule=ScheduleSpec(epochs=3)), tmp_path, resume=True)


def test_run_trains_then_evaluates_once(tmp_path):
    spec = RunSpec.from_flat({**FA, "epochs": 1}).replace(evaluation=(EvaluationSpec("is", 10),))
    done = runs.run(spec, tmp_path)
    assert set(done) == {"is-10"}
    assert done["is-10"] == rundir.read_evaluations(tmp_path)["is-10"]
    stamp = (tmp_path / rundir.CHECKPOINT).stat().st_mtime_ns
    assert runs.run(spec, tmp_path) == done
    assert (tmp_path / rundir.CHECKPOINT).stat().st_mtime_ns == stamp  # nothing retrained


def test_aevb_run_takes_a_spec_file(tmp_path, capsys):
    toml = tmp_path / "fa.toml"
    toml.write_text(
        '[model]\nname = "fa"\n[data]\nsource = "fa-synthetic"\nsubset = 64\ntest_subset = 20\n'
        '[inference]\nobjective = "meanfield"\n[schedule]\nepochs = 1\n'
        '[[evaluation]]\nestimator = "is"\nnum_samples = 10\n'
    )
    out = tmp_path / "run"
    assert main(["run", str(toml), "--out", str(out), "--quiet"]) == 0
    assert "is-10" in json.loads((out / rundir.EVALUATION).read_text())
    toml.write_text("[schedule]\nepochs = -1\n")
    assert main(["run", str(toml), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "schedule.epochs: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
