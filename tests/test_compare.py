"""``aevb compare``: a tiny grid end to end, resumed, with one failing cell."""

import pandas as pd
import pytest

from aevb import data
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.experiments.compare import cell_spec, evaluations, load_config
from aevb.inference.saved import evaluate_run, load_run

GRID = """
name = "tiny"
seeds = [0]

[defaults]
model = "fa"
data = "fa-synthetic"
subset = 160
test_subset = 60
epochs = 2

[evaluate]
is = 20

[reference]
source = "a made-up table"
[reference.cells.fa-meanfield]
test_ll_is = -4.7

[[cells]]
objective = "meanfield"

[[cells]]
objective = "iwae"
particles = 3

[[cells]]
objective = "no-such-objective"

[[cells]]
inference = "mcem"
sampler = "batched-hmc"
proposal_epochs = 1
"""


def test_grid_runs_records_a_failure_and_resumes(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(GRID)
    out = tmp_path / "grid"
    # a failed cell: every result is written, then the exit status is 1
    assert main(["compare", str(config), "--out", str(out), "--quiet"]) == 1
    assert f"1 of 4 runs failed; see {out / 'results.csv'}" in capsys.readouterr().err
    results = pd.read_csv(out / "results.csv")
    assert list(results["cell"]) == [
        "fa-meanfield",
        "fa-iwae-k3",
        "fa-no-such-objective",
        "fa-mcem-batched-hmc",
    ]
    assert list(results["status"]) == ["ok", "ok", "failed", "ok"]
    assert "unknown objective" in results.loc[2, "error"]
    ok = results[results["status"] == "ok"]
    assert ok["test_ll_is"].notna().all() and ok["test_log_evidence_exact"].notna().all()
    # each row holds what the estimators give on that cell's run directory, and FA's exact
    # evidence of the fitted model (IS >= ELBO from the same draws holds by Jensen always,
    # so it is no check)
    for row in ok.itertuples():
        fresh = evaluate_run(row.run_dir, 20)
        assert row.test_ll_is == pytest.approx(fresh["test_log_likelihood"], abs=1e-6)
        assert row.test_elbo == pytest.approx(fresh["test_elbo"], abs=1e-6)
        model = load_run(row.run_dir).model
        _, test = data.load("fa-synthetic")
        exact = float(model.log_evidence(test.x[:60]).mean().detach())
        assert row.test_log_evidence_exact == pytest.approx(exact, abs=1e-6)
    gap = ok["test_ll_is"] - ok["test_log_evidence_exact"]
    assert (ok["test_ll_is_minus_exact"] - gap).abs().max() < 1e-9
    report = (out / "report.md").read_text()
    assert "## Summary" in report and "fa-no-such-objective" in report
    assert "## Against a made-up table" in report and "| fa-meanfield | test_ll_is |" in report
    assert (out / "bound_gaps.png").exists() and (out / "learning_curves.png").exists()

    # finished cells are not trained again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    assert main(["compare", str(config), "--out", str(out), "--quiet"]) == 1
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")} == stamps
    again = pd.read_csv(out / "results.csv")
    pd.testing.assert_series_equal(again["test_ll_is"], results["test_ll_is"])


def test_a_cell_becomes_a_run_spec_without_a_command_line():
    """Cells map to RunSpecs directly (no argv): flat keys to their places, the grid's seed
    and estimators added; the same cell through ``aevb train``'s options gives the same spec."""
    from aevb.cli import build_parser, train_spec

    cell = {"model": "vae", "label": "x", "objective": "iwae", "particles": 5}
    cell |= {"hidden": [200, 200], "epochs": 2}
    ests = evaluations({"is": 100, "ais": 4, "ais_temperatures": 20, "subset": 50})
    spec = cell_spec(cell, 3, ests)
    assert spec.model.config["hidden"] == (200, 200) and spec.inference.particles == 5
    assert spec.schedule.seed == 3 and spec.schedule.epochs == 2
    assert [(e.key, e.ais_temperatures, e.subset) for e in spec.evaluation] == [
        ("is-100", 20, 50),
        ("ais-4", 20, 50),
    ]
    argv = ["train", "vae", "--objective", "iwae", "--particles", "5", "--hidden", "200,200"]
    args = build_parser().parse_args([*argv, "--epochs", "2", "--seed", "3"])
    assert train_spec(args) == spec.replace(evaluation=())
    with pytest.raises(ConfigError, match="unknown key 'seed'"):  # the grid sets the seeds
        cell_spec({**cell, "seed": 1}, 0)
    with pytest.raises(ConfigError, match="unknown key 'iss'; did you mean is"):
        evaluations({"iss": 100})


def test_grid_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="no \\[\\[cells\\]\\]"):
        load_config(bad)
    bad.write_text('[[cells]]\nmodel = "fa"\n[[cells]]\nmodel = "fa"\n')
    with pytest.raises(ConfigError, match="share a label"):
        load_config(bad)
    bad.write_text("[[cells]]\nobjective = 'trace'\n")
    with pytest.raises(ConfigError, match="no model"):
        load_config(bad)


