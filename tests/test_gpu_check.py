"""scripts/gpu_check.py in its CPU mode: the prepared GPU script runs end to end here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_gpu_check_runs_on_the_cpu():
    # its "tests" part is this suite's tests/test_devices.py, run here already
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--skip", "tests"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["device"] == "cpu" and "tests" not in result
    assert set(result["epochs"]) == {"fa", "vae", "cvae", "gmvae", "vrnn"}
    for name, row in result["epochs"].items():
        # with --device cpu the CPU run is not repeated (a seed's run is deterministic on
        # one device, which the resume tests check bit for bit)
        assert row["device"] == row["cpu"] and row["agree"], name
        assert row["device"]["seconds"] > 0 and row["device"]["test_elbo"] < 0, name
    assert result["is5000"]["seconds"] > 0 and result["is5000"]["log_likelihood"] < 0
    assert result["bench"]["svi_ratio_trace"] > 0, result["bench"]
