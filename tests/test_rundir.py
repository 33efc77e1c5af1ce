"""The run directory: atomic writes, evaluations, and run directories of older versions that
still load and resume bit for bit."""

import pytest

from aevb.errors import ConfigError
from aevb.inference import rundir

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
    with pytest.raises(ConfigError, match="no checkpoint.pt; is this a run directory"):
        rundir.read_checkpoint(tmp_path)


def test_upgrade_record_moves_old_mcem_sampler_settings():
    old = {"inference": "mcem", "fit": {"sampler": "hmc", "num_steps": 20, "max_tree_depth": 10}}
    new = rundir.upgrade_record(old)
    assert new["fit"] == {"sampler": "hmc", "sampler_options": {"num_steps": 20}}
    assert rundir.upgrade_record(new) == new
    svi = {"inference": "svi", "fit": {"objective": "trace"}}
    assert rundir.upgrade_record(svi) is svi
