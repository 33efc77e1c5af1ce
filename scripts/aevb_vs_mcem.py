"""AEVB against Monte Carlo EM on MNIST, after Kingma & Welling (2013), Fig. 3.

A VAE with 3 latent dimensions and one hidden layer of 100 units (their Fig. 3 setting) is
trained on the first N MNIST training images (N = 1000 and 60000; one fixed binarisation)
by four methods under the same wall-clock budget each:

    aevb              SVI with the analytic-KL ELBO (meanfield, estimator B), encoder learned
    mcem-hmc          Monte Carlo EM, E-step by Pyro's HMC (the minibatch is one joint chain)
    mcem-nuts         Monte Carlo EM, E-step by Pyro's NUTS (one joint chain)
    mcem-batched-hmc  Monte Carlo EM, E-step by aevb's batched HMC (one chain per datapoint)

MCEM: 10 leapfrog steps per E-step, step size tuned towards 90% acceptance, 5 Adam steps per
E-step (as Kingma & Welling describe). The budget is split into segments; after each one the
training is paused (evaluation time is not counted) and the marginal likelihood of 500
training and 500 test images is estimated by importance sampling with k draws. The proposal
is the method's own encoder for AEVB; for MCEM, which learns none, a Gaussian encoder fitted
with the decoder frozen, warm-started from segment to segment (``--proposal-steps`` Adam
steps each time). Kingma & Welling estimated it from HMC samples instead (their appendix D).

Then, on the AEVB-trained decoder (N=60000), each sampler draws z ~ p(z|x) for 20 test
images and the effective samples per second (per datapoint, minimum over the latent
dimensions, ``pyro.ops.stats.effective_sample_size``) are measured in the same run.

    python scripts/aevb_vs_mcem.py --out runs/aevb-vs-mcem          # ~20 min on 2 cores
    python scripts/aevb_vs_mcem.py --budget 600 --segments 8        # longer

writes results.csv (tidy: one row per N, method, segment and split), ess.csv and
aevb_vs_mcem.png.

References:
    D. P. Kingma, M. Welling (2013), Auto-Encoding Variational Bayes, arXiv:1312.6114, sec. 5.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from aevb import data, guides, inference, models  # noqa: E402
from aevb.inference.diagnostics import measure_ess  # noqa: E402
from aevb.inference.mcem import model_param_names  # noqa: E402

#: method -> how it trains: SVI objective or MCEM sampler
METHODS = {
    "aevb": {"objective": "meanfield"},
    "mcem-hmc": {"sampler": "hmc"},
    "mcem-nuts": {"sampler": "nuts"},
    "mcem-batched-hmc": {"sampler": "batched-hmc"},
}


def build_vae(seed: int):
    pyro.set_rng_seed(seed)
    model = models.build("vae", z_dim=3, hidden=(100,))
    return model, guides.default_for(model)


def train_until(method: str, model, guide, train, out: Path, seconds: float, args) -> pd.DataFrame:
    """Continue ``method``'s run in ``out`` until ``seconds`` of training in total."""
    common = dict(
        out=out,
        resume=True,
        progress=False,
        epochs=10**6,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_seconds=seconds,
    )
    spec = METHODS[method]
    if "objective" in spec:
        run = inference.fit(model, guide, train, spec["objective"], **common)
    else:
        sampler = spec["sampler"]
        run = inference.mcem_fit(model, None, train, sampler=sampler, proposal_epochs=0, **common)
    return run.history


def estimate(method: str, model, guide, proposal, train, evals, args) -> dict:
    """IS-k estimates of log p(x) on the evaluation sets, and which proposal was used."""
    q, label = guide, "own encoder"
    if method != "aevb":
        frozen = tuple(model_param_names(model, train))
        inference.fit(
            model,
            proposal,
            train,
            "trace",
            epochs=10**6,
            max_steps=args.proposal_steps,
            batch_size=100,
            lr=1e-3,
            seed=args.seed,
            freeze=frozen,
            reset=False,
            progress=False,
        )
        steps = args.proposal_steps
        q, label = proposal, f"encoder fitted with the decoder frozen (+{steps} steps)"
    out = {"proposal": label}
    for split, ds in evals.items():
        b = inference.bounds(model, q, ds, args.k, seed=args.seed)
        out[split] = (float(b.log_likelihood.mean()), float(b.elbo.mean()))
    return out


