"""A Ray cluster as a team starts it (``docs/cluster.rst``): ``ray start --head`` and
``ray start --address HEAD`` on a second node, here two processes on 127.0.0.1 with one CPU
each; ``aevb compare --engine ray --address HEAD:PORT`` from its own process, logging to an
MLflow server; the second node stopped in the middle of the grid. The task it ran is retried
on the head and resumes from its checkpoint; the results equal the local engine's."""

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from aevb import models
from aevb.cli import main

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.integration

#: a user's model that takes its time, and notes where each attempt of a run starts: the
#: Ray node, the training step (0, or a checkpoint's) and the process
SLOW_FA = """
import os
import time
from pathlib import Path

from aevb import models
from aevb.models.fa import FactorAnalysis

STARTS = Path(__file__).with_name("starts.txt")


@models.register
class SlowFA(FactorAnalysis):
    name = "slow-fa"
    first_step = None

    def set_step(self, step):
        if self.first_step is None:
            self.first_step = step
            import ray

            on_ray = ray.is_initialized()
            node = ray.get_runtime_context().get_node_id() if on_ray else "local"
            with STARTS.open("a") as f:
                f.write(f"{node} {step} {os.getpid()}\\n")
        time.sleep(0.25)
"""

ENGINE = """
[engine]
name = "ray"
num_cpus = 1
max_retries = 2
"""

GRID = """
name = "two-nodes"
seeds = [0]
modules = ["slow_fa"]

[defaults]
model = "slow-fa"
data = "fa-synthetic"
subset = 160
test_subset = 60
epochs = 4

[evaluate]
is = 20

{ENGINE}
[[cells]]
objective = "meanfield"

[[cells]]
objective = "trace"
""".replace("{ENGINE}", ENGINE)

#: columns that differ between two runs of the same cell: time, place and thread count
VARYING = ("train_seconds", "seconds_per_epoch", "samples_per_second", "run_dir", "version_threads")


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds} s for {what}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _lose(process: subprocess.Popen) -> None:
    """A node lost as a machine is lost: its raylet, workers and ``ray start`` killed at once
    (SIGTERM would drain it, letting its running tasks finish first)."""
    import psutil

    node = psutil.Process(process.pid)
    for child in [*node.children(recursive=True), node]:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)


class Node:
    """``ray start ... --block`` as a process (its node lives as long as it does)."""

    def __init__(self, args: list[str], log: Path, env: dict):
        ray_cli = Path(sys.executable).with_name("ray")
        common = ["--num-cpus", "1", "--object-store-memory", str(80 * 2**20), "--block"]
        self.log = log
        self.process = subprocess.Popen(
            [str(ray_cli), "start", *args, *common],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        _wait_for(self.started, 120, f"the node of {log.name}")

    def started(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.log.name}: ray start exited\n{self.log.read_text()}")
        return "block forever" in self.log.read_text()


@pytest.fixture
def cluster(tmp_path):
    """A head and a second node on 127.0.0.1, with a token of their own (Ray 2.5x turns token
    authentication on for ``ray start --head``; every process is given the token)."""
    port = 20000 + secrets.randbelow(20000)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    temp = Path("/tmp") / f"aevb-ray-{secrets.token_hex(4)}"  # Ray's socket paths are short
    nodes = []
    try:
        head = ["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)]
        nodes.append(Node(head, tmp_path / "head.log", env))
        nodes.append(Node(["--address", f"127.0.0.1:{port}"], tmp_path / "worker.log", env))
        yield f"127.0.0.1:{port}", env, nodes[1]
    finally:
        for node in reversed(nodes):
            _stop(node.process)
        shutil.rmtree(temp, ignore_errors=True)


def _starts(folder: Path) -> list[tuple[str, int]]:
    path = folder / "starts.txt"
    lines = path.read_text().split("\n") if path.exists() else []
    return [(node, int(step)) for node, step, _ in (line.split() for line in lines if line)]


def test_a_grid_survives_losing_a_node_and_logs_to_an_mlflow_server(
    tmp_path, cluster, tracking_server
):
    address, env, worker = cluster
    url, _ = tracking_server
    (tmp_path / "slow_fa.py").write_text(SLOW_FA)
    config = tmp_path / "grid.toml"
    config.write_text(GRID)
    out = tmp_path / "ray"
    aevb = Path(sys.executable).with_name("aevb")
    command = [str(aevb), "compare", str(config), "--out", str(out), "--address", address]
    command += ["--track", f"mlflow:{url}", "--quiet"]
    driver_log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        command, stdout=driver_log.open("wb"), stderr=subprocess.STDOUT, env=env
    )
    try:
        # both runs started, one on each node, and both wrote their epoch-1 checkpoint
        def both_running() -> bool:
            checkpoints = list(out.glob("*/checkpoint.pt"))
            return len({node for node, _ in _starts(tmp_path)}) == 2 and len(checkpoints) == 2

        _wait_for(both_running, 240, "a run on each node past its first epoch")
        assert not list(out.glob("*/evaluation.json"))  # neither has finished
        _lose(worker.process)  # the second node goes away mid-grid
        assert driver.wait(timeout=300) == 0, driver_log.read_text()
    finally:
        _stop(driver)
    resumed = [step for _, step in _starts(tmp_path) if step > 0]
    (tmp_path / "starts.txt").unlink()
    assert len(resumed) == 1, (_starts(tmp_path), driver_log.read_text())  # from a checkpoint
    on_ray = pd.read_csv(out / "results.csv")
    assert list(on_ray["status"]) == ["ok", "ok"]

    # the same grid on the local engine (no crash, no Ray) gives the same rows
    try:
        local_out, local_config = tmp_path / "local", tmp_path / "local.toml"
        local_config.write_text(GRID.replace(ENGINE, ""))
        assert main(["compare", str(local_config), "--out", str(local_out), "--quiet"]) == 0
    finally:
        models.MODELS.pop("slow-fa", None)
    local = pd.read_csv(local_out / "results.csv")
    keep = [c for c in local.columns if c not in VARYING]
    pd.testing.assert_frame_equal(local[keep], on_ray[keep])

    # the MLflow server holds the grid: the lost run went on in its own MLflow run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("aevb").experiment_id])
    by_name = {}
    for run in runs:
        by_name.setdefault(run.info.run_name, []).append(run)
    assert sorted(by_name) == ["slow-fa-meanfield-seed0", "slow-fa-trace-seed0", "two-nodes"]
    assert all(len(found) == 1 for found in by_name.values()), by_name
    assert {r.info.status for r in runs} == {"FINISHED"}
    for cell in ("slow-fa-meanfield-seed0", "slow-fa-trace-seed0"):
        (run,) = by_name[cell]
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(p.step for p in history) == [1, 2, 3, 4]
