"""Early stopping on a validation split (:mod:`aevb.inference.stopping`): the rule, the
parameters a stopped run ends with, its resume, and the spec's path to it. FA is the
referee: its validation metric (the exact evidence) is a deterministic function of the
parameters, so "the run ends with its best epoch's parameters" is an identity."""

import pytest
import torch

from aevb import data, inference, models
from aevb.errors import ConfigError, DataError
from aevb.inference import rundir
from aevb.inference.saved import load_run
from aevb.inference.stopping import best_epoch, patience_spent, validation_columns
from aevb.runs import RunSpec
from aevb.runs import train as train_spec


def _rows(values, column="valid_error"):
    return [{"epoch": i + 1, column: v} for i, v in enumerate(values)]


def test_the_best_epoch_is_the_earliest_best_in_the_monitors_direction():
    assert best_epoch(_rows([0.3, 0.2, 0.25, 0.2]), "error") == 2
    assert best_epoch(_rows([-5.0, -4.0, -4.0], "valid_elbo"), "elbo") == 2
    assert best_epoch(_rows([float("nan"), -3.0], "valid_elbo"), "elbo") == 2
    assert best_epoch([{"epoch": 1}], "elbo") is None


def test_patience_counts_the_epochs_since_the_best():
    rows = _rows([0.3, 0.2, 0.25, 0.26])
    assert not patience_spent(rows, "error", 3)
    assert patience_spent(rows, "error", 2)
    assert not patience_spent(rows, "error", None)


def test_validation_columns_rename_the_test_metrics():
    got = validation_columns({"test_elbo": -1.0, "test_error": 0.1, "eval_seconds": 2.0})
    assert got == {"valid_elbo": -1.0, "valid_error": 0.1, "valid_seconds": 2.0}
    got = validation_columns({"cluster_accuracy": 0.7})
    assert got == {"valid_cluster_accuracy": 0.7}


