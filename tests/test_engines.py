"""``aevb compare --engine ray``: the same grid, results and resume as the local engine, with
a local Ray started here; a raising cell is recorded, a dying worker is retried and resumes."""

import shutil

import pandas as pd
import pytest

from aevb import models
from aevb.cli import main
from aevb.errors import ConfigError
from aevb.experiments.engines import make_engine

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

GRID = """
name = "tiny-ray"
seeds = [0, 1]
{extra}
[defaults]
model = "fa"
data = "fa-synthetic"
subset = 160
test_subset = 60
epochs = 2

[evaluate]
is = 20

[[cells]]
objective = "meanfield"

[[cells]]
objective = "iwae"
particles = 3
"""

#: a user's model that kills its worker once, in the middle of epoch 2 (step 7 of 5 per
#: epoch), after the epoch-1 checkpoint was written; on the retry it says where it starts
CRASH_ONCE = """
import os
from pathlib import Path

from aevb import models
from aevb.models.fa import FactorAnalysis

MARKER = Path(__file__).with_name("crashed.marker")


@models.register
class CrashyFA(FactorAnalysis):
    name = "crashy-fa"
    first_step = None

    def set_step(self, step):
        if self.first_step is None:
            self.first_step = step
            if MARKER.exists():
                print(f"crashy-fa: attempt after the crash starts at step {step}", flush=True)
        if step == 7 and not MARKER.exists():
            MARKER.write_text("crashed")
            print("crashy-fa: worker exits at step 7", flush=True)
            os._exit(1)
"""

#: columns that differ between two runs of the same cell: time, place and thread count
VARYING = ("train_seconds", "seconds_per_epoch", "samples_per_second", "run_dir", "version_threads")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _grid(tmp_path, extra=""):
    config = tmp_path / "tiny.toml"
    config.write_text(GRID.format(extra=extra))
    return config


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    keep = [c for c in a.columns if c not in VARYING]
    pd.testing.assert_frame_equal(a[keep], b[keep])


def test_the_ray_engine_gives_the_local_results_and_resumes(tmp_path, local_ray):
    config = _grid(tmp_path)
    assert main(["compare", str(config), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    argv = ["compare", str(config), "--out", str(tmp_path / "ray"), "--quiet"]
    assert main([*argv, "--engine", "ray"]) == 0
    local = pd.read_csv(tmp_path / "local" / "results.csv")
    on_ray = pd.read_csv(tmp_path / "ray" / "results.csv")
    assert list(on_ray["status"]) == ["ok"] * 4
    _same(local, on_ray)
    assert (tmp_path / "ray" / "report.md").exists()
    # a re-run submits nothing: no checkpoint is written again
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*/checkpoint.pt")}
    assert main([*argv, "--engine", "ray"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*/checkpoint.pt")} == stamps


def test_a_raising_cell_is_recorded_and_the_grid_goes_on(tmp_path, local_ray):
    config = tmp_path / "bad.toml"
    config.write_text(
        GRID.format(extra='[engine]\nname = "ray"\nnum_cpus = 1\n')
        + '\n[[cells]]\nobjective = "no-such-objective"\n'
    )
    assert main(["compare", str(config), "--out", str(tmp_path / "g"), "--quiet"]) == 1
    results = pd.read_csv(tmp_path / "g" / "results.csv")
    assert list(results["status"]) == ["ok"] * 4 + ["failed"] * 2
    assert results["error"].iloc[-1].startswith("ConfigError: unknown objective")
    assert (tmp_path / "g" / "fa-no-such-objective-seed0.error.txt").exists()


def test_a_worker_that_dies_is_retried_and_resumes_from_its_checkpoint(tmp_path, local_ray, capfd):
    (tmp_path / "crash_once.py").write_text(CRASH_ONCE)
    body = GRID.replace("seeds = [0, 1]", "seeds = [0]").replace(
        'model = "fa"', 'model = "crashy-fa"'
    )
    config = tmp_path / "crash.toml"
    config.write_text('modules = ["crash_once"]\n' + body.format(extra=""))
    try:
        argv = ["compare", str(config), "--out", str(tmp_path / "ray"), "--engine", "ray"]
        assert main(argv) == 0
        log = capfd.readouterr()
        text = log.out + log.err
        assert "worker exits at step 7" in text
        assert "retries remaining" in text  # Ray's own line: the task is retried
        assert "attempt after the crash starts at step 5" in text  # the epoch-1 checkpoint
        assert (tmp_path / "crashed.marker").exists()
        on_ray = pd.read_csv(tmp_path / "ray" / "results.csv")
        assert list(on_ray["status"]) == ["ok", "ok"]
        # the undisturbed run (the marker is there now: nothing crashes) gives the same rows
        local_out = tmp_path / "local"
        assert main(["compare", str(config), "--out", str(local_out), "--quiet"]) == 0
        _same(pd.read_csv(local_out / "results.csv"), on_ray)
    finally:
        models.MODELS.pop("crashy-fa", None)
        shutil.rmtree(tmp_path / "ray", ignore_errors=True)


def test_engine_tables_are_checked():
    assert make_engine({}).name == "local"
    assert make_engine({"name": "ray", "num_gpus": 0.5}).num_gpus == 0.5
    with pytest.raises(ConfigError, match="unknown key 'num_cpu'; did you mean num_cpus"):
        make_engine({"name": "ray", "num_cpu": 2})
    with pytest.raises(ConfigError, match="invalid choice: 'spark'"):
        make_engine({"name": "spark"})
    with pytest.raises(ConfigError, match="apply to the ray engine only"):
        make_engine({"num_cpus": 2})
    with pytest.raises(ConfigError, match="num_gpus must be a number >= 0"):
        make_engine({"name": "ray", "num_gpus": -1})
