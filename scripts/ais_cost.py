"""AIS's cost per model evaluation against IS-k's, on the same model and the same points.

    python scripts/ais_cost.py [--points 100] [--chains 16] [--temperatures 100] [--k 500]
                               [--mnist-temperatures 20] [--reps 2] [--skip-mnist] [--json]

Two models: (a) a user's own model written as plain Pyro functions (z ~ N(0, I_2) in the data
plate, x | z ~ N(MLP(z), 0.5^2 I_10), the MLP registered by ``pyro.module``; a linear
encoder as IS's guide) and (b) the MNIST VAE (``models.build("vae")``, 784-200-200-50, with
its default guide), each on the same ``--points`` datapoints (MNIST: the first test images,
binarised once). The two estimators are timed in one process, interleaved (IS, AIS, IS,
AIS, ...), and the best of ``--reps`` is kept: the machine is shared, so only the ratio
measured in one run means much.

What counts as one model evaluation (per datapoint):

* IS-k: k, one log p(x, z) - log q(z | x) per proposal.
* AIS: one log-density of the model *with its gradient* counts as one evaluation (a gradient
  costs about 2-3 forward passes; the brief asks to count it as one). The C chains make
  C x T x (L + 1) (T temperatures, L leapfrog steps per HMC transition, +1 for the
  weight's log-likelihood at each temperature); the pilot pass that fixes the step-size
  schedule adds T x (L + 1) + 9 (its one chain, and the 8 + 1 evaluations of the initial
  step-size search). This is a fixed count of what the algorithm needs, the same for any
  implementation; ``aevb.inference.estimators.ais`` reports the evaluations it actually made
  (``AISResult.evaluations``), printed beside it.

AIS's seconds include its fixed costs (finding the model's latents, tracing its
log-density, and for a user's model that declares nothing the probe of
:func:`aevb.inference.estimators.ais.use_compiled`), so few temperatures overstate its cost per
evaluation. IS-500 on the small model takes ~10 ms, so each repetition times it as the
median of enough calls to fill ~0.3 s. The figure of merit is
``ratio = (AIS seconds / AIS evaluations) / (IS seconds / IS evaluations)``;
``scripts/bench.py`` runs this script (``--part ais``, and in the default run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb import data, guides, models
from aevb.inference import evaluate as ev
from aevb.inference.estimators.ais import AISConfig, ais_dataset

#: the pilot's initial step-size search: 8 one-step leapfrogs and the starting potential
#: (:func:`aevb.inference.samplers.hmc.find_step_size`)
SEARCH_EVALUATIONS = 9


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class UserModel:
    """A user's own model and guide as plain Pyro functions, the networks in closures."""

    def __init__(self, x_dim: int = 10, z_dim: int = 2, hidden: int = 16, seed: int = 0):
        torch.manual_seed(seed)
        self.x_dim, self.z_dim = x_dim, z_dim
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))
        self.encoder = nn.Linear(x_dim, 2 * z_dim)

    def model(self, x):
        pyro.module("user_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("user_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    @torch.no_grad()
    def simulate(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=g)
        return self.decoder(z) + 0.5 * torch.randn(n, self.x_dim, generator=g)


def ais_evaluations(points: int, cfg: AISConfig, pilot: bool = True) -> int:
    """The evaluations AIS needs (see the module docstring), over ``points`` datapoints."""
    per_chain = cfg.num_temperatures * (cfg.num_steps + 1)
    n = cfg.num_chains * per_chain + ((per_chain + SEARCH_EVALUATIONS) if pilot else 0)
    return points * n


def measure(name: str, model, guide, points, k: int, cfg: AISConfig, reps: int) -> dict:
    """Best-of-``reps`` seconds of IS-k and AIS on ``points`` (interleaved), per evaluation."""
    n = len(points) if torch.is_tensor(points) else len(points.x)
    # warm-up: compile whatever compiles, fill caches (untimed)
    ev.bounds(model, guide, points, k, batch_size=n)
    t0 = time.perf_counter()
    ev.bounds(model, guide, points, k, batch_size=n)
    calls = max(1, min(100, math.ceil(0.3 / (time.perf_counter() - t0))))
    ais_dataset(model, points, AISConfig(num_temperatures=2, num_chains=cfg.num_chains), n)
    is_s, ais_s, result = [], [], None
    for rep in range(reps):
        times = []
        for i in range(calls):
            t0 = time.perf_counter()
            ev.bounds(model, guide, points, k, batch_size=n, seed=rep * calls + i)
            times.append(time.perf_counter() - t0)
        is_s.append(statistics.median(times))
        torch.manual_seed(rep)
        t0 = time.perf_counter()
        result = ais_dataset(model, points, cfg, batch_size=n)
        ais_s.append(time.perf_counter() - t0)
        log(
            f"{name}: rep {rep + 1}: IS-{k} {is_s[-1]:.4f} s (median of {calls}), "
            f"AIS {ais_s[-1]:.3f} s"
        )
    assert result is not None
    is_evals, ais_evals = n * k, ais_evaluations(n, cfg)
    is_per, ais_per = min(is_s) / is_evals, min(ais_s) / ais_evals
    out = {
        "model": name,
        "points": n,
        "is_k": k,
        "ais_chains": cfg.num_chains,
        "ais_temperatures": cfg.num_temperatures,
        "ais_leapfrog_steps": cfg.num_steps,
        "is_seconds": min(is_s),
        "is_calls_per_rep": calls,
        "ais_seconds": min(ais_s),
        "is_evaluations": is_evals,
        "ais_evaluations": ais_evals,
        "ais_evaluations_made": getattr(result, "evaluations", None),
        "is_us_per_evaluation": 1e6 * is_per,
        "ais_us_per_evaluation": 1e6 * ais_per,
        "ratio": ais_per / is_per,
        "ais_log_likelihood_mean": float(result.log_likelihood.mean()),
        "ais_accept_prob": result.accept_prob,
    }
    log(
        f"{name}: IS-{k} {out['is_seconds']:.3f} s / {is_evals} evaluations = "
        f"{out['is_us_per_evaluation']:.2f} us; AIS {cfg.num_chains} chains x "
        f"{cfg.num_temperatures} temperatures x ({cfg.num_steps} + 1) + pilot "
        f"{out['ais_seconds']:.3f} s / {ais_evals} evaluations = "
        f"{out['ais_us_per_evaluation']:.2f} us; ratio {out['ratio']:.2f}"
    )
    return out


def run(args) -> dict:
    """The figures for both models (a dict; see ``--json``)."""
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "reps": args.reps}
    pyro.clear_param_store()
    user = UserModel()
    x = user.simulate(args.points)
    cfg = AISConfig(num_temperatures=args.temperatures, num_chains=args.chains)
    result["user"] = measure("user", user.model, user.guide, x, args.k, cfg, args.reps)
    if not args.skip_mnist:
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = models.build("vae")
        guide = guides.default_for(vae)
        _, test = data.load("mnist", "dynamic")
        cfg = AISConfig(num_temperatures=args.mnist_temperatures, num_chains=args.chains)
        points = test.subset(args.points)
        result["mnist_vae"] = measure("mnist-vae", vae, guide, points, args.k, cfg, args.reps)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--temperatures", type=int, default=100, help="AIS on the user model")
    p.add_argument("--mnist-temperatures", type=int, default=20, help="AIS on the MNIST VAE")
    p.add_argument("--k", type=int, default=500, help="IS-k")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key in ("user", "mnist_vae"):
            if key in result:
                r = result[key]
                print(
                    f"{key:9s}: AIS / IS-{r['is_k']} seconds per model evaluation "
                    f"{r['ratio']:.2f} ({r['ais_us_per_evaluation']:.2f} vs "
                    f"{r['is_us_per_evaluation']:.2f} us)"
                )


if __name__ == "__main__":
    main()
