import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from aevb import data, inference
from aevb.cli import main
from aevb.data.idx import write_idx
from aevb.inference.saved import evaluate_run, load_run

KEYS = {
    "test_elbo",
    "test_log_likelihood",
    "num_samples",
    "estimator",
    "num_test",
    "test_points",
    "active_units",
    "seconds",
}
#: what an IS estimate adds: how far it can be trusted (aevb.inference.psis)
TRUST_KEYS = {
    "test_log_likelihood_se",
    "test_log_likelihood_mcse",
    "khat_max",
    "khat_threshold",
    "khat_share_over_0_7",
    "khat_share_over_threshold",
    "is_ess_median",
    "flagged",
    "advice",
}


def make_idx_folder(tmp_path):
    """A tiny MNIST-shaped IDX folder: strokes on a blank 28 x 28 canvas."""
    g = np.random.default_rng(0)

    def images(n):
        x = np.zeros((n, 28, 28), np.uint8)
        rows = g.integers(4, 24, n)
        for i, r in enumerate(rows):
            x[i, r : r + 3, 5:23] = 255
        return x

    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", images(120))
    write_idx(folder / "t10k-images-idx3-ubyte", images(40))
    return folder


@pytest.fixture
def idx_folder(tmp_path):
    return make_idx_folder(tmp_path)


