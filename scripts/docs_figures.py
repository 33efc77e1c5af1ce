"""The documentation's regenerable figures, with small budgets (``make docs-figures``, ~5 min).

    python scripts/docs_figures.py [--out docs/_generated]

Runs the repository's own commands and copies their figures under ``--out`` with the names
the pages use:

* ``scripts/fa_experiments.py`` (AEVB as approximate EM, ELBO vs exact evidence):
  ``fa_exp1.png``, ``fa_exp2.png``;
* ``scripts/gradient_variance.py`` (estimators A, B, score function, STL, IWAE, IWAE-DReG):
  ``gradient_variance.png``;
* ``aevb train MODEL`` for ``vae`` (3 epochs), ``cvae`` (2), ``gmvae`` (2), ``vrnn`` (1
  epoch on 10,000 images) and ``m2`` (2 epochs, 600 labels): each run's
  ``learning_curve.png``, ``samples.png``, ``reconstructions.png`` and, where the model has
  them, ``class_samples.png``, ``cluster_embedding.png`` and ``analogies.png``, as
  ``MODEL_<figure>.png``.

Figures that take longer than ten minutes to make (MCEM vs AEVB, the estimator grid) are
committed under ``docs/figures/`` with the command that made them in their captions.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "vae": ["--epochs", "3", "--batch-size", "100"],
    "cvae": ["--epochs", "2", "--batch-size", "100"],
    "gmvae": ["--epochs", "2"],
    "vrnn": ["--epochs", "1", "--subset", "10000", "--test-subset", "1000"],
    "m2": ["--epochs", "2", "--labels", "600"],
}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("docs/_generated"))
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    start = time.perf_counter()
    here = Path(__file__).resolve().parent
    run([sys.executable, str(here / "fa_experiments.py"), "--out", str(runs / "fa")])
    for name in ("fa_exp1.png", "fa_exp2.png"):
        shutil.copy(runs / "fa" / name, out / name)
    run([sys.executable, str(here / "gradient_variance.py"), "--out", str(runs / "gv")])
    shutil.copy(runs / "gv" / "gradient_variance.png", out / "gradient_variance.png")
    aevb = str(Path(sys.executable).with_name("aevb"))
    for model, flags in RUNS.items():
        run_dir = runs / model
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (make docs-figures)
        run([aevb, "train", model, *flags, "--seed", "0", "--quiet", "--out", str(run_dir)])
        for png in run_dir.glob("*.png"):
            shutil.copy(png, out / f"{model}_{png.name}")
    print(f"figures in {out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
