"""The run directory: atomic writes, evaluations, and run directories of older versions that
still load and resume bit for bit."""

import pyro
import pytest
import torch

from aevb import runs
from aevb.errors import RunDirError
from aevb.inference import rundir
from aevb.models.nets import guide_module_name
from aevb.spec import RunSpec, ScheduleSpec

VAE = {"model": "vae", "z_dim": 2, "hidden": "8", "subset": 64, "test_subset": 20}


@pytest.fixture
def bits(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    path = tmp_path / "bits.npz"
    np.savez(path, x=(g.random((100, 12)) < 0.3).astype(np.float32))
    return str(path)


def test_atomic_write_leaves_the_old_file_whole_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    rundir.atomic_write(path, lambda p: p.write_text("good"))

    def failing(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        rundir.atomic_write(path, failing)
    assert path.read_text() == "good"


def test_evaluations_accumulate_by_key(tmp_path):
    assert rundir.read_evaluations(tmp_path) == {}
    rundir.record_evaluation(tmp_path, "is-10", {"test_log_likelihood": -1.0})
    both = rundir.record_evaluation(tmp_path, "ais-4", {"test_log_likelihood": -2.0})
    assert both == rundir.read_evaluations(tmp_path)
    assert set(both) == {"is-10", "ais-4"}


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="checkpoint.pt: missing; is .* a run directory"):
        rundir.read_checkpoint(tmp_path)


def test_guides_follow_one_naming_convention(bits):
    spec = RunSpec.from_flat({**VAE, "data": bits, "epochs": 1})
    runs.train(spec, None, progress=False)
    names = {n.partition("$$$")[0] for n in pyro.get_param_store().keys()}
    assert names == {"vae", guide_module_name("gaussian")} == {"vae", "encoder.gaussian"}


def _to_old_names(name: str) -> str:
    return name.replace("encoder.gaussian$$$", "encoder$$$")


def test_a_checkpoint_with_the_old_guide_names_resumes_bit_for_bit(tmp_path, bits):
    """Checkpoints written before the naming convention (the Gaussian guide as
    ``encoder``) are renamed on reading: parameters and Adam state carry over exactly."""
    spec = RunSpec.from_flat({**VAE, "data": bits, "epochs": 3})
    runs.train(spec, tmp_path / "straight", progress=False, figures=False)
    straight = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    out = tmp_path / "old"
    runs.train(spec.replace(schedule=ScheduleSpec(epochs=1)), out, progress=False, figures=False)
    path = out / rundir.CHECKPOINT
    state = torch.load(path, weights_only=False)
    for key in ("params", "constraints"):
        state["params"][key] = {_to_old_names(n): v for n, v in state["params"][key].items()}
    optim = state["algorithm"]["optim"]
    optim["state"] = {_to_old_names(n): v for n, v in optim["state"].items()}
    assert any(n.startswith("encoder$$$") for n in optim["state"])
    torch.save(state, path)
    runs.train(spec, out, resume=True, progress=False, figures=False)
    resumed = dict(pyro.get_param_store().items())
    assert set(resumed) == set(straight)
    for name, value in straight.items():
        assert torch.equal(resumed[name].detach(), value), name


def test_upgrade_record_moves_old_mcem_sampler_settings():
    old = {"inference": "mcem", "fit": {"sampler": "hmc", "num_steps": 20, "max_tree_depth": 10}}
    new = rundir.upgrade_record(old)
    assert new["fit"] == {"sampler": "hmc", "sampler_options": {"num_steps": 20}}
    assert rundir.upgrade_record(new) == new
    svi = {"inference": "svi", "fit": {"objective": "trace", "objective_options": {}}}
    assert rundir.upgrade_record(svi) == svi
    # an objective recorded before objectives had options of their own has none
    older = {"inference": "svi", "fit": {"objective": "trace"}}
    assert rundir.upgrade_record(older) == svi
