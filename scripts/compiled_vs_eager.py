"""SVI steps per second of an objective's compiled form against its eager (Pyro) form.

    python scripts/compiled_vs_eager.py [--objective iwae] [--particles 5 50] [--batch 20 100]
    python scripts/compiled_vs_eager.py --model m2 --labels 3000 --objective semisupervised \
        --particles 1 --batch 100

The 784-200-200-50 VAE on MNIST (``--model m2``: Kingma et al.'s M2 with ``--labels`` of the
training labels kept), the package's own SVI step (``SVIAlgorithm``: the objective,
then one Adam step); for each (k, batch) the two forms are timed interleaved (eager, compiled,
eager, ...), three repetitions after 30 warm-up steps each, and the median of the per-repetition
ratio compiled / eager is printed. Both forms compute the same loss and gradients
(``tests/test_fast_paths.py``); this measures only their speed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

from aevb import data, guides, models
from aevb.inference.svi import FitConfig, SVIAlgorithm

WARMUP = 30


def images_per_second(
    train,
    objective: str,
    k: int,
    batch: int,
    jit: bool,
    steps: int,
    seed: int = 0,
    model_name: str = "vae",
) -> float:
    """Images/s of ``steps`` SVI steps after :data:`WARMUP` untimed ones."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = models.build(model_name)
    guide = guides.default_for(model)
    cfg = FitConfig(objective=objective, particles=k, jit=jit, batch_size=batch)
    step = SVIAlgorithm(model, guide, cfg)
    return timed_steps(step, train, batch, steps, seed, labels=model_name == "m2")


def timed_steps(
    step: SVIAlgorithm, train, batch: int, steps: int, seed: int, labels: bool, warmup=WARMUP
) -> float:
    """Images/s of ``step`` over ``steps`` shuffled minibatches after ``warmup`` untimed
    ones (the first minibatch prepares it)."""
    g = torch.Generator().manual_seed(seed)
    batches = list(train.batches(batch, shuffle=True, generator=g, indexed=True, labels=labels))
    step.prepare(train, batches[0][1])
    for index, args in batches[:warmup]:
        step.step(args, index)
    start = time.perf_counter()
    for index, args in batches[warmup : warmup + steps]:
        step.step(args, index)
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", default="iwae")
    p.add_argument("--particles", type=int, nargs="+", default=[5, 50])
    p.add_argument("--batch", type=int, nargs="+", default=[20, 100])
    p.add_argument(
        "--images", type=int, default=20000, help="images per form and repetition (fewer at k>5)"
    )
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--model", default="vae", choices=["vae", "m2"])
    p.add_argument("--labels", type=int, default=3000, help="m2: training labels kept")
    args = p.parse_args(argv)
    train, _ = data.load("mnist")
    if args.model == "m2":
        train = train.keep_labels(args.labels)
    for batch in args.batch:
        for k in args.particles:
            steps = max(10, args.images // (batch * max(1, k // 5)))
            ratios = []
            for rep in range(args.repetitions):
                kw = {"model_name": args.model}
                eager = images_per_second(train, args.objective, k, batch, False, steps, **kw)
                compiled = images_per_second(train, args.objective, k, batch, True, steps, **kw)
                ratios.append(compiled / eager)
                print(
                    f"batch {batch} k={k} rep {rep}: eager {eager:.0f} img/s, compiled "
                    f"{compiled:.0f} img/s, ratio {compiled / eager:.3f}",
                    flush=True,
                )
            print(f"batch {batch} k={k}: compiled / eager, median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