def test_train_then_evaluate_json(tmp_path, idx_folder, capsys):
    out = tmp_path / "run"
    train = [
        "train",
        "vae",
        "--data",
        str(idx_folder),
        "--batch-size",
        "40",
        "--z-dim",
        "3",
        "--hidden",
        "32",
        "--objective",
        "iwae",
        "--particles",
        "3",
        "--quiet",
    ]
    code = main([*train, "--epochs", "2", "--out", str(out)])
    assert code == 0
    for name in (
        "config.json",
        "history.csv",
        "checkpoint.pt",
        "learning_curve.png",
        "samples.png",
        "reconstructions.png",
    ):
        assert (out / name).exists(), name
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "20", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == KEYS | TRUST_KEYS
    assert result["num_test"] == 40 and result["num_samples"] == 20
    # the JSON holds the means of the per-datapoint estimators on the run's test set (the 40
    # test images, binarised as recorded), draw for draw with seed 0
    loaded = load_run(out)
    model, guide = loaded.model, loaded.guide
    # the run as fit returned it: its record, its epochs and where it lives
    assert loaded.out == out and loaded.config["fit"]["objective"] == "iwae"
    assert json.loads(json.dumps(loaded.config)) == json.loads((out / "config.json").read_text())
    assert list(loaded.history["epoch"]) == [1, 2] and loaded.extra == {}
    _, test = data.load(str(idx_folder), "dynamic")
    direct = inference.bounds(model, guide, test, 20, seed=0)
    assert result["test_log_likelihood"] == pytest.approx(float(direct.log_likelihood.mean()))
    assert result["test_elbo"] == pytest.approx(float(direct.elbo.mean()))
    assert result["test_log_likelihood"] > result["test_elbo"] + 0.1  # IS-20 is visibly tighter
    # the same numbers through the Python API
    again = evaluate_run(out, 20)
    assert again["test_log_likelihood"] == pytest.approx(result["test_log_likelihood"])
    # resume to a third epoch
    assert main([*train, "--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert (out / "history.csv").read_text().count("\n") == 4


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "vae", "--data", str(tmp_path / "nothing.npz"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["train", "vae", "--objective", "kl", "--quiet"]) == 2
    assert "unknown objective" in capsys.readouterr().err
    np.savez(tmp_path / "real.npz", x=np.random.default_rng(0).normal(size=(20, 4)))
    assert (
        main(
            [
                "train",
                "vae",
                "--data",
                str(tmp_path / "real.npz"),
                "--quiet",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "{0, 1}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_console_script_is_installed():
    exe = shutil.which("aevb") or str(__import__("pathlib").Path(sys.executable).with_name("aevb"))
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "evaluate" in done.stdout


def test_train_help_lists_every_registered_objective(capsys):
    from aevb.inference.objectives import OBJECTIVES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for name in OBJECTIVES:
        assert name in shown, name


def _registry_keys() -> dict[str, set[str]]:
    from aevb.experiments.engines import ENGINES
    from aevb.guides import GUIDES
    from aevb.inference.estimators import ESTIMATORS
    from aevb.inference.objectives import OBJECTIVES
    from aevb.inference.samplers import SAMPLERS
    from aevb.inference.svi import LR_SCHEDULES
    from aevb.models import MODELS

    registries = {
        "OBJECTIVES": OBJECTIVES,
        "SAMPLERS": SAMPLERS,
        "LR_SCHEDULES": LR_SCHEDULES,
        "ESTIMATORS": ESTIMATORS,
        "ENGINES": ENGINES,
        "MODELS": MODELS,
        "GUIDES": GUIDES,
    }
    return {name: set(registry) for name, registry in registries.items()}


def test_the_cli_names_no_registry_key_itself():
    """Choices, help texts and defaults come from the registries: cli.py holds no key of
    one as a string constant (a registered name in prose, e.g. "vi-mcmc: ...", is allowed)."""
    import ast
    import inspect

    import aevb.cli

    tree = ast.parse(inspect.getsource(aevb.cli))
    constants = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    found = {name: sorted(keys & constants) for name, keys in _registry_keys().items()}
    assert not any(found.values()), found


def test_help_lists_every_objective_and_estimator(capsys):
    from aevb.inference.estimators import ESTIMATORS
    from aevb.inference.objectives import OBJECTIVES

    def shown(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    train = shown("train")
    assert all(name in train for name in OBJECTIVES)
    evaluate = shown("evaluate")
    assert f"{{{','.join(ESTIMATORS)}}}" in evaluate  # the --estimator choices
    for name in ESTIMATORS:  # and each one's default sample count
        assert f"{name}: {ESTIMATORS[name].samples_help}" in evaluate
        assert f"(default {ESTIMATORS[name].default_samples})" in evaluate


def test_resume_refuses_changed_settings_and_lists_them(tmp_path, capsys):
    """Only the run's length may change on --resume; anything else that would mix two runs
    (objective, inference, data, guide, model) is refused before a step is taken."""
    out = tmp_path / "fa"
    base = ["train", "fa", "--data", "fa-synthetic", "--subset", "200", "--test-subset", "50"]
    base += ["--objective", "meanfield", "--out", str(out), "--quiet"]
    assert main([*base, "--epochs", "1"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    changed = {
        "objective": ["--objective", "iwae"],
        "data_spec.subset": ["--subset", "300"],
        "data_spec.test_subset": ["--test-subset", "60"],
        "guide.name": ["--guide", "gaussian"],
        "model.config.z_dim": ["--z-dim", "1"],
        "fit.lr": ["--lr", "0.05"],
        "inference": ["--inference", "mcem", "--objective", "meanfield"],
    }
    for key, flags in changed.items():
        argv = [*base, "--epochs", "2", "--resume"]
        if key == "inference":
            argv = [a for a in argv if a not in ("--objective", "meanfield")] + flags[:2]
        else:
            argv += flags
        assert main(argv) == 2, key
        err = capsys.readouterr().err
        assert "different settings" in err and key.split(".")[-1] in err, (key, err)
    assert (out / "checkpoint.pt").read_bytes() == before
    # the same settings with a longer run continue
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    assert (out / "history.csv").read_text().count("\n") == 3


@pytest.fixture(scope="module")
def fa_run(tmp_path_factory):
    """A factor-analysis run trained for one epoch on 64 points (16 test points)."""
    out = tmp_path_factory.mktemp("fa") / "run"
    argv = ["train", "fa", "--data", "fa-synthetic", "--subset", "64", "--test-subset", "16"]
    assert main([*argv, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    return out


def test_evaluate_posterior_saves_arviz_inference_data(fa_run, capsys):
    """``aevb evaluate RUN --posterior`` samples the first test points' posterior and saves
    it as ``posterior.nc``: ArviZ's dims at the requested sizes, the same draws again for the
    same seed, and the R-hat it prints is ArviZ's of the saved draws. It makes no estimate."""
    az = pytest.importorskip("arviz")
    argv = ["evaluate", str(fa_run), "--posterior", "--posterior-points", "3", "--seed", "1"]
    argv += ["--posterior-chains", "2", "--posterior-draws", "30", "--posterior-warmup", "20"]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = fa_run / "posterior.nc"
    assert result["path"] == str(saved) and result["sampler"] == "batched-hmc"
    assert (result["points"], result["chains"], result["draws"]) == (3, 2, 30)
    idata = az.from_netcdf(str(saved))
    u = idata.posterior["u"]
    assert u.dims == ("chain", "draw", "datapoint", "latent_dim") and u.shape == (2, 30, 3, 2)
    assert idata.sample_stats["acceptance_rate"].shape == (2, 30, 3)
    assert idata.posterior.attrs["seed"] == 1
    assert result["rhat_max"] == pytest.approx(float(az.rhat(idata)["u"].max()))
    first = u.values.copy()
    assert not (fa_run / "evaluation.json").exists()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {saved}: 3 test points, 2 chains x 30 draws" in printed
    assert "split R-hat max" in printed and "bulk" in printed and "tail" in printed
    np.testing.assert_array_equal(az.from_netcdf(str(saved)).posterior["u"].values, first)
    assert main([*argv, "--posterior-draws", "2"]) == 2
    assert "--posterior-draws: must be >= 4, got 2" in capsys.readouterr().err


def test_evaluate_posterior_without_arviz_says_how_to_install_it(
    fa_run, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(fa_run, run)
    (run / "posterior.nc").unlink(missing_ok=True)
    monkeypatch.setitem(sys.modules, "arviz", None)  # `import arviz` raises ImportError
    assert main(["evaluate", str(run), "--posterior"]) == 2
    assert "pip install 'aevb[arviz]'" in capsys.readouterr().err
    assert not (run / "posterior.nc").exists()


def test_the_package_imports_without_arviz():
    """ArviZ (the legacy package) is an optional extra: nothing imports it on import."""
    code = (
        "import sys; sys.modules['arviz'] = None\n"
        "import aevb.cli, aevb.runs, aevb.inference.posterior, aevb.inference.diagnostics\n"
        "assert aevb.cli.build_parser() is not None"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
