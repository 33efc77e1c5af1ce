"""Devices: every public path on every device present (CUDA visibly skipped without one), a
hygiene check that needs no GPU, and checkpoints that load whatever device wrote them."""

import importlib.util
import json
import math
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
from aevb.inference import rundir, saved
from aevb.inference.estimators.ais import AISConfig, ais_dataset
from aevb.inference.posterior import PosteriorConfig
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


def _main_paths(device: str, tmp_path: Path) -> dict:
    """One epoch of every model, IS, AIS, MCEM with each sampler, a run directory and its
    evaluation, all on ``device``; returns what each gave."""
    out: dict = {"fits": [], "bounds": [], "units": []}
    for name, config in SMALL.items():
        pyro.set_rng_seed(0)
        model = models.build(name, **config)
        x = _data(name)
        objective = "enum" if name == "gmvae" else "trace"
        fit = inference.fit(
            model, None, x, objective, test=x, epochs=1, batch_size=12, device=device
        )
        guide = guides.default_for(model)
        out["fits"] += [
            fit,
            inference.fit(model, guide, x, objective, epochs=1, batch_size=12, device=device),
        ]
        out["bounds"].append(inference.bounds(model, guide, x, 5))
        out["units"].append(inference.active_units(guide, x, labels=name == "cvae"))
    train, test = data.load("fa-synthetic")
    fa = models.build("fa")
    out["fits"].append(
        inference.fit(
            fa, None, train.subset(64), "iwae", test=test.subset(16), epochs=1, device=device
        )
    )
    out["ais"] = ais_dataset(fa, test.subset(8), AISConfig(num_temperatures=5, num_chains=2))
    out["fa"] = fa
    for sampler in ("batched-hmc", "hmc", "nuts"):
        opts = {"sampler": sampler, "proposal_epochs": 1, "epochs": 1, "device": device}
        opts["num_samples"] = 4  # enough draws for the E-step chains' ESS
        fitted = inference.mcem_fit(
            models.build("fa"), None, train.subset(32), test=test.subset(8), **opts
        )
        out["fits"].append(fitted)
    spec = RunSpec.from_flat(
        {"model": "fa", "data": "fa-synthetic", "subset": 64, "test_subset": 16}
        | {"epochs": 1, "device": device}
    )
    out["run"] = runs.train(spec, tmp_path / "run", progress=False, figures=False)
    out["is"] = saved.evaluate_run(tmp_path / "run", 10, device=device)
    out["ais_run"] = saved.evaluate_run(
        tmp_path / "run", 2, "ais", ais_temperatures=3, device=device
    )
    if importlib.util.find_spec("arviz") is not None:  # the optional posterior export
        small = PosteriorConfig(points=2, chains=2, draws=4, warmup=2)
        out["posterior"] = runs.posterior(tmp_path / "run", small, device=device)
    return out


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


def _on(device: str, *objs) -> bool:
    """Every parameter of the ``nn.Module`` objects among ``objs`` lives on ``device``."""
    params = [p for o in objs if isinstance(o, torch.nn.Module) for p in o.parameters()]
    return bool(params) and all(p.device.type == device for p in params)


@pytest.mark.parametrize("device", DEVICES)
def test_every_main_path_runs_on_the_device(device, tmp_path):
    got = _main_paths(device, tmp_path)
    assert len(got["fits"]) == 2 * len(SMALL) + 1 + 3
    for run in got["fits"]:  # trained where asked, one finished epoch, a finite loss
        assert _on(device, run.model, run.guide), run.config["model"]
        assert list(run.history["epoch"]) == [1]
        assert torch.isfinite(torch.tensor(run.history["train_loss"].to_numpy())).all()
        assert run.config["device"]["device"].startswith(device)
    for run in got["fits"][: 2 * len(SMALL) : 2] + [got["fits"][2 * len(SMALL)]]:
        assert torch.isfinite(torch.tensor(run.history["test_elbo"].to_numpy())).all()
    for run in got["fits"][-3:]:  # MCEM: its proposal fitted afterwards, on the device too
        assert list(run.extra["proposal_history"]["epoch"]) == [1]
        assert math.isfinite(run.history["ess_bulk"].iloc[0])  # its chains' ESS
    for b, name in zip(got["bounds"], SMALL):  # results come back to the CPU, one per point
        for values in (b.elbo, b.log_likelihood):
            assert values.device.type == "cpu" and values.shape == (24,), name
            assert torch.isfinite(values).all(), name
    assert all(0 <= units <= 2 for units in got["units"])  # z_dim 2 in every SMALL model
    ais = got["ais"].log_likelihood
    assert ais.device.type == "cpu" and ais.shape == (8,) and torch.isfinite(ais).all()
    _, test = data.load("fa-synthetic")
    with torch.no_grad():
        fa = got["fa"].cpu()
        assert float(ais.mean()) <= float(fa.log_evidence(test.subset(8).x).mean()) + 0.5
    # the run directory: trained on the device, evaluated there with the checkpoint's
    # parameters (the exact evidence is that of the run loaded on the CPU)
    assert _on(device, got["run"].model) and list(got["run"].history["epoch"]) == [1]
    loaded = saved.load_run(tmp_path / "run")
    with torch.no_grad():
        exact = float(loaded.model.log_evidence(test.subset(16).x).mean())
    for result in (got["is"], got["ais_run"]):
        assert result["num_test"] == 16
        assert result["test_log_evidence_exact"] == pytest.approx(exact, rel=1e-5)
        assert math.isfinite(result["test_elbo"])
        assert result["test_log_likelihood"] <= exact + 0.5
    if "posterior" in got:  # posterior draws of 2 test points, saved from the device
        assert got["posterior"]["points"] == 2 and math.isfinite(got["posterior"]["ess_bulk"])


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
    before = saved.evaluate_run(tmp_path, 20)
    path = tmp_path / rundir.CHECKPOINT
    subprocess.run([sys.executable, "-c", _RETAG, str(path)], check=True, timeout=120)
    if not torch.cuda.is_available():  # plain torch.load would need the GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    after = saved.evaluate_run(tmp_path, 20)
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
