"""Where IS evaluation's time goes (issue 37, item 4): the package's IS-k on 100 MNIST test
images against the decoder's matmul rate and the hand-written IS, with the time split by
operator from ``torch.profiler``.

    python scripts/is_profile.py [--k 1000] [--threads 1] [--reps 3] [--compiled-likelihood]

Prints the fraction of this machine's ``torch.mm`` rate (2048 x 2048, the same threads) that
the decoder's multiply-adds reach in the package's IS and in the hand-written one
(``torch_reference.importance_sampled_ll``), the hand-written / package seconds (medians over
interleaved repetitions), and the package's time by operator group, the rest (Python, Pyro's
tracing) being wall time no operator accounts for. Untrained weights: the cost does not
depend on them. ``--compiled-likelihood`` also times the likelihood fused by ``torch.compile``
on one chunk. Run it on a quiet machine; ``make bench`` gives the full 10k-image figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import decoder_flops_per_sample, matmul_gflops  # noqa: E402
from torch_reference import ReferenceVAE, importance_sampled_ll  # noqa: E402

from aevb import data, guides, models  # noqa: E402
from aevb.inference import evaluate as ev  # noqa: E402
from aevb.models.likelihoods import bernoulli_log_prob_sum  # noqa: E402

#: operator groups of the profile (the rest: "other operators")
GROUPS = {
    "matmul (addmm, mm)": ("aten::addmm", "aten::mm"),
    "tanh": ("aten::tanh", "aten::tanh_"),
    "likelihood contraction (bmm)": ("aten::bmm",),
    "likelihood elementwise": ("aten::abs", "aten::sigmoid_", "aten::prod", "aten::log_"),
    "sums and logs": ("aten::sum", "aten::log", "aten::logsumexp"),
    "sampling (normal_)": ("aten::normal_",),
    "copies and fills": ("aten::copy_", "aten::fill_"),
}


def contenders(k: int, threads: int):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = models.build("vae")
    guide = guides.default_for(model)
    x = data.load("mnist", "dynamic")[1].subset(100).fixed(0).x
    ref = ReferenceVAE()
    ref.encoder.load_state_dict(guide.net.state_dict())
    ref.decoder.load_state_dict(model.decoder.state_dict())
    chunk = max(1, min(k, ev.MAX_ELEMENTS // (x.shape[0] * 784)))
    package = lambda: ev.bounds(model, guide, x, k, batch_size=100).log_likelihood  # noqa: E731
    reference = lambda: importance_sampled_ll(ref, x, k, chunk)  # noqa: E731
    return model, package, reference


def shares(fn, wall: float) -> dict:
    """Seconds per operator group of one profiled call of ``fn``; what no operator accounts
    for is ``wall`` (the unprofiled call's median seconds) less their sum."""
    with profile() as prof:
        fn()
    found = {group: 0.0 for group in GROUPS}
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        total += seconds
        group = next((g for g, names in GROUPS.items() if event.key in names), None)
        if group is not None:
            found[group] += seconds
    found["other operators"] = total - sum(found.values())
    found["no operator (Python, tracing)"] = max(0.0, wall - total)
    return found


def compiled_likelihood(threads: int, reps: int = 20) -> None:
    """The lever this profile points at: the likelihood's passes over a chunk's [k, B, 784]
    logits (a contraction, |l|, its sum, sigmoid, products, logs) fused into one loop by
    ``torch.compile`` (Inductor, which needs a C compiler), timed against eager on one
    IS chunk, interleaved."""
    torch.set_num_threads(threads)
    chunk = ev.MAX_ELEMENTS // (100 * 784)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(chunk, 100, 784, generator=g)
    x = torch.bernoulli(torch.full((100, 784), 0.3), generator=g)
    t = time.perf_counter()
    fused = torch.compile(bernoulli_log_prob_sum, dynamic=False)
    diff = (fused(logits, x) - bernoulli_log_prob_sum(logits, x)).abs().max()
    print(f"likelihood on [{chunk}, 100, 784]: compiled in {time.perf_counter() - t:.1f} s")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(3):
        for name, fn in (("eager", bernoulli_log_prob_sum), ("compiled", fused)):
            t = time.perf_counter()
            for _ in range(reps):
                fn(logits, x)
            times[name].append((time.perf_counter() - t) / reps)
    eager, fast = (statistics.median(times[n]) for n in ("eager", "compiled"))
    print(f"  eager {eager * 1e3:.2f} ms, compiled {fast * 1e3:.2f} ms ({eager / fast:.2f}x);")
    print(f"  largest difference {float(diff):.2e} nats")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument(
        "--compiled-likelihood", action="store_true", help="also time the fused likelihood"
    )
    args = p.parse_args()
    model, package, reference = contenders(args.k, args.threads)
    package(), reference()  # warm-up
    times: dict[str, list[float]] = {"package": [], "reference": []}
    for _ in range(args.reps):
        for name, fn in (("package", package), ("reference", reference)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    peak = matmul_gflops()
    flops = decoder_flops_per_sample(model) * args.k * 100
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rate = flops / median / 1e9
        print(f"{name:9s}: {median:.3f} s, {rate / peak:.3f} of {peak:.0f} GFLOP/s")
    ratio = statistics.median(r / q for r, q in zip(times["reference"], times["package"]))
    print(f"hand-written / package seconds: {ratio:.3f}")
    wall = statistics.median(times["package"])
    found = shares(package, wall)
    for group, seconds in sorted(found.items(), key=lambda kv: -kv[1]):
        print(f"  {group:32s} {seconds / wall:6.1%}")
    if args.compiled_likelihood:
        compiled_likelihood(args.threads)


if __name__ == "__main__":
    main()
