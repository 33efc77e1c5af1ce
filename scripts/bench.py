"""Benchmark: what writing a model as a Pyro program costs, measured as ratios in one run.

    python scripts/bench.py [--quick] [--json] [--out DIR]        (also: make bench)

This machine is shared and noisy, so every figure that is compared is measured in the same
run, after a warm-up, with the contenders interleaved (A B A B ...), and reported as the
median (and min) over repetitions. The parts:

1. **SVI throughput** (images/s) of the package's ``trace``, ``meanfield`` and ``iwae``
   (k = 5, 50) steps on the 784-200-200-50 VAE at batch 100 -- the real training loop
   (``inference.fit``: data shuffling, dynamic binarisation, Adam) -- against the same
   estimator, architecture, batch, data path and optimiser written by hand in PyTorch
   (``scripts/torch_reference.py``). ``svi_ratio_X`` = package / hand-written, median over
   interleaved repetitions of the per-repetition ratio. Also seconds per epoch of the CVAE,
   GMVAE (enum) and VRNN with their default recipes, extrapolated from timed steps.
2. **IS evaluation**: seconds for IS-5000 over the 10,000 MNIST test images (``--quick``: a
   slice, extrapolated and labelled so), run in a child process so that its peak resident
   memory is its own; the decoder's matmul GFLOP/s achieved against this machine's measured
   matmul GFLOP/s (a 2048 x 2048 ``torch.mm``).
3. **MCEM E-step**: effective samples of z per second per datapoint
   (:func:`aevb.inference.diagnostics.measure_ess`) for Pyro ``hmc``, Pyro ``nuts`` and
   ``batched-hmc`` on one decoder (the VAE after a short training) and one minibatch of
   test images. All three adapt a diagonal mass matrix in their warm-up; the ratio against
   Pyro's HMC with the identity mass matrix (Kingma & Welling's setting, the package's
   default before the benchmark existed) is reported beside it.
4. **AIS cost**: seconds per model evaluation of AIS over IS-500's on the same 100 points,
   for a user's own Pyro model and the MNIST VAE (``scripts/ais_cost.py``, which says what it
   counts as an evaluation), on the CPU.

``--json`` prints one object with ``svi_ratio_trace``, ``svi_ratio_meanfield``,
``svi_ratio_iwae5``, ``is5000_seconds``, ``is_gflops_fraction_of_peak``, ``is_peak_rss_mb``,
``ess_per_s_batched_over_pyro_hmc``, ``ais_cost_ratio_user``, ``ais_cost_ratio_mnist_vae``
and the raw figures behind them (docs/README.md, "make bench" describes every key).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ais_cost import parser as ais_cost_parser  # noqa: E402
from ais_cost import run as ais_cost_run  # noqa: E402
from model_references import ReferenceGMVAE, ReferenceVRNN  # noqa: E402
from model_references import seconds_per_step as model_seconds_per_step  # noqa: E402
from torch_reference import ReferenceVAE, importance_sampled_ll, train_steps  # noqa: E402
from user_vae import UserVAE  # noqa: E402

from aevb import data, devices, guides, inference, models, runs  # noqa: E402
from aevb.inference import evaluate as ev  # noqa: E402
from aevb.inference import psis  # noqa: E402
from aevb.inference.diagnostics import measure_ess  # noqa: E402
from aevb.models.base import recipe  # noqa: E402
from aevb.spec import RunSpec  # noqa: E402

BATCH = 100


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- SVI


#: where the benchmark runs (``--device``)
DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the GPU's queued work before reading a clock."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def reference_rate(images: torch.Tensor, objective: str, k: int, steps: int, seed: int) -> float:
    """Images/s of the hand-written step (10 untimed warm-up steps first)."""
    torch.manual_seed(seed)
    model = ReferenceVAE().to(DEVICE)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
    g = torch.Generator().manual_seed(seed)
    train_steps(model, optim, images, objective, k, BATCH, 10, g, DEVICE)
    sync()
    t0 = time.perf_counter()
    train_steps(model, optim, images, objective, k, BATCH, steps, g, DEVICE)
    sync()
    return steps * BATCH / (time.perf_counter() - t0)


def package_rate(train, model_name: str, objective: str, k: int, steps: int, seed: int, **kw):
    """Steady-state images/s (or s/step) of ``inference.fit``'s own loop: steps are
    timestamped by the loop's callback and the first 10 (compilation, warm-up) dropped."""
    model = kw.pop("model", None) or models.build(model_name, **kw.pop("model_kw", {}))
    guide = kw.pop("guide", None) or guides.default_for(model)
    stamps: list[float] = []
    batch = kw.pop("batch_size", BATCH)
    inference.fit(
        model,
        guide,
        train,
        objective,
        particles=k,
        epochs=10**6,
        max_steps=steps + 10,
        batch_size=batch,
        seed=seed,
        progress=False,
        callback=lambda e, s, loss: stamps.append(time.perf_counter()),
        device=str(DEVICE),
        **kw,
    )
    seconds_per_step = (stamps[-1] - stamps[9]) / (len(stamps) - 10)
    return batch / seconds_per_step, seconds_per_step


