"""``aevb demo``: Burda et al.'s 784-200-200-50 VAE on dynamically binarised MNIST, trained by
SVI under three objectives (estimators A and B of Kingma & Welling, and IWAE with k=5), then
scored by importance sampling. Prints one table and writes figures under ``runs/demo``.

Re-running continues the runs in place (``resume``): finished runs are only re-scored.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from aevb import data, inference, plots, runs
from aevb.inference import psis
from aevb.spec import RunSpec

#: The three estimators the demo compares, each an objective's name and its particle count.
DEMO_OBJECTIVES = (("trace", 1), ("meanfield", 1), ("iwae", 5))


def _summary(run, label: str, test, scored, is_samples: int, quiet: bool) -> dict:
    """One row of the demo's table: the run's last epoch, its seconds per epoch, test ELBO,
    IS-k log p(x) on ``scored`` and active units."""
    b = inference.bounds(
        run.model, run.guide, scored, is_samples, progress=not quiet and sys.stderr.isatty()
    )
    h = run.history
    trust = b.trust(psis.FLAG_SHARE)
    share = f"{trust['khat_share_over_threshold']:.0%}" + (" (k-hat!)" if trust["flagged"] else "")
    return {
        "objective": label,
        "epochs": int(h["epoch"].iloc[-1]),
        "sec/epoch": float(h["epoch_seconds"].mean()),
        "test ELBO": float(h["test_elbo"].iloc[-1]),
        f"IS-{is_samples} log p(x)": float(b.log_likelihood.mean()),
        "se": trust["test_log_likelihood_se"],
        "k-hat over threshold": share,
        "active units": inference.active_units(run.guide, test),
    }


def run_demo(
    out: str | Path = "runs/demo",
    epochs: int | None = None,
    quiet: bool = False,
    is_samples: int = 1000,
    is_subset: int = 2000,
    device: str = "cpu",
) -> pd.DataFrame:
    """Train and score the three runs; return the summary table (also ``results.csv``)."""
    out = Path(out)
    epochs = epochs or 5
    train, test = data.load("mnist", binarize="dynamic")
    scored = test.subset(is_subset)
    rows, histories = [], {}
    for objective, k in DEMO_OBJECTIVES:
        label = objective if k == 1 else f"{objective}-k{k}"
        if not quiet:
            print(f"== {label}: {epochs} epochs on {len(train)} images", file=sys.stderr)
        spec = RunSpec.from_flat(
            {"model": "vae", "data": "mnist", "binarize": "dynamic", "objective": objective}
            | {"particles": k, "epochs": epochs, "seed": 0, "device": device}
        )
        run = runs.train(
            spec,
            out / label,
            resume=True,
            progress=False if quiet else None,
            verbose=not quiet,
            figures=False,
        )
        rows.append(_summary(run, label, test, scored, is_samples, quiet))
        histories[label] = run.history
        plots.reconstructions(run.model, run.guide, (test.x,), out / label / "reconstructions.png")
        plots.prior_samples(run.model, out / label / "samples.png")
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    plots.learning_curves(histories, out / "learning_curves.png", "VAE 784-200-200-50 on MNIST")
    print(
        f"\nVAE 784-200-200-50, dynamically binarised MNIST, batch 20, Adam 1e-3, seed 0.\n"
        f"test ELBO on all {len(test)} test images (1 draw each); IS-{is_samples} on the first "
        f"{len(scored)}, its standard error over those images and the share of them whose "
        f"Pareto k-hat is over the threshold ({psis.khat_threshold(is_samples):.2f} at "
        f"IS-{is_samples}; flagged over {psis.FLAG_SHARE:.0%}); nats per image.\n"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(
        f"\nfigures and runs in {out}/ (learning_curves.png, */reconstructions.png, */samples.png)"
    )
    return table
