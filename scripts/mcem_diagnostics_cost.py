"""Per-epoch cost of Monte Carlo EM's chain diagnostics (R-hat, bulk and tail ESS per epoch):
``EpochChainDiagnostics.add`` and ``.summary`` timed inside a small MCEM run (FA on
fa-synthetic, S draws per E-step), beside the epoch's seconds.

    OMP_NUM_THREADS=1 python scripts/mcem_diagnostics_cost.py --points 1000 --epochs 3 --draws 8
"""

import argparse
import time

import pyro

from aevb import data, inference, models
from aevb.inference import diagnostics as D

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--points", type=int, default=1000, help="training points")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--draws", type=int, default=8, help="draws per E-step (num_samples)")
args = parser.parse_args()
points, epochs, samples = args.points, args.epochs, args.draws
spent = {"add": 0.0, "summary": 0.0, "calls": 0}
add, summary = D.EpochChainDiagnostics.add, D.EpochChainDiagnostics.summary


def timed_add(self, *a):
    t = time.perf_counter()
    add(self, *a)
    spent["add"] += time.perf_counter() - t
    spent["calls"] += 1


def timed_summary(self):
    t = time.perf_counter()
    out = summary(self)
    spent["summary"] += time.perf_counter() - t
    per_epoch.append(dict(spent))
    spent.update(add=0.0, summary=0.0, calls=0)
    return out


per_epoch: list = []
D.EpochChainDiagnostics.add, D.EpochChainDiagnostics.summary = timed_add, timed_summary
train, _ = data.load("fa-synthetic")
pyro.set_rng_seed(0)
run = inference.mcem_fit(
    models.build("fa"),
    None,
    train.subset(points),
    epochs=epochs,
    batch_size=32,
    proposal_epochs=0,
    num_samples=samples,
)
h = run.history
for i, row in h.iterrows():
    d = per_epoch[i]
    diag = d["add"] + d["summary"]
    print(
        f"epoch {int(row['epoch'])}: {row['epoch_seconds']:.2f} s "
        f"(E {row['e_step_seconds']:.2f}, M {row['m_step_seconds']:.2f}); diagnostics "
        f"{1000 * diag:.1f} ms in {d['calls']} add calls = {100 * diag / row['epoch_seconds']:.1f}%"
        f"; rhat_max {row['rhat_max']:.3f} share {row['rhat_share_over_1_01']:.2f} "
        f"ess_bulk {row['ess_bulk']:.2f} ess_tail {row['ess_tail']:.2f}"
    )