def bench_svi(train, reps: int, steps: int) -> dict:
    out: dict = {}
    images = train.x
    for name, objective, k in (
        ("trace", "trace", 1),
        ("meanfield", "meanfield", 1),
        ("iwae5", "iwae", 5),
        ("iwae50", "iwae", 50),
    ):
        n = max(20, steps // max(1, k // 5))  # fewer steps where a step is k times dearer
        ref, pkg, ratios = [], [], []
        for rep in range(reps):
            r = reference_rate(images, objective, k, n, seed=rep)
            p, _ = package_rate(train, "vae", objective, k, n, seed=rep)
            ref.append(r)
            pkg.append(p)
            ratios.append(p / r)
            log(f"svi {name:9s} rep {rep}: hand-written {r:8.0f} img/s, package {p:8.0f} img/s")
        out[f"svi_ratio_{name}"] = statistics.median(ratios)
        out[f"svi_ratio_{name}_min"] = min(ratios)
        out[f"svi_{name}_images_per_s_package"] = statistics.median(pkg)
        out[f"svi_{name}_images_per_s_reference"] = statistics.median(ref)
        out[f"svi_{name}_steps_timed"] = n
        log(f"svi {name}: ratio median {out[f'svi_ratio_{name}']:.3f} (min {min(ratios):.3f})")
    out.update(bench_user_model(train, reps, steps))
    return out


def bench_user_model(train, reps: int, steps: int) -> dict:
    """A user's own VAE (``scripts/user_vae.py``, Pyro's example's shape, the reference's
    architecture) through ``inference.fit`` under ``trace``: probed and compiled (the
    default) and eager (``jit=False``), each against the hand-written step, interleaved."""
    ratios: dict[str, list[float]] = {"probed": [], "eager": []}
    for rep in range(reps):
        r = reference_rate(train.x, "trace", 1, steps, seed=rep)
        for label, jit in (("probed", None), ("eager", False)):
            user = UserVAE().to(DEVICE)
            p, _ = package_rate(
                train, "user", "trace", 1, steps, rep, model=user.model, guide=user.guide, jit=jit
            )
            ratios[label].append(p / r)
        log(
            f"svi user-vae rep {rep}: probed {ratios['probed'][-1]:.3f}, eager "
            f"{ratios['eager'][-1]:.3f} of hand-written"
        )
    return {
        "svi_ratio_user_vae": statistics.median(ratios["probed"]),
        "svi_ratio_user_vae_eager": statistics.median(ratios["eager"]),
    }


#: the hand-written yardsticks of the other models (``scripts/model_references.py``)
MODEL_REFERENCES = {"gmvae": ReferenceGMVAE, "vrnn": ReferenceVRNN}


def package_seconds_per_step(name: str, steps: int) -> tuple[float, int, str, int]:
    """Seconds per step of model ``name`` under its CLI defaults (``inference.fit``'s own
    loop, the first 5 steps dropped); also its batch size, objective and training set size."""
    spec = RunSpec.from_flat({"model": name, "device": str(DEVICE)})
    resolved = runs.resolve(spec)
    train, model, guide = resolved.train, resolved.model, resolved.guide
    objective = runs.resolved_config(spec, model).objective
    settings = recipe(model, runs.fit_settings(spec))
    batch = settings.get("batch_size", 20)
    stamps: list[float] = []
    inference.fit(
        model,
        guide,
        train,
        objective,
        epochs=1,
        max_steps=steps + 5,
        batch_size=batch,
        lr=settings.get("lr", 1e-3),
        progress=False,
        callback=lambda e, s, loss: stamps.append(time.perf_counter()),
    )
    return (stamps[-1] - stamps[4]) / (len(stamps) - 5), batch, objective, len(train)


def bench_models(steps: int, reps: int) -> dict:
    """Seconds per epoch of the other models under their CLI defaults (extrapolated), and
    for the GMVAE and the VRNN the hand-written step's seconds over the package's (same
    architecture, estimator, batch and Adam), median over ``reps`` interleaved repetitions."""
    out: dict = {}
    images = data.load("mnist")[0].x
    for name in ("cvae", "gmvae", "vrnn"):
        t0 = time.perf_counter()
        ratios = []
        for rep in range(reps if name in MODEL_REFERENCES else 1):
            per_step, batch, objective, n = package_seconds_per_step(name, steps)
            if name in MODEL_REFERENCES:
                ref = model_seconds_per_step(
                    MODEL_REFERENCES[name]().to(DEVICE), images, batch, steps, 1e-3, rep
                )
                ratios.append(ref / per_step)
                log(f"{name} rep {rep}: package {per_step:.4f} s/step, hand-written {ref:.4f}")
        epoch = per_step * math.ceil(n / batch)
        out[f"{name}_seconds_per_epoch_extrapolated"] = epoch
        out[f"{name}_batch_size"] = batch
        if ratios:
            out[f"{name}_ratio_vs_reference"] = statistics.median(ratios)
        log(
            f"{name} ({objective}, batch {batch}): {epoch:.1f} s/epoch ({steps} steps timed, "
            f"{time.perf_counter() - t0:.0f} s)"
            + (f", hand-written / package {statistics.median(ratios):.3f}" if ratios else "")
        )
    return out


# ------------------------------------------------------------------------------ IS evaluation


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """This device's fp32 matmul rate: best of ``reps`` n x n x n products."""
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def decoder_flops_per_sample(model) -> int:
    """Multiply-adds x 2 of the decoder's linear layers for one z."""
    return sum(
        2 * m.in_features * m.out_features
        for m in model.decoder.modules()
        if isinstance(m, torch.nn.Linear)
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` of its own address space. (Linux keeps
    ``ru_maxrss`` across ``execve``, so a child started from a big parent reports the
    parent's size: 1.5 GB where ``VmHWM`` gives 0.85 GB.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def is_child(args) -> None:
    """Run IS-k on ``--is-images`` test images with the saved model; print one JSON line."""
    torch.set_num_threads(args.threads)
    _, test = data.load("mnist", "dynamic")
    device = torch.device(args.device)
    model = models.build("vae")
    model.load_state_dict(torch.load(args.model_state, map_location="cpu"))
    guide = guides.default_for(model)
    guide.load_state_dict(torch.load(args.guide_state, map_location="cpu"))
    model.to(device), guide.to(device)
    x = test.subset(args.is_images).fixed(0).x
    # slices of 200 images, each timed: the wall total, and the median slice x slices, which
    # a passing burst of load on this shared machine does not move
    slices, lls = [], []
    t0 = time.perf_counter()
    for start in range(0, len(x), 200):
        t = time.perf_counter()
        b = ev.bounds(model, guide, x[start : start + 200], args.is_k, batch_size=100)
        slices.append(time.perf_counter() - t)
        lls.append(b.log_likelihood)
    seconds = time.perf_counter() - t0
    result = {
        "seconds": seconds,
        "diagnostics_seconds": diagnostics_seconds(args.is_k, len(x)),
        "seconds_median_slice": statistics.median(slices) * len(slices),
        "peak_rss_mb": peak_rss_mb(),
        "log_likelihood": float(torch.cat(lls).mean()),
    }
    result.update(is_against_reference(model, guide, x[:100].to(device), args.is_k, args.reps))
    print(json.dumps(result))


def diagnostics_seconds(k: int, images: int, batch: int = 100) -> float:
    """Seconds of the trust diagnostics (Pareto k-hat, IS ESS, Monte Carlo variance,
    :mod:`aevb.inference.psis`) that ``bounds`` computes on each batch's [k, 100] log weights,
    for ``images`` images: on log weights of the same shape whose tails ArviZ fits as usual."""
    w = torch.randn(k, batch, generator=torch.Generator().manual_seed(0)) * 3
    t = time.perf_counter()
    for _ in range(max(1, images // batch)):
        psis.pareto_khat(w), psis.importance_ess(w), psis.log_mean_variance(w)
    return time.perf_counter() - t


def is_against_reference(model, guide, x: torch.Tensor, k: int, reps: int | None) -> dict:
    """The package's IS-k against the same IS written by hand (``torch_reference``), on the
    same weights, images and chunk size, interleaved: ``is_ratio_vs_reference`` = reference
    seconds / package seconds (>= 1: the package is as fast), median over repetitions, for the
    reference with the package's product-form likelihood and with PyTorch's
    ``binary_cross_entropy_with_logits`` (``..._bce``)."""
    ref = ReferenceVAE().to(x.device)
    ref.encoder.load_state_dict(guide.net.state_dict())
    ref.decoder.load_state_dict(model.decoder.state_dict())
    chunk = max(1, min(k, devices.chunk_elements(x.device, ev.MAX_ELEMENTS) // (x.shape[0] * 784)))

    def timed(fn) -> tuple[float, torch.Tensor]:
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    contenders = {
        "package": lambda: ev.bounds(model, guide, x, k, batch_size=x.shape[0]).log_likelihood,
        "reference": lambda: importance_sampled_ll(ref, x, k, chunk, product_form=True),
        "reference_bce": lambda: importance_sampled_ll(ref, x, k, chunk, product_form=False),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    values = {}
    for _ in range(reps or 3):
        for name, fn in contenders.items():
            seconds, values[name] = timed(fn)
            times[name].append(seconds)
    ratio = {
        name: statistics.median(r / p for r, p in zip(times[name], times["package"]))
        for name in ("reference", "reference_bce")
    }
    return {
        "ratio_vs_reference": ratio["reference"],
        "ratio_vs_reference_bce": ratio["reference_bce"],
        "reference_minus_package_ll": float(
            (values["reference"].cpu() - values["package"].cpu()).mean()
        ),
    }


def bench_is(args, model, guide, workdir: Path) -> dict:
    torch.save(model.state_dict(), workdir / "model.pt")
    torch.save(guide.state_dict(), workdir / "guide.pt")
    images = 200 if args.quick else 10_000
    cmd = [
        sys.executable,
        __file__,
        "--part",
        "is-child",
        "--is-images",
        str(images),
        "--is-k",
        "5000",
        "--threads",
        str(args.threads),
        "--model-state",
        str(workdir / "model.pt"),
        "--guide-state",
        str(workdir / "guide.pt"),
        "--device",
        str(DEVICE),
    ]
    log(f"IS-5000 on {images} test images (child process) ...")
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    seconds = res["seconds"] * 10_000 / images
    robust = res["seconds_median_slice"] * 10_000 / images
    flops = decoder_flops_per_sample(model) * 5000 * images
    peak = matmul_gflops()
    achieved = flops / res["seconds"] / 1e9
    out = {
        "is5000_seconds": seconds,
        "is5000_seconds_median_slice": robust,
        "is5000_seconds_extrapolated": images < 10_000,
        "is5000_images_timed": images,
        "is_peak_rss_mb": res["peak_rss_mb"],
        "is_decoder_gflops": achieved,
        "machine_matmul_gflops": peak,
        "is_gflops_fraction_of_peak": achieved / peak,
        "is5000_log_likelihood": res["log_likelihood"],
        # the share of IS's time its k-hat, ESS and MCSE take (issue 35: within 5%)
        "is_diagnostics_fraction": res["diagnostics_seconds"] / res["seconds"],
        "is_ratio_vs_reference": res["ratio_vs_reference"],
        "is_ratio_vs_reference_bce": res["ratio_vs_reference_bce"],
        "is_reference_minus_package_ll": res["reference_minus_package_ll"],
    }
    label = " (extrapolated)" if images < 10_000 else ""
    log(
        f"IS-5000: {seconds:.0f} s for 10k images{label} (median 200-image slice x 50: "
        f"{robust:.0f} s), decoder {achieved:.0f} GFLOP/s of "
        f"{peak:.0f} measured, peak RSS {res['peak_rss_mb']:.0f} MB; k-hat, ESS and MCSE "
        f"{out['is_diagnostics_fraction']:.1%} of it"
    )
    return out


# ------------------------------------------------------------------------------------- MCEM


#: independent chains per datapoint for the vectorised sampler's headline row
ESS_CHAINS = 16


def bench_ess(model, args) -> dict:
    _, test = data.load("mnist", "dynamic")
    x = test.subset(args.ess_batch).fixed(0).x.to(DEVICE)
    warmup, draws = (60, 150) if args.quick else (100, 300)
    rows = {}
    for name, sampler, options, chains in (
        ("hmc", "hmc", {}, 1),
        ("nuts", "nuts", {}, 1),
        ("batched-hmc", "batched-hmc", {}, 1),
        (f"batched-hmc-{ESS_CHAINS}-chains", "batched-hmc", {}, ESS_CHAINS),
        ("hmc-identity-mass", "hmc", {"adapt_mass": False}, 1),
    ):
        r = measure_ess(model, x, sampler, warmup, draws, seed=0, options=options, chains=chains)
        rows[name] = r
        log(
            f"ess {name:24s}: {r['ess_per_second_per_datapoint']:7.2f} ESS/s per datapoint "
            f"(median ESS {r['ess_per_datapoint_median']:.0f} of {chains} x {draws}, "
            f"{r['seconds']:.1f} s, accept {r['accept_prob']:.2f}, step {r['step_size']:.3f}, "
            f"split R-hat max {r['rhat_max']:.3f})"
        )
    rate = {k: v["ess_per_second_per_datapoint"] for k, v in rows.items()}
    many = rows[f"batched-hmc-{ESS_CHAINS}-chains"]
    # the same comparison on a minibatch of 100 (the SVI part's batch): Pyro's joint chain
    # then spans 100 datapoints
    x100 = test.subset(100).fixed(0).x.to(DEVICE)
    big = {
        name: measure_ess(model, x100, sampler, warmup, draws, seed=0, chains=chains)
        for name, sampler, chains in (
            ("hmc", "hmc", 1),
            ("batched-hmc", "batched-hmc", 1),
            (f"batched-hmc-{ESS_CHAINS}-chains", "batched-hmc", ESS_CHAINS),
        )
    }
    big_rate = {k: v["ess_per_second_per_datapoint"] for k, v in big.items()}
    log("ess batch 100: " + ", ".join(f"{k} {v:.2f}" for k, v in big_rate.items()) + " ESS/s")
    two = pyro_two_processes(model, x, warmup, draws)
    return {
        "ess_per_s_batched_chains_over_pyro_hmc": many["ess_per_second_per_datapoint"]
        / rate["hmc"],
        "ess_per_s_batched_chains_over_pyro_hmc_batch100": big_rate[
            f"batched-hmc-{ESS_CHAINS}-chains"
        ]
        / big_rate["hmc"],
        "ess_chains": ESS_CHAINS,
        "ess_batched_chains_rhat_max": many["rhat_max"],
        "ess_batched_chains_rhat_median": many["rhat_median"],
        "ess_batched_chains_rhat_fraction_below_1_01": many["rhat_fraction_below_1_01"],
        "ess_batched_chains_rhat_max_batch100": big[f"batched-hmc-{ESS_CHAINS}-chains"]["rhat_max"],
        "ess_per_s_batched_over_pyro_hmc_batch100": big_rate["batched-hmc"] / big_rate["hmc"],
        "ess_per_s_per_datapoint_batch100": big_rate,
        "ess_per_s_batched_over_pyro_hmc": rate["batched-hmc"] / rate["hmc"],
        "ess_per_s_batched_over_pyro_hmc_identity_mass": rate["batched-hmc"]
        / rate["hmc-identity-mass"],
        "ess_per_s_per_datapoint": rate,
        "ess_per_datapoint_median": {k: v["ess_per_datapoint_median"] for k, v in rows.items()},
        "ess_pyro_hmc_two_processes_over_one": two,
        "ess_batch": args.ess_batch,
        "ess_warmup": warmup,
        "ess_draws": draws,
    }


def pyro_two_processes(model, x: torch.Tensor, warmup: int, draws: int) -> float:
    """Pyro's HMC with ``MCMC(num_chains=2)`` (two forked processes, one chain each) against
    its single chain, ESS per second of the whole run (warm-up included, as Pyro times its
    chains only together): is a second process Pyro's better configuration on these cores?"""
    from pyro.infer import HMC, MCMC
    from pyro.ops.stats import effective_sample_size

    from aevb.inference.samplers import Latents

    latents = Latents(model, (x,))

    def potential_fn(params):
        return -latents.log_joint(params["u"], (x,)).sum()

    rate = {}
    for chains in (1, 2):
        torch.manual_seed(0)
        u0 = torch.stack([latents.prior_draw((x,)) for _ in range(chains)])
        kernel = HMC(
            potential_fn=potential_fn,
            step_size=0.1,
            num_steps=10,
            adapt_mass_matrix=True,
            target_accept_prob=0.9,
        )
        mcmc = MCMC(
            kernel,
            num_samples=draws,
            warmup_steps=warmup,
            num_chains=chains,
            initial_params={"u": u0 if chains > 1 else u0[0]},
            disable_progbar=True,
            mp_context="fork" if chains > 1 else None,
        )
        t0 = time.perf_counter()
        mcmc.run()
        seconds = time.perf_counter() - t0
        samples = mcmc.get_samples(group_by_chain=True)["u"]  # [C, S, B, D]
        ess = effective_sample_size(samples, chain_dim=0, sample_dim=1).min(-1).values
        rate[chains] = float(ess.median()) / seconds
    log(f"Pyro hmc, num_chains=2 in two processes / one chain: {rate[2] / rate[1]:.2f}")
    return rate[2] / rate[1]


# -------------------------------------------------------------------------------- AIS cost


def bench_ais_cost(args) -> dict:
    """AIS's seconds per model evaluation over IS-500's (``scripts/ais_cost.py``, on the CPU)."""
    flags = ["--threads", str(args.threads), "--reps", "2" if args.quick else "3"]
    if args.quick:  # the user model's 100 temperatures take ~1 s; fewer would mostly time
        flags += ["--mnist-temperatures", "5"]  # AIS's fixed costs (tracing, the probe)
    r = ais_cost_run(ais_cost_parser().parse_args(flags))
    return {
        "ais_cost_ratio_user": r["user"]["ratio"],
        "ais_cost_ratio_mnist_vae": r["mnist_vae"]["ratio"],
        "ais_cost": r,
    }


# ------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small budgets (~2 min); IS extrapolated")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", type=Path, help="also write bench.json here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions (3; quick 2)")
    p.add_argument("--ess-batch", type=int, default=20, help="minibatch for the E-step")
    p.add_argument(
        "--part",
        default="all",
        choices=["all", "svi", "models", "is", "ess", "ais", "is-child"],
    )
    p.add_argument("--is-images", type=int, default=10_000, help=argparse.SUPPRESS)
    p.add_argument("--is-k", type=int, default=5000, help=argparse.SUPPRESS)
    p.add_argument("--model-state", help=argparse.SUPPRESS)
    p.add_argument("--guide-state", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = devices.resolve_device(args.device)
    if args.part == "is-child":
        return is_child(args)
    torch.set_num_threads(args.threads)
    reps = args.reps or (2 if args.quick else 3)
    steps = 60 if args.quick else 200
    started = time.perf_counter()
    result: dict = {
        "quick": args.quick,
        "threads": args.threads,
        "batch_size": BATCH,
        "torch": torch.__version__,
        "pyro": __import__("pyro").__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        **devices.describe(DEVICE),
    }
    train, _ = data.load("mnist", "dynamic")
    if args.part in ("all", "svi"):
        result.update(bench_svi(train, reps, steps))
    if args.part in ("all", "svi", "models"):
        result.update(bench_models(20 if args.quick else 60, reps))
    if args.part in ("all", "is", "ess"):
        # one decoder and encoder for the IS and E-step parts: the VAE after a short training
        model = models.build("vae")
        guide = guides.default_for(model)
        train_steps_n = 300 if args.quick else 1200
        inference.fit(
            model,
            guide,
            train,
            "trace",
            epochs=10**6,
            max_steps=train_steps_n,
            batch_size=BATCH,
            seed=0,
            progress=False,
            device=str(DEVICE),
        )
        result["decoder_training_steps"] = train_steps_n
        workdir = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / "aevb-bench"
        workdir.mkdir(parents=True, exist_ok=True)
        if args.part in ("all", "is"):
            result.update(bench_is(args, model, guide, workdir))
        if args.part in ("all", "ess"):
            model.eval()
            result.update(bench_ess(model, args))
    if args.part in ("all", "ais"):
        result.update(bench_ais_cost(args))
    result["bench_seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.json").write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(summary(result))


def summary(r: dict) -> str:
    lines = ["aevb benchmark" + (" (--quick)" if r["quick"] else "")]
    for name in ("trace", "meanfield", "iwae5", "iwae50"):
        if f"svi_ratio_{name}" in r:
            lines.append(
                f"  svi {name:9s}: package / hand-written {r[f'svi_ratio_{name}']:.3f} "
                f"({r[f'svi_{name}_images_per_s_package']:.0f} vs "
                f"{r[f'svi_{name}_images_per_s_reference']:.0f} images/s)"
            )
    if "svi_ratio_user_vae" in r:
        lines.append(
            f"  svi user-vae : package / hand-written {r['svi_ratio_user_vae']:.3f} "
            f"(eager: {r['svi_ratio_user_vae_eager']:.3f})"
        )
    for name in ("cvae", "gmvae", "vrnn"):
        if f"{name}_seconds_per_epoch_extrapolated" in r:
            ratio = r.get(f"{name}_ratio_vs_reference")
            lines.append(
                f"  {name:5s} seconds/epoch (extrapolated): "
                f"{r[f'{name}_seconds_per_epoch_extrapolated']:.1f}"
                + (f"; hand-written / package {ratio:.3f}" if ratio is not None else "")
            )
    if "is5000_seconds" in r:
        ex = " (extrapolated)" if r["is5000_seconds_extrapolated"] else ""
        lines.append(
            f"  IS-5000, 10k test images: {r['is5000_seconds']:.0f} s{ex}, "
            f"{r['is_gflops_fraction_of_peak']:.2f} of peak matmul GFLOP/s, "
            f"peak RSS {r['is_peak_rss_mb']:.0f} MB; hand-written IS / package "
            f"{r['is_ratio_vs_reference']:.2f} (with PyTorch's BCE: "
            f"{r['is_ratio_vs_reference_bce']:.2f})"
        )
    if "ess_per_s_batched_over_pyro_hmc" in r:
        lines.append(
            f"  E-step ESS/s, batched-hmc x {r['ess_chains']} chains / Pyro hmc: "
            f"{r['ess_per_s_batched_chains_over_pyro_hmc']:.1f} (batch 100: "
            f"{r['ess_per_s_batched_chains_over_pyro_hmc_batch100']:.1f}; split R-hat max "
            f"{r['ess_batched_chains_rhat_max']:.3f})"
        )
        lines.append(
            f"  E-step ESS/s, batched-hmc / Pyro hmc: "
            f"{r['ess_per_s_batched_over_pyro_hmc']:.1f} (identity-mass Pyro hmc: "
            f"{r['ess_per_s_batched_over_pyro_hmc_identity_mass']:.1f}; batch 100: "
            f"{r['ess_per_s_batched_over_pyro_hmc_batch100']:.1f})"
        )
    if "ais_cost_ratio_user" in r:
        lines.append(
            f"  AIS / IS-500 seconds per model evaluation: user model "
            f"{r['ais_cost_ratio_user']:.2f}, MNIST VAE {r['ais_cost_ratio_mnist_vae']:.2f} "
            "(scripts/ais_cost.py)"
        )
    lines.append(f"  ({r['bench_seconds']:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
