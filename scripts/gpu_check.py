"""The GPU check: one prepared script for a machine with a GPU, printing one JSON object.

    python scripts/gpu_check.py                        # on a GPU machine (~8 min at most)
    python scripts/gpu_check.py --device cpu --quick   # here, as a test (< 2 min)

What it measures, on ``--device`` (default ``cuda``):

1. ``tests``: the device-parametrised tests (``tests/test_devices.py``), pass/fail counts.
2. ``epochs``: one epoch of every model from the same seed on the device and on the CPU
   (once where the device is the CPU; ``--quick``: 200 training and 100 test images):
   seconds per epoch on each and the two test ELBOs, with their standard errors (the ELBO's
   spread over test images / sqrt(n)); ``agree`` when they differ by less than 4 combined
   standard errors plus 1% (the runs draw their binarisations and samples from different
   random streams, so only statistical agreement is expected).
3. ``is5000``: IS-5000 over the 10,000 MNIST test images (seconds; ``--quick``: IS-100 on
   200 images).
4. ``bench``: ``scripts/bench.py --device DEVICE`` (SVI images/s of the package against the
   hand-written PyTorch step on the same device, ESS/s of the samplers); ``--quick`` runs
   the SVI part alone, one repetition.

The GPU machine reaches no network: install pyro-ppl from a wheel carried with the tree, and
the package with ``pip install --no-deps -e .`` beside the machine's own torch; MNIST comes
from ``$AEVB_DATA`` (a copy of ``~/.cache/aevb``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

from aevb import data, devices, inference, runs
from aevb.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
#: one epoch of each model: its flat RunSpec keys beside the model name
MODELS = {
    "fa": {"data": "fa-synthetic"},
    "vae": {},
    "cvae": {},
    "gmvae": {},
    "vrnn": {},
}


def run_tests(device: torch.device, timeout: float) -> dict:
    """pytest on tests/test_devices.py (on a CPU machine its CUDA cases are skipped)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_devices.py"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return {"returncode": done.returncode, "summary": tail, "seconds": time.perf_counter() - t0}


def one_epoch(name: str, device: torch.device, quick: bool) -> dict:
    """One epoch of ``name`` on ``device``: seconds and the test ELBO with its standard error."""
    flat = {"model": name, **MODELS[name], "epochs": 1, "seed": 0, "device": str(device)}
    if quick or name != "fa":
        flat |= {"subset": 200 if quick else 10_000, "test_subset": 100 if quick else 2_000}
    spec = RunSpec.from_flat(flat)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run = runs.train(spec, None, progress=False, figures=False)
    seconds = time.perf_counter() - t0
    resolved = runs.resolve(spec)  # the same test set, for the per-datapoint spread
    pyro.set_rng_seed(0)
    b = inference.bounds(run.model, run.guide, resolved.test, 1, device=device)
    n = len(b.elbo)
    return {
        "seconds": seconds,
        "test_elbo": float(b.elbo.mean()),
        "test_elbo_se": float(b.elbo.std() / math.sqrt(n)),
        "num_test": n,
    }


def compare_epochs(device: torch.device, quick: bool) -> dict:
    out = {}
    for name in MODELS:
        on_device = one_epoch(name, device, quick)
        # on the CPU itself the second run would repeat the first (same seed, same device)
        cpu = torch.device("cpu")
        on_cpu = on_device if device == cpu else one_epoch(name, cpu, quick)
        gap = abs(on_device["test_elbo"] - on_cpu["test_elbo"])
        se = math.hypot(on_device["test_elbo_se"], on_cpu["test_elbo_se"])
        out[name] = {
            "device": on_device,
            "cpu": on_cpu,
            "speedup": on_cpu["seconds"] / on_device["seconds"],
            "agree": gap <= 4 * se + 0.01 * abs(on_cpu["test_elbo"]),
        }
    return out


def is5000(device: torch.device, quick: bool) -> dict:
    """IS-k seconds over the MNIST test images with a VAE trained for 300 steps (50 in
    ``--quick``)."""
    images, k = (200, 100) if quick else (10_000, 5000)
    spec = RunSpec.from_flat(
        {"model": "vae", "subset": 1000 if quick else 6000, "epochs": 1, "seed": 0}
        | {"device": str(device)}
    )
    run = runs.train(spec, None, progress=False, figures=False)
    _, test = data.load("mnist", "dynamic")
    x = test.subset(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    b = inference.bounds(run.model, run.guide, x, k, device=device)
    seconds = time.perf_counter() - t0
    return {
        "images": images,
        "k": k,
        "seconds": seconds,
        "log_likelihood": float(b.log_likelihood.mean()),
    }


def bench(device: torch.device, quick: bool, timeout: float) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--json", "--device", str(device)]
    cmd += ["--quick", "--part", "svi", "--reps", "1"] if quick else []
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"returncode": done.returncode, "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    p.add_argument("--quick", action="store_true", help="small sizes (the CPU test: < 2 min)")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out")
    args = p.parse_args(argv)
    device = devices.resolve_device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    result: dict = {
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "quick": args.quick,
        **devices.describe(device),
    }
    if "tests" not in skip:
        result["tests"] = run_tests(device, 300)
    if "epochs" not in skip:
        result["epochs"] = compare_epochs(device, args.quick)
    if "is5000" not in skip:
        result["is5000"] = is5000(device, args.quick)
    if "bench" not in skip:
        result["bench"] = bench(device, args.quick, 420)
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result, indent=2, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
