"""How noisy is the encoder's gradient? A teaching figure for the gradient estimators.

For a fixed model p(x, z), guide q(z|x) and minibatch, each estimator's gradient with respect
to the guide's parameters phi is drawn R times with fresh randomness; we report

    total variance  sum_j Var[g_j]            and     SNR  |E[g]| / sqrt(total variance)

for
    score function  Trace_ELBO with z marked non-reparameterisable: f(z) grad log q(z|x)
                    (Williams 1992; no baseline)
    trace           SGVB estimator A: the reparameterised ELBO, every term sampled
    meanfield       SGVB estimator B: the KL term analytic (Kingma & Welling 2013)
    stl             trace without log q's score term (Roeder et al. 2017)
    iwae k          the k-sample importance-weighted bound (Burda et al. 2015)
    iwae-dreg k     the same bound, doubly reparameterised encoder gradient (Tucker et al. 2018)

on factor analysis (the true fa-synthetic model, the linear guide at its exact posterior
moved off the optimum) and on the VAE (784-200-200-50, after one epoch of trace training).
The score function's variance is orders of magnitude above the reparameterised ones. For
IWAE, Rainforth et al. (2018) show the encoder gradient's SNR falls like 1/sqrt(k) near an
optimum; off it, as here, the signal may still dominate (docs/concepts/estimators.rst shows what
this run measured).

    python scripts/gradient_variance.py --out runs/gradient-variance     # ~2 min on 2 cores

writes gradient_variance.csv and gradient_variance.png.

References:
    R. J. Williams (1992), Simple statistical gradient-following algorithms, Mach. Learn. 8.
    D. P. Kingma, M. Welling (2013), arXiv:1312.6114. Y. Burda et al. (2015), arXiv:1509.00519.
    T. Rainforth et al. (2018), Tighter Variational Bounds are Not Necessarily Better, ICML.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from pyro.poutine.messenger import Messenger  # noqa: E402

from aevb import data, guides, inference, models  # noqa: E402
from aevb.inference.objectives import make_objective  # noqa: E402

#: (label, objective, k, score function?)
ESTIMATORS = (
    ("score function", "trace", 1, True),
    ("trace (A)", "trace", 1, False),
    ("meanfield (B)", "meanfield", 1, False),
    ("stl", "stl", 1, False),
    ("iwae k=5", "iwae", 5, False),
    ("iwae k=50", "iwae", 50, False),
    ("iwae-dreg k=5", "iwae-dreg", 5, False),
    ("iwae-dreg k=50", "iwae-dreg", 50, False),
)


class ScoreFunction(Messenger):
    """Marks every latent sample site non-reparameterisable, so Pyro's ELBOs fall back to
    the score-function (REINFORCE) gradient for it."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"]:
            base = msg["fn"]
            while isinstance(base, torch.distributions.Independent):  # has_rsample is its base's
                base = base.base_dist
            base.has_rsample_(False)


def guide_gradients(model, guide, x, objective, k, score, prefix, repeats) -> torch.Tensor:
    """[repeats, P]: the guide-parameter gradients of ``repeats`` independent estimates."""
    elbo = make_objective(objective, k)
    q = ScoreFunction()(guide) if score else guide
    draws = []
    for _ in range(repeats):
        with poutine.trace(param_only=True) as capture:
            elbo.loss_and_grads(model, q, x)
        params = {n: s["value"].unconstrained() for n, s in capture.trace.nodes.items()}
        ours = sorted(n for n in params if n.startswith(prefix))
        grads = [params[n].grad.flatten() / len(x) for n in ours]
        draws.append(torch.cat(grads).clone())
        for p in params.values():
            p.grad = None
    return torch.stack(draws)


def study(name, model, guide, x, prefix, repeats) -> list[dict]:
    rows = []
    for label, objective, k, score in ESTIMATORS:
        pyro.set_rng_seed(0)
        g = guide_gradients(model, guide, x, objective, k, score, prefix, repeats)
        var = float(g.var(0).sum())
        rows.append(
            {
                "model": name,
                "estimator": label,
                "total_variance": var,
                "snr": float(g.mean(0).norm() / var**0.5),
                "repeats": repeats,
                "batch": len(x),
            }
        )
        print(rows[-1], flush=True)
    return rows


def fa_setup():
    truth = data.fa_truth()
    _, test = data.load("fa-synthetic")
    guide = guides.default_for(truth)
    V, L = truth.exact_posterior_parameters()
    with torch.no_grad():  # off the optimum, where gradients are not zero in expectation
        guide.set_parameters(V.detach() + 0.3, L.detach() * 1.5)
    return truth, guide, test.x[:100]


def vae_setup(seed: int):
    train, test = data.load("mnist", "dynamic")
    pyro.set_rng_seed(seed)
    model = models.build("vae")
    guide = guides.default_for(model)
    inference.fit(model, guide, train, "trace", epochs=1, batch_size=100, seed=seed, progress=False)
    return model, guide, test.fixed(seed).x[:100]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gradient-variance"))
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = study("fa", *fa_setup(), "encoder", args.repeats)
    rows += study("vae", *vae_setup(args.seed), "encoder", args.repeats)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "gradient_variance.csv", index=False)
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (metric, title) in zip(
        axes, (("total_variance", "total variance of grad_phi"), ("snr", "signal-to-noise ratio"))
    ):
        sns.barplot(data=frame, x="estimator", y=metric, hue="model", ax=ax)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(args.out / "gradient_variance.png", dpi=110)
    print(frame.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
