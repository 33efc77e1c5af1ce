"""Faults during a run: signals, kills, damaged and unwritable checkpoints, two processes on one
run directory, a diverging loss. In each case nothing already on disk is lost and the run
continues (``--resume``) to the same numbers as an uninterrupted one."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

from aevb import inference, runs
from aevb.cli import main
from aevb.errors import RunDirError, RunInterrupted, RunLocked, TrainingDiverged
from aevb.inference import rundir
from aevb.spec import RunSpec, ScheduleSpec

#: FA on its synthetic data: 96 points in batches of 32 = 3 steps an epoch
FA = {"model": "fa", "data": "fa-synthetic", "subset": 96, "test_subset": 40}
TIMING = ["epoch_seconds", "train_seconds", "samples_per_second", "eval_seconds"]
TIMING += ["e_step_seconds", "m_step_seconds", "mcmc_seconds"]


def _params() -> dict:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _numbers(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=[c for c in TIMING if c in history.columns])


def _signal_at(step: int, signum: int):
    """A step callback that sends this process ``signum`` after ``step`` steps, as Ctrl-C or
    a scheduler's SIGTERM would."""

    def callback(epoch, at, loss):
        if at == step:
            os.kill(os.getpid(), signum)

    return callback


def _fit(spec: RunSpec, out, **kw):
    """``runs.train`` without figures, and with a step callback where given."""
    r = runs.resolve(spec)
    settings = runs.fit_settings(spec)
    common = dict(test=r.test, out=out, progress=False, meta=runs._meta(r, out, resume=False))
    return runs.fit_resolved(spec, r, **common, **settings, **kw)[0]


SPECS = {
    "svi": {**FA, "objective": "iwae", "particles": 3, "epochs": 3},
    # an objective with state of its own: the Monte Carlo VAE's adapted step size
    "svi-mcvae": {**FA, "objective": "l-mcvae", "particles": 2, "epochs": 3},
    "mcem": {**FA, "inference": "mcem", "proposal_epochs": 0, "epochs": 3},
    "vi-mcmc": {**FA, "inference": "vi-mcmc", "mcmc_steps": 2, "leapfrog_steps": 3, "epochs": 3},
}


@pytest.mark.parametrize("method", sorted(SPECS))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_checkpoints_and_the_resumed_run_is_bit_identical(
    tmp_path, method, signum
):
    """SIGINT/SIGTERM at step 5 (the middle of epoch 2): the step finishes, a checkpoint
    holding the position within the epoch is written, RunInterrupted carries 130/143; the
    resumed run ends with exactly the parameters and history of an uninterrupted one."""
    spec = RunSpec.from_flat(SPECS[method])
    handler = signal.getsignal(signal.SIGINT)
    straight = _fit(spec, tmp_path / "straight")
    expected = _params()
    out = tmp_path / "stopped"
    with pytest.raises(RunInterrupted, match=r"after step 5 \(epoch 2\)") as info:
        _fit(spec, out, callback=_signal_at(5, signum))
    assert info.value.exit_code == 128 + signum
    saved = rundir.read_checkpoint(out)
    assert saved["partial"]["batches"] == 2 and saved["partial"]["epoch"] == 2
    assert len(saved["history"]) == 1
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    resumed = _fit(spec, out, resume=True)
    _same_params(_params(), expected)
    pd.testing.assert_frame_equal(_numbers(resumed.history), _numbers(straight.history))
    assert "partial" not in rundir.read_checkpoint(out)


def test_a_signal_on_an_epochs_last_step_keeps_the_epoch(tmp_path):
    spec = RunSpec.from_flat(SPECS["svi"])
    _fit(spec, tmp_path / "straight")
    expected = _params()
    out = tmp_path / "stopped"
    with pytest.raises(RunInterrupted, match="epoch 2"):
        _fit(spec, out, callback=_signal_at(6, signal.SIGINT))
    saved = rundir.read_checkpoint(out)
    assert "partial" not in saved and len(saved["history"]) == 2
    _fit(spec, out, resume=True)
    _same_params(_params(), expected)


