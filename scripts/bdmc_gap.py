"""The BDMC gap of a trained model at several AIS schedules, and the seconds each takes.

Forward AIS from the prior and reverse AIS from the exact z, on ``--points`` datapoints
simulated from the model (:mod:`aevb.inference.estimators.bdmc`), for each number of
temperatures in ``--temperatures``; the gap upper - lower bounds the AIS error at that schedule.
One JSON line per schedule is appended to ``OUT/bdmc_gap.jsonl`` as it finishes, so a long run
(10,000 temperatures) that is stopped keeps the schedules done::

    aevb train vae --epochs 5 --seed 0 --out /work/runs/vae5
    python scripts/bdmc_gap.py /work/runs/vae5 --temperatures 100 1000 10000 --points 100

(issue 35's figure: a VAE trained 5 epochs on MNIST, 100 simulated points.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aevb.inference.estimators.ais import AISConfig
from aevb.inference.estimators.bdmc import bdmc
from aevb.inference.saved import load_run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--temperatures", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--leapfrog-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="default: the run directory")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    out = (args.out or args.run_dir) / "bdmc_gap.jsonl"
    template = torch.zeros(1, run.config["model"]["config"].get("x_dim", 784))
    for temperatures in args.temperatures:
        config = AISConfig(
            num_temperatures=temperatures, num_chains=args.chains, num_steps=args.leapfrog_steps
        )
        started = time.perf_counter()
        r = bdmc(run.model, template, args.points, config, seed=args.seed)
        row = {
            "run_dir": str(args.run_dir),
            "temperatures": temperatures,
            "chains": args.chains,
            "leapfrog_steps": args.leapfrog_steps,
            "points": args.points,
            "lower": float(r.lower.mean()),
            "upper": float(r.upper.mean()),
            "gap": r.gap,
            "seconds": time.perf_counter() - started,
        }
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
