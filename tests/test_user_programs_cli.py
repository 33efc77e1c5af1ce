"""A user's own Pyro program by ``MODULE:NAME`` (issue 33): ``aevb train``, ``aevb evaluate``,
``--resume`` and ``aevb compare`` (both engines) on a module written outside the package,
found again from the run directory's record; the errors when it is gone or changed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aevb import models
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]

#: a user's module (the docs' example): a Gaussian-likelihood VAE as plain functions
#: (networks in module globals, registered with pyro.module) and as a class like the
#: package's models (not registered); and a function of the wrong signature
PROGRAMS = (
    (ROOT / "docs" / "examples" / "my_programs.py").read_text()
    + """

def two(x, y, z):
    pass


vae = GaussVAE()  # a module-level network object, named as it is
"""
)

AEVB = str(Path(sys.executable).parent / "aevb")
FAST = ["--epochs", "1", "--batch-size", "50", "--quiet"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder outside the package with ``my_progs.py`` and ``x.npy`` (200 x 6 floats), the
    current directory; the module is forgotten afterwards (the next test writes its own)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_progs.py").write_text(PROGRAMS)
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    np.save(folder / "x.npy", x)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    sys.modules.pop("my_progs", None)
    yield folder
    sys.modules.pop("my_progs", None)


def _evaluate(capsys, run: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", run, "--json", "--num-samples", "10"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plain_functions_train_evaluate_and_resume(project, capsys):
    argv = ["train", "my_progs:model", "--guide", "my_progs:guide", "--data", "x.npy"]
    assert main([*argv, *FAST, "--out", "run"]) == 0
    record = json.loads((project / "run" / "config.json").read_text())
    entry = record["imports"]["model"]
    assert entry["ref"] == "my_progs:model" and entry["kind"] == "function"
    assert entry["file"] == str(project / "my_progs.py") and len(entry["sha256"]) == 64
    assert record["imports"]["guide"]["ref"] == "my_progs:guide"
    first = _evaluate(capsys, "run")
    assert first["num_test"] == 20 and first["test_log_likelihood"] >= first["test_elbo"]
    # the estimate is the checkpoint's: networks scrambled in memory are loaded again
    progs = sys.modules["my_progs"]
    for net in (progs.decoder, progs.encoder):
        for p in net.parameters():
            p.data.normal_()
    assert _evaluate(capsys, "run")["test_elbo"] == pytest.approx(first["test_elbo"], abs=1e-6)
    # resume: the networks continue from the checkpoint (their Adam steps reach them)
    assert main([*argv, *FAST[:-1], "--epochs", "2", "--out", "run", "--resume"]) == 0
    history = pd.read_csv(project / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert _evaluate(capsys, "run")["test_elbo"] != first["test_elbo"]


def test_the_console_script_imports_from_the_current_directory(project):
    """A user's shell: ``aevb train my_progs:GaussVAE`` (a class, unregistered, its guide the
    class's default) in the project folder, then ``aevb evaluate`` from another folder,
    which finds the module through the run's record."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    data = str(project / "x.npy")
    train = [AEVB, "train", "my_progs:GaussVAE", "--data", data, *FAST, "--out", "run"]
    done = subprocess.run(train, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    evaluate = [AEVB, "evaluate", str(project / "run"), "--json", "--num-samples", "10"]
    done = subprocess.run(evaluate, cwd=project.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_test"] == 20
    record = json.loads((project / "run" / "config.json").read_text())
    assert record["imports"]["model"]["kind"] == "class" and "guide" not in record["imports"]
    assert record["model"]["name"] == "gauss-vae" and "gauss-vae" not in models.MODELS


def test_a_module_gone_changed_or_renamed_is_a_clear_error(project, capsys):
    argv = ["train", "my_progs:model", "--guide", "my_progs:guide", "--data", "x.npy"]
    assert main([*argv, *FAST, "--out", "run"]) == 0
    source = project / "my_progs.py"
    # the file changed: a warning, and the estimate is still made
    source.write_text(PROGRAMS + "\n# an edit\n")
    sys.modules.pop("my_progs")
    _evaluate(capsys, "run")  # (reads stderr away)
    assert main(["evaluate", "run", "--json", "--num-samples", "5"]) == 0
    assert "changed since the run was trained" in capsys.readouterr().err
    # the guide's name gone
    source.write_text(PROGRAMS.replace("def guide(x):", "def guide_v2(x):"))
    sys.modules.pop("my_progs")
    assert main(["evaluate", "run", "--json"]) == 2
    err = capsys.readouterr().err
    assert "cannot find the run's guide again" in err and "has no attribute 'guide'" in err
    assert "did you mean guide_v2" in err
    # the module gone
    source.rename(project / "elsewhere.py")
    sys.modules.pop("my_progs")
    assert main(["evaluate", "run", "--json"]) == 2
    err = capsys.readouterr().err
    assert "cannot find the run's model again" in err and "no module named 'my_progs'" in err
    assert main([*argv, *FAST, "--out", "run2"]) == 2
    assert "no module named 'my_progs'" in capsys.readouterr().err
    assert not (project / "run2").exists()


def test_train_refuses_what_it_cannot_run_before_writing(project, capsys):
    # a plain model function needs a guide
    assert main(["train", "my_progs:model", "--data", "x.npy", *FAST, "--out", "a"]) == 2
    assert "is a plain function and names no guide" in capsys.readouterr().err
    # a plain function takes no settings
    argv = ["train", "my_progs:model", "--guide", "my_progs:guide", "--data", "x.npy"]
    assert main([*argv, "--z-dim", "3", *FAST, "--out", "a"]) == 2
    assert "plain function: it takes no settings" in capsys.readouterr().err
    # a name the module lacks, a guide function of the wrong signature
    assert main(["train", "my_progs:Model", "--data", "x.npy", *FAST, "--out", "a"]) == 2
    assert "has no attribute 'Model'; did you mean model" in capsys.readouterr().err
    bad = ["train", "my_progs:GaussVAE", "--data", "x.npy", *FAST, "--out", "a", "--guide"]
    assert main([*bad, "my_progs:two"]) == 2
    assert "expected a function guide(x) taking the minibatch, found two(x, y, z)" in (
        capsys.readouterr().err
    )
    assert main([*bad, "my_progs:GaussVAEConfig"]) == 2
    assert "has no for_model" in capsys.readouterr().err
    assert not (project / "a").exists()
    with pytest.raises(ConfigError, match="expected MODULE:NAME"):
        RunSpec.from_flat({"model": "my_progs:", "guide": "x"})
    spec = RunSpec.from_flat({"model": "my_progs:model", "guide": "pkg.sub:Guide"})
    assert RunSpec.from_dict(spec.to_dict()) == spec  # imported where it is resolved


def test_a_module_level_network_object_is_used_as_it_is(project, capsys):
    argv = ["train", "my_progs:vae", "--guide", "my_progs:guide", "--data", "x.npy", *FAST]
    assert main([*argv, "--out", "run"]) == 0
    record = json.loads((project / "run" / "config.json").read_text())
    assert record["imports"]["model"]["kind"] == "object"
    assert record["imports"]["guide"]["kind"] == "function"
    sys.modules.pop("my_progs")  # a fresh import, as in another process
    assert _evaluate(capsys, "run")["num_test"] == 20


GRID = """
name = "mine"
seeds = [0]
[defaults]
data = "x.npy"              # beside this file, wherever aevb compare runs
epochs = 1
batch_size = 50
[evaluate]
is = 10
[[cells]]
model = "my_progs:model"
guide = "my_progs:guide"
[[cells]]
model = "my_progs:GaussVAE"
[[cells]]
model = "my_progs:GaussVAE"
objective = "no-such-objective"
"""


def test_a_grid_names_user_programs_relative_to_its_folder(project, tmp_path, capsys, monkeypatch):
    (project / "grid.toml").write_text(GRID)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sys.modules.pop("my_progs", None)
    out = elsewhere / "g"
    assert main(["compare", str(project / "grid.toml"), "--out", str(out), "--quiet"]) == 1
    assert f"1 of 3 runs failed; see {out / 'results.csv'}" in capsys.readouterr().err
    results = pd.read_csv(out / "results.csv")
    assert list(results["cell"]) == [
        "my_progs.model-my_progs.guide",
        "my_progs.GaussVAE",
        "my_progs.GaussVAE-no-such-objective",
    ]
    assert list(results["status"]) == ["ok", "ok", "failed"]
    assert (out / "report.md").exists()
    # aevb evaluate finds the grid's run again, from another folder
    sys.modules.pop("my_progs", None)
    monkeypatch.chdir(tmp_path)
    again = _evaluate(capsys, str(out / "my_progs.model-my_progs.guide-seed0"))
    assert again["test_log_likelihood"] == pytest.approx(results.loc[0, "test_ll_is"], abs=1e-6)
    # a name the module lacks: refused before any cell trains
    (project / "bad.toml").write_text(
        GRID.replace('guide = "my_progs:guide"', 'guide = "my_progs:gide"')
    )
    assert main(["compare", str(project / "bad.toml"), "--out", str(tmp_path / "bad")]) == 2
    assert "has no attribute 'gide'; did you mean guide" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_user_program_runs_on_a_ray_worker(project, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    grid = GRID.split("[[cells]]")[0] + '[[cells]]\nmodel = "my_progs:model"\n'
    grid += 'guide = "my_progs:guide"\n[engine]\nname = "ray"\nnum_cpus = 1\n'
    (project / "grid.toml").write_text(grid)
    assert main(["compare", "grid.toml", "--out", "g", "--quiet"]) == 0
    results = pd.read_csv(project / "g" / "results.csv")
    assert list(results["status"]) == ["ok"], results["error"].tolist()


@pytest.mark.parametrize("objective", ["l-mcvae", "a-mcvae"])
def test_a_users_program_trains_under_the_monte_carlo_vaes(project, objective):
    """``aevb train my_progs:model --guide my_progs:guide --objective l-mcvae|a-mcvae``: the
    Langevin / MALA moves run on a user's plain Pyro functions (a Gaussian VAE with a
    softplus scale), the loss is finite and the step size is adapted and recorded."""
    argv = ["train", "my_progs:model", "--guide", "my_progs:guide", "--data", "x.npy"]
    argv += ["--objective", objective, "--lr", "1e-3"]
    assert main([*argv, *FAST[:-1], "--epochs", "2", "--quiet", "--out", "run"]) == 0
    history = pd.read_csv(project / "run" / "history.csv")
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(history["test_elbo"]).all()
    assert (history["step_size"] > 0).all() and history["step_size"].iloc[-1] != 0.01
    assert history["accept_prob"].between(0, 1).all()


@pytest.mark.parametrize(
    "method",
    [["--objective", "metflow"], ["--inference", "vi-mcmc", "--encoder-refined", "1"]],
    ids=["metflow", "vi-mcmc-refined"],
)
def test_a_users_program_trains_under_metflow_and_the_refined_encoder(project, method):
    """``aevb train my_progs:model --guide my_progs:guide`` under MetFlow (flow proposals
    made for the user's latent dimension) and under vi-mcmc with the encoder fitted to the
    refined draws: finite losses and test ELBOs, and each method's own history columns."""
    argv = ["train", "my_progs:model", "--guide", "my_progs:guide", "--data", "x.npy"]
    argv += [*method, "--lr", "1e-3"]
    assert main([*argv, *FAST[:-1], "--epochs", "2", "--quiet", "--out", "run"]) == 0
    history = pd.read_csv(project / "run" / "history.csv")
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(history["test_elbo"]).all()
    if "vi-mcmc" in method:
        assert np.isfinite(history["refined_log_q"]).all()
        assert history["accept_prob"].between(0, 1).all()