def test_a_signal_on_the_step_that_spends_the_step_budget_ends_the_run_there(tmp_path):
    spec = RunSpec.from_flat(SPECS["svi"])
    r_straight = _fit(spec, tmp_path / "straight", max_steps=5)
    expected = _params()
    out = tmp_path / "stopped"
    with pytest.raises(RunInterrupted):
        _fit(spec, out, callback=_signal_at(5, signal.SIGINT), max_steps=5)
    resumed = _fit(spec, out, resume=True, max_steps=5)
    _same_params(_params(), expected)
    assert list(resumed.history["step"]) == list(r_straight.history["step"]) == [3, 5]


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "aevb.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def _wait_for(path: Path, proc, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_the_command_exits_143_on_sigterm_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "fa", "--data", "fa-synthetic", "--epochs", "100000", "--quiet"]
    proc = _cli([*args, "--out", str(out)])
    _wait_for(out / rundir.HISTORY, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "Traceback" not in err
    assert f"to continue: aevb {' '.join(args)} --out {out} --resume" in err
    state = rundir.read_checkpoint(out)
    assert state["history"] and not (out / rundir.LOCK).exists()
    # the resumed command (with fewer epochs than the run already has) refuses nothing
    done = len(state["history"]) + (1 if "partial" in state else 0)
    assert main([*args[:4], "--epochs", str(done + 1), "--out", str(out), "--resume"]) == 0


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, capsys):
    """Kill -9 a run at five random moments (FA writes a checkpoint every few milliseconds,
    so some kills fall while one is being written): each time a checkpoint loads and the
    run resumes; the dead holder's lock is taken over."""
    out = tmp_path / "run"
    args = ["train", "fa", "--data", "fa-synthetic", "--subset", "32", "--test-subset", "8"]
    args += ["--quiet", "--out", str(out)]
    rng = np.random.default_rng(0)
    for attempt in range(5):
        proc = _cli([*args, "--epochs", "100000", *(["--resume"] if attempt else [])])
        _wait_for(out / rundir.HISTORY, proc)
        time.sleep(float(rng.uniform(0.2, 1.0)))
        proc.kill()
        proc.communicate()
        state = rundir.read_checkpoint(out)
        assert state["history"], attempt
    assert (out / rundir.LOCK).exists()  # left by the killed process
    capsys.readouterr()
    epochs = len(state["history"]) + 1
    assert main([*args, "--epochs", str(epochs), "--resume"]) == 0
    assert "no longer running" in capsys.readouterr().err
    assert len(rundir.read_checkpoint(out)["history"]) == epochs


def test_a_failure_between_write_and_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The new checkpoint is complete on disk but the rename fails (the process dies there):
    checkpoint.pt is still the previous one, whole, and the run resumes from it."""
    spec = RunSpec.from_flat({**SPECS["svi"], "epochs": 2})
    _fit(spec, tmp_path / "straight")
    expected = _params()
    out = tmp_path / "run"
    _fit(spec.replace(schedule=ScheduleSpec(epochs=1)), out)
    before = (out / rundir.CHECKPOINT).read_bytes()

    real_replace = os.replace

    def dies_before_rename(src, dst):
        if Path(dst).name == rundir.CHECKPOINT:
            raise KeyboardInterrupt("killed between write and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(rundir.os, "replace", dies_before_rename)
    with pytest.raises(KeyboardInterrupt):
        _fit(spec, out, resume=True)
    monkeypatch.setattr(rundir.os, "replace", real_replace)
    assert (out / rundir.CHECKPOINT).read_bytes() == before
    assert len(rundir.read_checkpoint(out)["history"]) == 1
    _fit(spec, out, resume=True)
    _same_params(_params(), expected)


def _half_written(state, path):
    """A writer that runs out of disk half way (ENOSPC), as a full disk would."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise OSError(28, "No space left on device")