def test_a_users_model_joins_a_grid_through_the_modules_key(tmp_path):
    """docs/examples/my_models.py, imported by ``modules = [...]`` beside the config, trains
    and is scored next to the package's VAE (the "write your own model" page's grid)."""
    import shutil
    from pathlib import Path

    import numpy as np

    from aevb import models

    examples = Path(__file__).resolve().parents[1] / "docs" / "examples"
    shutil.copy(examples / "my_models.py", tmp_path / "my_models.py")
    g = np.random.default_rng(0)
    np.savez(tmp_path / "bits.npz", x=(g.random((300, 12)) < 0.3).astype(np.float32))
    grid = f"""
name = "mine"
modules = ["my_models"]
[defaults]
data = "{tmp_path / "bits.npz"}"
epochs = 1
z_dim = 2
hidden = "8"
[evaluate]
is = 10
[[cells]]
model = "vae"
[[cells]]
model = "laplace-vae"
objective = "iwae"
particles = 3
"""
    (tmp_path / "mine.toml").write_text(grid)
    try:
        assert main(["compare", str(tmp_path / "mine.toml"), "--out", str(tmp_path / "g")]) == 0
        results = pd.read_csv(tmp_path / "g" / "results.csv")
        assert list(results["status"]) == ["ok", "ok"]
        assert list(results["cell"]) == ["vae", "laplace-vae-iwae-k3"]
        assert results["test_ll_is"].notna().all()
    finally:
        models.MODELS.pop("laplace-vae", None)


def test_a_missing_module_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('modules = ["no_such_module_here"]\n[[cells]]\nmodel = "vae"\n')
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_here'"):
        load_config(config)


@pytest.mark.parametrize(
    "line, message",
    [
        ('optimizer = "sgd"', "unknown key 'optimizer'"),  # not a setting: no argparse exit
        ('lr_sched = "burda"', "unknown key 'lr_sched'; did you mean lr_schedule"),  # abbreviated
        ("partciles = 5", "did you mean particles"),  # misspelt
        ('epochs = "ten"', "invalid int value: 'ten'"),  # a value that does not parse
        ('lr_schedule = "cosine"', "invalid choice: 'cosine'"),
    ],
)
def test_a_bad_cell_is_refused_before_any_cell_trains(tmp_path, capsys, line, message):
    config = tmp_path / "bad.toml"
    config.write_text(GRID.replace('objective = "iwae"', f'objective = "iwae"\n{line}'))
    out = tmp_path / "grid"
    assert main(["compare", str(config), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "fa-iwae-k3" in err, err
    assert not out.exists() or not any(out.glob("*/checkpoint.pt"))  # nothing trained


def test_a_cells_label_names_its_objective_options():
    """Two cells that differ only in their objective options get different labels (a grid
    of l-mcvae at K = 5 and 10 needs no hand-written labels); an empty table adds nothing."""
    from aevb.experiments.compare import cell_label

    cell = {"model": "vae", "objective": "l-mcvae", "objective_options": {"steps": 5}}
    assert cell_label(cell) == "vae-l-mcvae-steps5"
    both = {**cell, "objective_options": {"steps": 10, "learn_schedule": True}}
    assert cell_label(both) == "vae-l-mcvae-learn_scheduleTrue-steps10"
    assert cell_label({**cell, "objective_options": {}}) == "vae-l-mcvae"


def test_more_epochs_train_on_and_score_again_keeping_the_earlier_scores(tmp_path):
    """``aevb compare --epochs 3`` on a grid scored after 2 epochs: each run resumes from
    its checkpoint, trains epoch 3 and is scored again; the 2-epoch scores stay in
    ``evaluations/epoch2/`` beside the new ones, and results.csv says 3 epochs."""
    grid = GRID.split('[[cells]]\nobjective = "iwae"')[0]
    (tmp_path / "grid.toml").write_text(grid)
    out = tmp_path / "g"
    assert main(["compare", str(tmp_path / "grid.toml"), "--out", str(out), "--quiet"]) == 0
    run = out / "fa-meanfield-seed0"
    before = (run / "evaluation.json").read_text()
    argv = ["compare", str(tmp_path / "grid.toml"), "--out", str(out), "--quiet"]
    assert main([*argv, "--epochs", "3"]) == 0
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert (run / "evaluations" / "epoch2" / "evaluation.json").read_text() == before
    assert (run / "evaluations" / "epoch2" / "pointwise.npz").is_file()
    assert (run / "evaluation.json").read_text() != before
    results = pd.read_csv(out / "results.csv")
    assert list(results["epochs"]) == [3]
    assert main([*argv, "--epochs", "3"]) == 0  # nothing left to do: not scored again
    assert not (run / "evaluations" / "epoch3").exists()


def test_only_runs_the_cells_named_and_refuses_an_unknown_label(tmp_path):
    from aevb.experiments.compare import run_grid

    (tmp_path / "grid.toml").write_text(GRID.split('[[cells]]\nobjective = "iwae"')[0])
    with pytest.raises(ConfigError, match="no cell labelled"):
        run_grid(tmp_path / "grid.toml", tmp_path / "g", quiet=True, only=["fa-nope"])
    results = run_grid(tmp_path / "grid.toml", tmp_path / "g", quiet=True, only=["fa-meanfield"])
    assert list(results["cell"]) == ["fa-meanfield"]
