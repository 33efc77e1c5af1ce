"""The compiled objectives with and without TorchScript's profiling-executor optimisations.

Trains one epoch of each model on the first ``--subset`` MNIST images (seed 0) under
``aevb.inference.objectives.jit.OPTIMIZED_EXECUTION`` = True and = False, in fresh processes,
and prints the training seconds and the test ELBO of each (equal ELBOs: the same computation).

    python scripts/jit_executor.py            # ~2 min on 2 cores

Prints a Markdown table: model, images, seconds optimised, seconds not, the two ELBOs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys
from aevb import runs
from aevb.inference.objectives import jit
from aevb.spec import RunSpec
jit.OPTIMIZED_EXECUTION = sys.argv[1] == "on"
spec = RunSpec.from_flat(
    {"model": sys.argv[2], "epochs": 1, "seed": 0, "subset": int(sys.argv[3]), "test_subset": 50}
)
h = runs.train(spec, None, progress=False, figures=False).history
last = h.iloc[-1]
print(json.dumps({"seconds": float(last["train_seconds"]), "elbo": float(last["test_elbo"])}))
"""


def measure(setting: str, model: str, subset: int) -> dict:
    """Seconds and test ELBO of one epoch in a fresh process (nothing compiled yet)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, setting, model, str(subset)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vae", "cvae", "gmvae", "vrnn"])
    p.add_argument("--subset", type=int, default=6000)
    args = p.parse_args()
    print("| model | images | s optimised | s not | ELBO optimised | ELBO not |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        on, off = measure("on", model, args.subset), measure("off", model, args.subset)
        print(
            f"| {model} | {args.subset} | {on['seconds']:.1f} | {off['seconds']:.1f} "
            f"| {on['elbo']:.3f} | {off['elbo']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
