"""``--track mlflow``: runs logged to a temporary MLflow store (the default SQLite file, a
folder, a tracking server started here) and read back with MlflowClient."""

import pandas as pd
import pytest

from aevb.cli import main

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402

FA = ["--data", "fa-synthetic", "--subset", "96", "--test-subset", "40", "--quiet"]


def _client(store):
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(store.resolve().as_uri())


def test_a_training_run_is_logged_with_its_spec_metrics_and_artifacts(tmp_path):
    store = tmp_path / "mlruns"
    out = tmp_path / "run"
    argv = ["train", "fa", *FA, "--epochs", "3", "--out", str(out), "--track", f"mlflow:{store}"]
    assert main(argv) == 0
    client = _client(store)
    experiment = client.get_experiment_by_name("aevb")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["model.name"] == "fa" and params["schedule.epochs"] == "3"
    assert params["data.subset"] == "96" and params["run_dir"] == str(out)
    history = pd.read_csv(out / "history.csv")
    for key in ("train_loss", "test_elbo", "epoch_seconds"):
        points = client.get_metric_history(run.info.run_id, key)
        assert [p.step for p in points] == [1, 2, 3], key  # one point per epoch
        assert [p.value for p in points] == pytest.approx(list(history[key]))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "history.csv", "learning_curve.png"} <= artifacts


def test_a_grid_logs_one_nested_run_per_cell_and_seed(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text(
        'name = "tracked"\nseeds = [0]\n[defaults]\nmodel = "fa"\ndata = "fa-synthetic"\n'
        "subset = 96\ntest_subset = 40\nepochs = 2\n[evaluate]\nis = 10\n"
        '[tracking]\nexperiment = "grids"\nuri = "' + str(tmp_path / "store") + '"\n'
        '[[cells]]\nobjective = "meanfield"\n[[cells]]\nobjective = "trace"\n'
    )
    assert main(["compare", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    client = _client(tmp_path / "store")
    experiment = client.get_experiment_by_name("grids")
    found = client.search_runs([experiment.experiment_id])
    (grid,) = [r for r in found if r.info.run_name == "tracked"]
    cells = {r.info.run_name: r for r in found if r.info.run_name != "tracked"}
    assert set(cells) == {"fa-meanfield-seed0", "fa-trace-seed0"}
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("cell")
    for name, run in cells.items():
        assert run.data.tags["mlflow.parentRunId"] == grid.info.run_id
        logged = run.data.metrics["is-10/test_log_likelihood"]
        assert logged == pytest.approx(results.loc[name.removesuffix("-seed0"), "test_ll_is"])
    assert "grid.toml" in {a.path for a in client.list_artifacts(grid.info.run_id)}


GRID = (
    'name = "tracked"\nseeds = [0]\n[defaults]\nmodel = "fa"\ndata = "fa-synthetic"\n'
    "subset = 96\ntest_subset = 40\nepochs = 2\n[evaluate]\nis = 10\n"
    '[[cells]]\nobjective = "meanfield"\n[[cells]]\nobjective = "trace"\n'
)


def _check_grid_runs(client, out, experiment="aevb"):
    """The grid's MLflow runs: one parent, one child per cell carrying results.csv's IS."""
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (grid,) = [r for r in found if r.info.run_name == "tracked"]
    cells = {r.info.run_name: r for r in found if r.info.run_name != "tracked"}
    assert set(cells) == {"fa-meanfield-seed0", "fa-trace-seed0"}
    results = pd.read_csv(out / "results.csv").set_index("cell")
    for name, run in cells.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == grid.info.run_id
        logged = run.data.metrics["is-10/test_log_likelihood"]
        assert logged == pytest.approx(results.loc[name.removesuffix("-seed0"), "test_ll_is"])
        assert "history.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    return grid


def test_track_mlflow_without_a_uri_logs_to_a_sqlite_file_mlflows_client_reads(
    tmp_path, monkeypatch
):
    """The default store is ./mlflow.db, which MLflow 3 reads without MLFLOW_ALLOW_FILE_STORE
    (the opt-out its folder stores need); artifacts land in ./mlartifacts beside it."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(GRID)
    assert main(["compare", "g.toml", "--out", "out", "--quiet", "--track", "mlflow"]) == 0
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    grid = _check_grid_runs(client, tmp_path / "out")
    assert grid.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert "MLFLOW_ALLOW_FILE_STORE" not in __import__("os").environ


def test_a_grid_logs_over_http_to_an_mlflow_server(tmp_path, tracking_server):
    url, store = tracking_server
    (tmp_path / "g.toml").write_text(GRID)
    argv = ["compare", str(tmp_path / "g.toml"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, "--track", f"mlflow:{url}"]) == 0
    _check_grid_runs(MlflowClient(url), tmp_path / "out")
    assert any((store / "artifacts").rglob("history.csv"))  # uploaded through the server


def test_a_bad_track_value_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "fa", *FA, "--epochs", "1", "--track", "wandb"]) == 2
    assert "--track: invalid choice: 'wandb'" in capsys.readouterr().err


def test_a_resumed_run_logs_into_its_unfinished_mlflow_run(tmp_path):
    """A run whose process died (its MLflow run still RUNNING) and is resumed, as a retried
    Ray task is, goes on in the same MLflow run; a finished one is not reopened."""
    from aevb.experiments.tracking import RunTracker, parse_track
    from aevb.spec import RunSpec

    tracking = parse_track(f"mlflow:{tmp_path / 'store.db'}")
    spec, out = RunSpec(), tmp_path / "run"
    first = RunTracker(tracking, spec, "run", out)
    first.epoch({"epoch": 1, "train_loss": 3.0})  # ... and the process dies here
    second = RunTracker(tracking, spec, "run", out)
    assert second.run_id == first.run_id
    second.epoch({"epoch": 2, "train_loss": 2.0})
    second.finish(None, {})
    history = second.client.get_metric_history(second.run_id, "train_loss")
    assert [(p.step, p.value) for p in history] == [(1, 3.0), (2, 2.0)]
    assert RunTracker(tracking, spec, "run", out).run_id != first.run_id  # FINISHED stays
    assert RunTracker(tracking, spec, "other", out).run_id != first.run_id


def test_epochs_checkpointed_but_never_logged_are_logged_on_resume(tmp_path):
    """A process killed between an epoch's checkpoint and its MLflow log: the resumed run's
    tracker logs that epoch from history.csv at its first epoch, once."""
    from aevb.experiments.tracking import RunTracker, parse_track
    from aevb.spec import RunSpec

    tracking = parse_track(f"mlflow:{tmp_path / 'store.db'}")
    out = tmp_path / "run"
    out.mkdir()
    first = RunTracker(tracking, RunSpec(), "run", out)
    first.epoch({"epoch": 1, "train_loss": 3.0})
    # epoch 2 was checkpointed, then the process died before logging it; the resumed loop
    # writes history.csv (epochs 1-3) before its first epoch callback
    second = RunTracker(tracking, RunSpec(), "run", out)
    assert second.run_id == first.run_id
    pd.DataFrame({"epoch": [1, 2, 3], "step": [5, 10, 15], "train_loss": [3.0, 2.5, 2.0]}).to_csv(
        out / "history.csv", index=False
    )
    second.epoch({"epoch": 3, "train_loss": 2.0})
    history = second.client.get_metric_history(second.run_id, "train_loss")
    assert sorted((p.step, p.value) for p in history) == [(1, 3.0), (2, 2.5), (3, 2.0)]
