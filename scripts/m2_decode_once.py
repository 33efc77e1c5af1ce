"""M2's training speed with labelled points decoded once, against decoding them once per class.

    python scripts/m2_decode_once.py [--labels 100 3000 60000] [--eager] [--repetitions 3]

Under the semisupervised objective (enumeration over the C = 10 classes) M2 decodes each
unlabelled image once per class; a labelled image is decoded once
(:meth:`aevb.models.m2.M2.decode_labelled_once`). The reference here is the same model with
every image decoded once per class (``decode_given`` on the enumerated [z, y], as before the
change). For each number of kept labels (60,000: all of MNIST's training images; Kingma et
al.'s sizes, batch 100, Adam 1e-3) the two are timed interleaved, :data:`WARMUP` untimed steps
then ``--steps`` timed ones (``compiled_vs_eager.timed_steps``), and the median of the
per-repetition ratio of images/s is printed. The saving grows with the labelled share of a
batch: at most (C - 1) / C of the decoder's work on the labelled rows.
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import torch
from compiled_vs_eager import timed_steps  # scripts/ is on the path

from aevb import data, guides
from aevb.inference.svi import FitConfig, SVIAlgorithm
from aevb.models.m2 import M2

WARMUP = 20


class PerClassM2(M2):
    """M2 decoding every datapoint once per enumerated class (the reference)."""

    def decode_labelled_once(self, z, y1h, labelled, known):
        return self.decode_given(z, y1h)


def images_per_second(train, cls: type, jit: bool | None, steps: int, batch: int = 100) -> float:
    """Images/s of ``steps`` semisupervised SVI steps of ``cls`` after WARMUP untimed ones."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = cls(M2.config_class())
    guide = guides.default_for(model)
    cfg = FitConfig(objective="semisupervised", jit=jit, batch_size=batch, lr=1e-3)
    step = SVIAlgorithm(model, guide, cfg)
    rate = timed_steps(step, train, batch, steps, seed=0, labels=True, warmup=WARMUP)
    assert step.jit == (jit is None), "the objective's form is not the one asked for"
    return rate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, nargs="+", default=[100, 3000, 60000])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument(
        "--eager", action="store_true", help="the eager objective (default: as training, compiled)"
    )
    args = p.parse_args(argv)
    full, _ = data.load("mnist")
    jit = False if args.eager else None
    form = "eager" if args.eager else "compiled"
    print(f"torch threads: {torch.get_num_threads()}, objective: {form}")
    for n in args.labels:
        train = full if n >= len(full) else full.keep_labels(n)  # all: every label
        ratios = []
        for rep in range(args.repetitions):
            once = images_per_second(train, M2, jit, args.steps)
            per_class = images_per_second(train, PerClassM2, jit, args.steps)
            ratios.append(once / per_class)
            print(
                f"{n} labels, rep {rep}: decoded once {once:.0f} img/s, once per class "
                f"{per_class:.0f} img/s, ratio {once / per_class:.3f}",
                flush=True,
            )
        print(f"{n} labels: once / per class, median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
