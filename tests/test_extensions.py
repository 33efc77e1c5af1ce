"""A user's module adds an inference method, an objective, a sampler and an estimator without
editing aevb, and ``aevb train``, ``aevb evaluate`` and ``aevb compare`` (local and Ray) run
them: the example of the docs page "Adding a method" (``docs/examples/aevb_extras.py``), run
as the page shows it, from a folder outside the package."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aevb.cli import main
from aevb.inference.estimators import ESTIMATORS
from aevb.inference.method import METHODS
from aevb.inference.objectives import OBJECTIVES
from aevb.inference.samplers import SAMPLERS
from aevb.registry import EXTENSIONS

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "aevb_extras.py"
ADDED = ((METHODS, "kl-warmup"), (OBJECTIVES, "renyi-half"), (SAMPLERS, "mala"))
ADDED += ((ESTIMATORS, "elbo"),)
FA = ["fa", "--data", "fa-synthetic", "--subset", "64", "--test-subset", "32", "--quiet"]
TRAIN = ["--module", "aevb_extras", "train", *FA]

GRID = """
name = "extras"
seeds = [0]
modules = ["aevb_extras"]

[evaluate]
is = 50
elbo = 50

[defaults]
model = "fa"
data = "fa-synthetic"
subset = 64
test_subset = 32
epochs = 2

[[cells]]
label = "warm-up"
inference = "kl-warmup"
warmup_epochs = 2

[[cells]]
label = "renyi-half"
objective = "renyi-half"

[[cells]]
label = "mcem-mala"
inference = "mcem"
sampler = "mala"
proposal_epochs = 1
{engine}"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder outside the package holding the example module, as the current directory;
    afterwards, what the module registered is taken out again."""
    shutil.copy(EXAMPLE, tmp_path)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for registry, name in ADDED:
        registry.pop(name, None)
    sys.modules.pop("aevb_extras", None)
    EXTENSIONS.pop("aevb_extras", None)


def _history(out: str) -> pd.DataFrame:
    return pd.read_csv(Path(out) / "history.csv")


def test_the_pages_method_trains_and_is_recorded(project):
    assert main([*TRAIN, "--inference", "kl-warmup", "--warmup-epochs", "2", "--epochs", "3"]) == 0
    out = project / "runs" / "fa-kl-warmup2-trace1-seed0"  # the method's run_name
    assert list(_history(str(out))["beta"]) == [0.5, 1.0, 1.0]  # min(1, epoch / 2)
    record = json.loads((out / "config.json").read_text())
    assert record["inference"] == "kl-warmup" and record["fit"]["warmup_epochs"] == 2
    assert "aevb_extras" in [m["name"] for m in record["modules"]]  # imported by --module
    # a one-epoch warm-up weighs the latent terms by 1 throughout: exactly SVI
    main(
        [*TRAIN, "--inference", "kl-warmup", "--warmup-epochs", "1", "--epochs", "2", "--out", "w"]
    )
    main([*TRAIN, "--epochs", "2", "--out", "s"])
    for column in ("train_loss", "test_elbo"):
        np.testing.assert_allclose(_history("w")[column], _history("s")[column], rtol=1e-5)
    assert (_history("w")["train_loss"] != _history(str(out))["train_loss"].iloc[:2]).any()


def test_the_pages_objective_sampler_and_estimator_run_from_the_cli(project, capsys):
    assert main([*TRAIN, "--objective", "renyi-half", "--epochs", "2", "--out", "r"]) == 0
    fit = json.loads(Path("r/config.json").read_text())["fit"]
    assert (fit["objective"], fit["particles"]) == ("renyi-half", 5)  # its default_particles
    argv = [*TRAIN, "--inference", "mcem", "--sampler", "mala", "--proposal-epochs", "1"]
    assert main([*argv, "--epochs", "2", "--out", "m"]) == 0
    assert json.loads(Path("m/config.json").read_text())["fit"]["sampler"] == "mala"
    assert _history("m")["accept_prob"].between(0, 1).all()
    assert SAMPLERS["mala"]().num_steps == 1
    capsys.readouterr()
    argv = ["--module", "aevb_extras", "evaluate", "m", "--estimator", "elbo"]
    assert main([*argv, "--num-samples", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the ELBO is the mean of the log weights, IS their log mean exp: never above it
    assert result["test_log_likelihood"] <= result["is_from_same_draws"]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_grid_runs_the_pages_additions(project, engine):
    if engine == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    table = '\n[engine]\nname = "ray"\nnum_cpus = 1\n' if engine == "ray" else ""
    (project / "grid.toml").write_text(GRID.format(engine=table))
    sys.modules.pop("aevb_extras", None)  # the grid's modules import it
    assert main(["compare", "grid.toml", "--out", "g", "--quiet"]) == 0
    results = pd.read_csv(project / "g" / "results.csv")
    assert list(results["status"]) == ["ok"] * 3, results.get("error")
    assert list(results["cell"]) == ["warm-up", "renyi-half", "mcem-mala"]
    assert list(results["k"].iloc[:2]) == [1, 5]  # each objective's default particles
    assert (results["test_ll_elbo"] <= results["test_ll_is"] + 1e-9).all()


def test_a_missing_module_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--module", "no_such_extras", "train", "fa", "--out", "r"]) == 2
    assert "module 'no_such_extras': no module named 'no_such_extras'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
