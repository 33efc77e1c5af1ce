"""Devices: every public path on every device present (CUDA visibly skipped without one), a
hygiene check that needs no GPU, and checkpoints that load whatever device wrote them."""

import json
import subprocess
import sys
import traceback
from pathlib import Path

import pyro
import pytest
import torch
from torch.overrides import TorchFunctionMode

import aevb
from aevb import data, devices, guides, inference, models, runs
from aevb.errors import ConfigError
from aevb.inference import rundir
from aevb.inference.estimators.ais import AISConfig, ais_dataset
from aevb.spec import RunSpec

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
PACKAGE = str(Path(aevb.__file__).parent)

#: torch's factory functions: each makes a tensor on the default device unless told
FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.tensor,
    torch.as_tensor,
}


class FactoryWatch(TorchFunctionMode):
    """Records every factory call made from the package's own code without ``device=``:
    such a tensor lands on the default device, not on the device of the run."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            for frame in reversed(traceback.extract_stack()[:-1]):
                if "/torch/nn/modules/" in frame.filename or frame.name == "__init__":
                    break  # a module's parameters: built on the CPU, moved with the module
                if frame.filename.startswith(PACKAGE):
                    self.found.append(f"{frame.filename}:{frame.lineno} {func.__name__}")
                    break
                if "/torch/" not in frame.filename:
                    break  # called by Pyro, a test or a user: not the package's own call
        return func(*args, **kwargs)


SMALL = {
    "vae": dict(x_dim=16, z_dim=2, hidden=(8,)),
    "cvae": dict(x_dim=16, z_dim=2, hidden=(8,), num_classes=3),
    "gmvae": dict(x_dim=16, z_dim=2, hidden=(8,), num_clusters=3),
    "vrnn": dict(step_dim=4, seq_len=4, z_dim=2, rnn_dim=8, hidden=8),
}


def _data(name: str):
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((24, 16), 0.3), generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return (x, y) if name == "cvae" else x


def _main_paths(device: str, tmp_path: Path) -> None:
    """One epoch of every model, IS, AIS, MCEM with each sampler, a run directory and its
    evaluation, all on ``device``."""
    for name, config in SMALL.items():
        pyro.set_rng_seed(0)
        model = models.build(name, **config)
        x = _data(name)
        objective = "enum" if name == "gmvae" else "trace"
        inference.fit(model, None, x, objective, test=x, epochs=1, batch_size=12, device=device)
        guide = guides.default_for(model)
        inference.fit(model, guide, x, objective, epochs=1, batch_size=12, device=device)
        inference.bounds(model, guide, x, 5)
        inference.active_units(guide, x, labels=name == "cvae")
    train, test = data.load("fa-synthetic")
    fa = models.build("fa")
    inference.fit(fa, None, train.subset(64), "iwae", test=test.subset(16), epochs=1, device=device)
    ais_dataset(fa, test.subset(8), AISConfig(num_temperatures=5, num_chains=2))
    for sampler in ("batched-hmc", "hmc", "nuts"):
        opts = {"sampler": sampler, "proposal_epochs": 1, "epochs": 1, "device": device}
        inference.mcem_fit(models.build("fa"), None, train.subset(32), test=test.subset(8), **opts)
    spec = RunSpec.from_flat(
        {"model": "fa", "data": "fa-synthetic", "subset": 64, "test_subset": 16}
        | {"epochs": 1, "device": device}
    )
    runs.train(spec, tmp_path / "run", progress=False, figures=False)
    rundir.evaluate_run(tmp_path / "run", 10, device=device)
    rundir.evaluate_run(tmp_path / "run", 2, "ais", ais_temperatures=3, device=device)


def test_no_tensor_is_made_without_a_device(tmp_path):
    """The hygiene check: on the main paths, no constructor in the package relies on the
    default device (each takes it from a tensor at hand or names it), so the same code
    runs wherever its inputs live. ``scripts/mutation_check.py`` plants one to show it bites."""
    watch = FactoryWatch()
    with watch:
        _main_paths("cpu", tmp_path)
    assert not watch.found, sorted(set(watch.found))


def test_the_watch_sees_a_constructor_without_a_device():
    watch = FactoryWatch()
    with watch:
        devices.chunk_elements(torch.device("cpu"), 8)  # no factory: nothing recorded
        from aevb.inference.estimators.ais import sigmoid_schedule

        sigmoid_schedule(3)  # names its device
    assert watch.found == []
    code = "import torch\ndef make():\n    return torch.zeros(3)\n"
    namespace: dict = {}
    exec(compile(code, f"{PACKAGE}/planted.py", "exec"), namespace)  # as if in the package
    with watch:
        namespace["make"]()
    assert watch.found and watch.found[0].endswith("planted.py:3 zeros")


@pytest.mark.parametrize("device", DEVICES)
def test_every_main_path_runs_on_the_device(device, tmp_path):
    _main_paths(device, tmp_path)


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_lives_on_its_device_and_records_it(device, tmp_path):
    spec = RunSpec.from_flat(
        {"model": "fa", "data": "fa-synthetic", "subset": 64, "test_subset": 16}
        | {"epochs": 2, "device": device}
    )
    run = runs.train(spec, tmp_path, progress=False, figures=False)
    assert run.model.W.device.type == device
    assert run.config["device"]["device"].startswith(device)
    saved = torch.load(tmp_path / rundir.CHECKPOINT, weights_only=False)  # no map_location
    tensors = [v for v in saved["params"]["params"].values()]
    assert all(t.device.type == "cpu" for t in tensors)  # device-free


def test_device_names_are_checked():
    assert devices.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="invalid choice: 'gpu'"):
        devices.resolve_device("gpu")
    with pytest.raises(ConfigError, match="device: invalid choice: 'tpu'"):
        RunSpec.from_dict({"device": "tpu"})
    assert RunSpec.from_flat({"device": "cuda:1"}).device == "cuda:1"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            devices.resolve_device("cuda")


_RETAG = """
import sys, torch
path = sys.argv[1]
state = torch.load(path, weights_only=False)
torch.serialization.register_package(0, lambda obj: "cuda:0", lambda obj, loc: None)
torch.save(state, path)
"""


def test_a_checkpoint_written_on_a_gpu_loads_and_evaluates_on_the_cpu(tmp_path):
    """A checkpoint whose tensors are tagged as saved from ``cuda:0`` (what ``torch.save``
    writes for GPU tensors; retagged here in a subprocess, as no GPU is needed) loads with
    the package's reader on a CPU and evaluates to the same numbers."""
    spec = RunSpec.from_flat(
        {"model": "fa", "data": "fa-synthetic", "subset": 64, "test_subset": 30, "epochs": 1}
    )
    runs.train(spec, tmp_path, progress=False, figures=False)
    before = rundir.evaluate_run(tmp_path, 20)
    path = tmp_path / rundir.CHECKPOINT
    subprocess.run([sys.executable, "-c", _RETAG, str(path)], check=True, timeout=120)
    if not torch.cuda.is_available():  # plain torch.load would need the GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    after = rundir.evaluate_run(tmp_path, 20)
    assert after["test_log_likelihood"] == before["test_log_likelihood"]
    assert after["test_elbo"] == before["test_elbo"]
    resumed = runs.train(
        spec.replace(schedule=spec.schedule.__class__(epochs=2)), tmp_path, resume=True
    )
    assert list(resumed.history["epoch"]) == [1, 2]


@CUDA
def test_a_gpu_run_resumes_on_the_cpu_and_back(tmp_path):
    flat = {"model": "fa", "data": "fa-synthetic", "subset": 64, "test_subset": 16}
    runs.train(RunSpec.from_flat({**flat, "epochs": 1, "device": "cuda"}), tmp_path)
    runs.train(RunSpec.from_flat({**flat, "epochs": 2, "device": "cpu"}), tmp_path, resume=True)
    run = runs.train(
        RunSpec.from_flat({**flat, "epochs": 3, "device": "cuda"}), tmp_path, resume=True
    )
    assert list(run.history["epoch"]) == [1, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["device"]["device"] == "cuda"
