"""``torch.compile`` as the successor of ``torch.jit.trace`` for the package's objectives?

    python scripts/torch_compile_check.py [--batch 100] [--steps 40] [--repetitions 3]

``torch.jit.trace``, which Pyro's JIT ELBOs (and :mod:`aevb.inference.objectives.jit`) build on, is
deprecated in torch 2.13. This measures, on the 784-200-200-50 VAE under ``trace`` at one
batch size, the loss-and-gradient step of three forms:

* ``eager``: Pyro's ``Trace_ELBO``;
* ``jit``: ``JitTrace_ELBO`` (the package's default for the VAE);
* ``compile``: ``torch.compile`` of ``Trace_ELBO().differentiable_loss`` (Inductor), then
  ``backward``.

It prints how many graphs Dynamo splits the Pyro program into (``torch._dynamo.explain``), the
first call's seconds (compilation), and each form's seconds per step over interleaved
repetitions, as ratios to eager (median). The package keeps whichever is faster and correct;
``jit`` stays the default while it is.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pyro
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from aevb import data, guides, models


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repetitions", type=int, default=3)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    train, _ = data.load("mnist")
    x = torch.bernoulli(train.x[: args.batch * (args.steps + 5)], generator=torch.Generator())
    batches = list(x.split(args.batch))
    model = models.build("vae")
    guide = guides.default_for(model)
    eager_elbo, jit_elbo = Trace_ELBO(), JitTrace_ELBO(ignore_jit_warnings=True)

    def eager(b):
        return eager_elbo.loss_and_grads(model, guide, b)

    def jit(b):
        return jit_elbo.loss_and_grads(model, guide, b)

    def loss(b):
        return eager_elbo.differentiable_loss(model, guide, b)

    compiled_loss = torch.compile(loss)

    def compiled(b):
        value = compiled_loss(b)
        value.backward()
        return float(value)

    with pyro.validation_enabled(False):
        eager(batches[0])
        explained = torch._dynamo.explain(loss)(batches[0])
        print(
            f"torch.compile: Dynamo split the Pyro program into {explained.graph_count} "
            f"graphs ({explained.graph_break_count} graph breaks)"
        )
        t0 = time.perf_counter()
        compiled(batches[0])
        print(f"torch.compile: first call (compilation) {time.perf_counter() - t0:.1f} s")
        forms = {"eager": eager, "jit": jit, "compile": compiled}
        seconds: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(args.repetitions):
            for name, step in forms.items():
                for b in batches[:5]:
                    step(b)
                t0 = time.perf_counter()
                for b in batches[5:]:
                    step(b)
                seconds[name].append((time.perf_counter() - t0) / args.steps)
                for q in list(model.parameters()) + list(guide.parameters()):
                    q.grad = None
    for name in ("jit", "compile"):
        ratio = statistics.median(e / s for e, s in zip(seconds["eager"], seconds[name]))
        print(
            f"{name:8s}: {statistics.median(seconds[name]) * 1e3:.2f} ms/step, "
            f"{ratio:.2f}x eager ({statistics.median(seconds['eager']) * 1e3:.2f} ms)"
        )


if __name__ == "__main__":
    main()