def compare(args) -> pd.DataFrame:
    full, test = data.load("mnist", "dynamic")
    rows = []
    for n in args.sizes:
        train = full.subset(n).fixed(args.seed)  # one fixed binarisation: stable posteriors
        evals = {"train": train.subset(500), "test": test.subset(500).fixed(args.seed)}
        for method in args.methods:
            out = args.out / f"N{n}-{method}"
            model, guide = build_vae(args.seed)
            proposal = guides.default_for(model)
            for seg in range(1, args.segments + 1):
                t0 = time.perf_counter()
                hist = train_until(
                    method, model, guide, train, out, args.budget * seg / args.segments, args
                )
                t1 = time.perf_counter()
                est = estimate(method, model, guide, proposal, train, evals, args)
                last = hist.iloc[-1]
                for split in evals:
                    ll, elbo = est[split]
                    rows.append(
                        {
                            "N": n,
                            "method": method,
                            "segment": seg,
                            "seconds": float(last["train_seconds"]),
                            "datapoints": int(last["datapoints"]),
                            "epochs": int(last["epoch"]),
                            "split": split,
                            "log_likelihood": ll,
                            "elbo": elbo,
                            "k": args.k,
                            "proposal": est["proposal"],
                            "accept_prob": float(last.get("accept_prob", float("nan"))),
                            "step_size": float(last.get("step_size", float("nan"))),
                            "eval_seconds": time.perf_counter() - t1,
                            "segment_seconds": t1 - t0,
                        }
                    )
                r = rows[-2:]
                print(
                    f"N={n:>5} {method:>16} seg {seg}: {r[0]['seconds']:6.1f} s, "
                    f"{r[0]['datapoints']:>9} pts, log p(x) train {r[0]['log_likelihood']:8.2f}"
                    f" test {r[1]['log_likelihood']:8.2f}",
                    flush=True,
                )
            if method == "aevb" and n == max(args.sizes):
                args.decoder = model
            pd.DataFrame(rows).to_csv(args.out / "results.csv", index=False)
    return pd.DataFrame(rows)


def ess_per_second(model, args) -> pd.DataFrame:
    """Effective samples per second of z | x for each sampler, on one decoder and batch."""
    _, test = data.load("mnist", "dynamic")
    x = test.subset(args.ess_batch).fixed(args.seed).x
    rows = []
    for name in ("hmc", "nuts", "batched-hmc"):
        rows.append(measure_ess(model, x, name, args.ess_warmup, args.ess_draws, args.seed))
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    base = frame.set_index("sampler")["ess_per_second_per_datapoint"]
    frame["ratio_to_pyro_hmc"] = frame["ess_per_second_per_datapoint"] / base["hmc"]
    return frame


def figure(results: pd.DataFrame, path: Path) -> None:
    long = pd.concat(
        [
            results.assign(x=results["datapoints"], axis="training samples evaluated"),
            results.assign(x=results["seconds"], axis="wall-clock seconds (training)"),
        ]
    )
    sns.set_theme(style="whitegrid")
    g = sns.relplot(
        data=long,
        x="x",
        y="log_likelihood",
        hue="method",
        style="split",
        row="N",
        col="axis",
        kind="line",
        marker="o",
        facet_kws={"sharex": False, "sharey": "row"},
        height=3.2,
        aspect=1.4,
    )
    for (n, axis), ax in g.axes_dict.items():
        if axis.startswith("training"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(axis)
        ax.set_title(f"N = {n}")
    g.set_ylabels("estimated log p(x) (nats)")
    g.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/aevb-vs-mcem"))
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 60000])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--budget", type=float, default=100.0, help="training seconds per run")
    p.add_argument("--segments", type=int, default=5, help="evaluation points per run")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=100, help="importance samples per datapoint")
    p.add_argument("--proposal-steps", type=int, default=200)
    p.add_argument("--ess-batch", type=int, default=20)
    p.add_argument("--ess-warmup", type=int, default=100)
    p.add_argument("--ess-draws", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.glob("N*/checkpoint.pt")):
        raise SystemExit(f"{args.out} holds runs already; choose another --out")
    args.decoder = None
    start = time.perf_counter()
    results = compare(args)
    figure(results, args.out / "aevb_vs_mcem.png")
    if args.decoder is not None:
        ess = ess_per_second(args.decoder, args)
        ess.to_csv(args.out / "ess.csv", index=False)
        print(ess.round(3).to_string(index=False))
    final = results.sort_values("segment").groupby(["N", "method", "split"]).last()
    print(final[["seconds", "datapoints", "log_likelihood"]].round(2).to_string())
    print(f"total {time.perf_counter() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