def test_an_unwritable_checkpoint_stops_the_run_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    spec = RunSpec.from_flat({**SPECS["svi"], "epochs": 1})
    out = tmp_path / "run"
    _fit(spec, out)
    good = (out / rundir.CHECKPOINT).read_bytes()
    monkeypatch.setattr(rundir, "save_state", _half_written)
    with pytest.raises(RunDirError, match="No space left on device.*previous version is intact"):
        _fit(spec.replace(schedule=ScheduleSpec(epochs=2)), out, resume=True)
    assert (out / rundir.CHECKPOINT).read_bytes() == good
    assert not list(out.glob(".*.tmp")) and not (out / rundir.LOCK).exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_checkpoint_is_named_and_resume_uses_the_previous_one(tmp_path, damage):
    spec = RunSpec.from_flat(SPECS["svi"])
    _fit(spec, tmp_path / "straight")
    expected = _params()
    out = tmp_path / "run"
    _fit(spec.replace(schedule=ScheduleSpec(epochs=2)), out)
    path = out / rundir.CHECKPOINT
    raw = path.read_bytes()
    path.write_bytes(
        {"truncate": raw[: len(raw) // 3], "garbage": b"\x00" * 999, "empty": b""}[damage]
    )
    with pytest.raises(RunDirError, match=r"checkpoint.pt: corrupt or truncated") as info:
        rundir.read_checkpoint(out)
    assert "checkpoint.prev.pt (epoch 1) is intact" in str(info.value)
    assert main(["evaluate", str(out), "--num-samples", "2", "--quiet"]) == 2
    _fit(spec, out, resume=True)  # from epoch 1: the same result as never stopping
    _same_params(_params(), expected)
    assert (out / "checkpoint.corrupt.pt").exists()  # set aside, not deleted


def test_two_damaged_checkpoints_are_a_clear_error(tmp_path):
    out = tmp_path / "run"
    _fit(RunSpec.from_flat({**SPECS["svi"], "epochs": 2}), out)
    for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
        (out / name).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(RunDirError, match="checkpoint.prev.pt is damaged too"):
        rundir.read_checkpoint(out, fallback=True)


HOLD = """
import sys, time
from aevb.inference import rundir
with rundir.lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on {socket.gethostname()}"):
            _fit(RunSpec.from_flat({**SPECS["svi"], "epochs": 1}), out)
        assert not rundir.has_checkpoint(out)
    finally:
        holder.kill()
        holder.wait()
    _fit(RunSpec.from_flat({**SPECS["svi"], "epochs": 1}), out)  # the kernel freed it


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    owner = {"pid": dead.pid, "host": socket.gethostname(), "since": "then"}
    (out / rundir.LOCK).write_text(json.dumps(owner))
    _fit(RunSpec.from_flat({**SPECS["svi"], "epochs": 1}), out)
    assert f"pid {dead.pid}" in capsys.readouterr().err
    assert not (out / rundir.LOCK).exists()
    with rundir.lock(out), rundir.lock(out):  # re-entrant within one process
        assert json.loads((out / rundir.LOCK).read_text())["pid"] == os.getpid()


def _exploding_pair():
    """A user's model whose log density becomes NaN once ``boom["on"]`` is set."""
    boom = {"on": False}

    def model(x):
        loc = pyro.param("loc", torch.zeros(x.shape[-1]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(loc + z[:, None], 1.0).to_event(1), obs=x)
        if boom["on"]:
            pyro.factor("boom", torch.tensor(float("nan")))

    def guide(x):
        s = pyro.param("s", torch.tensor(0.5), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), s))

    return model, guide, boom


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_nan_loss_stops_with_the_last_good_checkpoint_and_the_likely_causes(tmp_path):
    model, guide, boom = _exploding_pair()

    def after_step(epoch, step, loss):
        boom["on"] = step == 4  # the next step, epoch 3's first (2 steps an epoch), is NaN

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        inference.fit(
            model, guide, torch.randn(40, 3), epochs=5, batch_size=20, out=out,
            progress=False, callback=after_step,
        )  # fmt: skip
    message = str(info.value)
    assert "epoch 3, step 5" in message and "checkpoint.pt (epoch 2)" in message
    assert "learning rate" in message and "[0, 1]" in message
    assert len(rundir.read_checkpoint(out)["history"]) == 2
    assert not (out / rundir.LOCK).exists()
    assert main(["evaluate", str(out)]) == 2  # a user's callables: a clear refusal


def test_an_interrupted_grid_cell_resumes_on_the_next_run(tmp_path):
    """Ctrl-C stops ``aevb compare`` (not recorded as a failed cell); the next run resumes
    the cell from its checkpoint."""
    config = tmp_path / "grid.toml"
    config.write_text(
        'name = "g"\nseeds = [0]\n[defaults]\nmodel = "fa"\ndata = "fa-synthetic"\n'
        "subset = 96\ntest_subset = 40\nepochs = 3\n[evaluate]\nis = 5\n"
        '[[cells]]\nlabel = "a"\nobjective = "trace"\n'
    )
    from aevb.experiments import compare

    out = tmp_path / "grid"
    calls = {"n": 0}
    real_step = inference.svi.SVIAlgorithm.step

    def step_then_sigint(self, args, index):
        loss = real_step(self, args, index)
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    inference.svi.SVIAlgorithm.step = step_then_sigint
    try:
        with pytest.raises(RunInterrupted):
            compare.run_grid(config, out, quiet=True)
    finally:
        inference.svi.SVIAlgorithm.step = real_step
    results = compare.run_grid(config, out, quiet=True)
    assert list(results["status"]) == ["ok"]
    assert int(results["epochs"].iloc[0]) == 3