def test_holdout_keeps_the_last_n_and_refuses_an_impossible_split():
    ds = data.Dataset(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    rest, held = ds.holdout(3)
    assert rest.y.tolist() == list(range(7)) and held.y.tolist() == [7, 8, 9]
    assert ds.holdout(None) == (ds, None)
    for n in (0, 10):
        with pytest.raises(DataError, match="1 <= n < 10"):
            ds.holdout(n)


@pytest.fixture(scope="module")
def fa_split():
    train, test = data.load("fa-synthetic")
    rest, valid = train.subset(300).holdout(100)
    return rest, valid, test.subset(100)


def _fit(fa_split, **kwargs):
    rest, valid, test = fa_split
    model = models.build("fa")
    settings = dict(epochs=8, batch_size=50, monitor="log_evidence_exact", patience=2)
    settings.update(kwargs)
    return inference.fit(model, None, rest, test=test, validation=valid, **settings)


def test_a_run_stops_after_patience_epochs_without_improvement(fa_split):
    # at lr 1e-12 no float32 parameter moves: the first epoch stays the best
    run = _fit(fa_split, lr=1e-12)
    assert run.history["epoch"].tolist() == [1, 2, 3]
    assert run.extra["best_epoch"] == 1


def test_a_stopped_run_ends_with_its_best_epochs_parameters(fa_split, tmp_path):
    rest, valid, test = fa_split
    run = _fit(fa_split, lr=0.05, epochs=12, patience=3, out=tmp_path)
    h = run.history.set_index("epoch")
    best = run.extra["best_epoch"]
    column = h["valid_log_evidence_exact"]
    assert best == int(column.idxmax())
    last = int(h.index[-1])
    assert last == 12 or last - best == 3
    metrics = run.model.evaluation_metrics(None, valid)
    assert metrics["test_log_evidence_exact"] == pytest.approx(column[best], abs=1e-5)
    on_test = run.model.evaluation_metrics(None, test)["test_log_evidence_exact"]
    assert on_test == pytest.approx(h.loc[best, "test_log_evidence_exact"], abs=1e-5)
    again = load_run(tmp_path)  # what aevb evaluate scores: the best epoch's parameters
    assert again.extra["best_epoch"] == best
    assert torch.equal(again.model.W, run.model.W)
    assert rundir.read_best(tmp_path)["epoch"] == best


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(fa_split, tmp_path):
    whole = _fit(fa_split, lr=0.05, epochs=12, patience=2)
    _fit(fa_split, lr=0.05, epochs=2, patience=2, out=tmp_path)
    resumed = _fit(fa_split, lr=0.05, epochs=12, patience=2, out=tmp_path, resume=True)
    assert resumed.history["epoch"].tolist() == whole.history["epoch"].tolist()
    columns = ["train_loss", "valid_log_evidence_exact"]
    assert resumed.history[columns].equals(whole.history[columns])
    assert resumed.extra["best_epoch"] == whole.extra["best_epoch"]
    assert torch.equal(resumed.model.W, whole.model.W)


def test_a_stopped_run_goes_on_when_resumed_with_more_patience(fa_split, tmp_path):
    """Patience is the one stopping setting a resume may change (stops at 1 + P again); a
    resume that turns early stopping off is refused, and nothing of the run is lost."""
    _fit(fa_split, lr=1e-12, epochs=9, out=tmp_path)
    assert rundir.read_history(tmp_path)["epoch"].tolist() == [1, 2, 3]
    more = _fit(fa_split, lr=1e-12, epochs=9, patience=4, out=tmp_path, resume=True)
    assert more.history["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert more.extra["best_epoch"] == 1
    with pytest.raises(ConfigError, match="patience"):
        _fit(fa_split, lr=1e-12, epochs=9, patience=None, out=tmp_path, resume=True)
    assert rundir.read_history(tmp_path)["epoch"].tolist() == [1, 2, 3, 4, 5]


def test_a_resume_with_more_patience_ends_as_an_uninterrupted_run_with_it(fa_split, tmp_path):
    """Stopped at patience 2, resumed at patience 3: the history, best epoch and parameters of
    a run that had patience 3 from the start; a smaller patience is refused."""
    whole = _fit(fa_split, lr=0.05, epochs=15, patience=3)
    short = _fit(fa_split, lr=0.05, epochs=15, patience=2, out=tmp_path)
    assert len(short.history) < len(whole.history)  # it did stop sooner
    with pytest.raises(ConfigError, match="patience"):
        _fit(fa_split, lr=0.05, epochs=15, patience=1, out=tmp_path, resume=True)
    more = _fit(fa_split, lr=0.05, epochs=15, patience=3, out=tmp_path, resume=True)
    columns = ["epoch", "train_loss", "valid_log_evidence_exact"]
    assert more.history[columns].equals(whole.history[columns])
    assert more.extra["best_epoch"] == whole.extra["best_epoch"]
    assert torch.equal(more.model.W, whole.model.W)


def test_a_stopped_run_is_finished_when_its_spec_is_run_again(tmp_path):
    """runs.run does not train on or score again a run its rule stopped before its epochs;
    with a larger patience it trains on and is scored afresh (the old scores archived)."""
    from aevb.runs import run as run_spec
    from aevb.spec import EvaluationSpec

    flat = {"model": "fa", "data": "fa-synthetic", "subset": 200, "test_subset": 40}
    stopping = {"validation": 50, "patience": 1, "monitor": "log_evidence_exact"}
    spec = RunSpec.from_flat({**flat, **stopping, "epochs": 9, "lr": 1e-12})
    spec = spec.replace(evaluation=(EvaluationSpec("is", 10),))
    run_spec(spec, tmp_path)
    assert rundir.trained_epochs(tmp_path) == 2
    stamp = (tmp_path / rundir.EVALUATION).stat().st_mtime_ns
    run_spec(spec, tmp_path)
    assert (tmp_path / rundir.EVALUATION).stat().st_mtime_ns == stamp
    assert not (tmp_path / "evaluations").exists()
    longer = RunSpec.from_flat({**flat, **stopping, "patience": 3, "epochs": 9, "lr": 1e-12})
    run_spec(longer.replace(evaluation=spec.evaluation), tmp_path)
    assert rundir.trained_epochs(tmp_path) == 4
    assert (tmp_path / "evaluations" / "epoch2").is_dir()


def test_patience_without_a_validation_set_is_refused():
    train, _ = data.load("fa-synthetic")
    model = models.build("fa")
    with pytest.raises(ConfigError, match="data.validation"):
        inference.fit(model, None, train.subset(50), epochs=1, patience=2)


def test_a_spec_holds_out_its_validation_split(tmp_path):
    flat = {"model": "fa", "data": "fa-synthetic", "subset": 200, "test_subset": 40}
    stopping = {"validation": 50, "patience": 2, "monitor": "log_evidence_exact"}
    spec = RunSpec.from_flat({**flat, **stopping, "epochs": 3})
    run = train_spec(spec, tmp_path, figures=False)
    assert "valid_log_evidence_exact" in run.history.columns
    config = rundir.read_config(tmp_path)
    assert config["data_spec"]["validation"] == 50
    assert config["data"]["num_train"] == 150


def test_the_command_line_stops_early_and_evaluates_the_best_epoch(tmp_path):
    from aevb.cli import main

    out = tmp_path / "run"
    argv = ["train", "fa", "--data", "fa-synthetic", "--subset", "200", "--test-subset", "40"]
    argv += ["--validation", "50", "--patience", "1", "--monitor", "log_evidence_exact"]
    argv += ["--lr", "1e-12", "--epochs", "5", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert rundir.read_history(out)["epoch"].tolist() == [1, 2]
    assert rundir.read_best(out)["epoch"] == 1
    bad = ["train", "fa", "--data", "fa-synthetic", "--patience", "2", "--quiet"]
    assert main([*bad, "--out", str(tmp_path / "bad")]) != 0


def test_the_metric_curve_shows_each_seed_the_mean_and_the_published_figure():
    import pandas as pd

    from aevb.plots import metric_curves

    rows = [
        {"cell": c, "seed": s, "epoch": e, "test_error": 0.5 / e + s, "valid_error": 0.4 / e}
        for c in ("m2-100", "m2-3000")
        for s in (0, 1)
        for e in (1, 2, 3)
    ]
    fig = metric_curves(pd.DataFrame(rows), "test_error", {"m2-100": {"test_error": 0.12}})
    lines = fig.axes[0].get_lines()
    # per cell: 2 seeds x (test, validation) thin lines + 2 means; one published line
    assert len(lines) == 2 * (4 + 2) + 1
    means = [ln for ln in lines if ln.get_label() == "m2-3000 test"]
    assert list(means[0].get_ydata()) == pytest.approx([0.5 / e + 0.5 for e in (1, 2, 3)])
    assert [ln.get_ydata()[0] for ln in lines if ln.get_linestyle() == ":"] == [0.12]


def test_a_users_plain_pyro_functions_end_with_the_best_epochs_networks(tmp_path):
    """Networks a plain model and guide hold in closures (``pyro.module`` inside the
    functions) take the best epoch's weights too, not only the param store."""
    import pyro
    import pyro.distributions as dist
    from torch import nn

    dec, enc = nn.Linear(2, 5), nn.Linear(5, 4)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            loc, s = enc(x).chunk(2, -1)
            scale = nn.functional.softplus(s) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g) @ torch.randn(5, 5, generator=g)
    valid = torch.randn(60, 5, generator=g)  # unlike the training data: its best is early
    settings = dict(patience=2, epochs=12, lr=0.05, batch_size=50, jit=False)
    run = inference.fit(model, guide, x, validation=valid, out=tmp_path, **settings)
    best = rundir.read_best(tmp_path)
    assert run.extra["best_epoch"] == best["epoch"] < run.history["epoch"].iloc[-1]
    for net, name in ((dec, "dec$$$weight"), (enc, "enc$$$weight")):
        assert torch.equal(net.weight, best["params"]["params"][name])
