"""Four additions to aevb from a module of one's own, no edit to aevb: an inference method
(SVI with a KL warm-up), an objective (the Renyi bound at alpha = 1/2), a sampler (MALA) and an
estimator (the test ELBO). Importing this module registers them::

    aevb --module aevb_extras train vae --inference kl-warmup --warmup-epochs 5
    aevb --module aevb_extras train fa --data fa-synthetic --objective renyi-half
    aevb --module aevb_extras train fa --data fa-synthetic --inference mcem --sampler mala
    aevb --module aevb_extras evaluate runs/vae-kl-warmup5-trace1-seed0 --estimator elbo

and a grid names it under ``modules = ["aevb_extras"]``. The docs page "Adding a method"
walks through each part; ``tests/test_extensions.py`` runs exactly these commands.
"""

from dataclasses import dataclass
from typing import ClassVar

from pyro.infer import RenyiELBO
from pyro.poutine.messenger import Messenger

from aevb.inference import estimators, method, objectives, samplers
from aevb.inference.samplers import BatchedHMC
from aevb.inference.svi import SVI, SVIAlgorithm, SVIConfig
from aevb.settings import setting

# ----------------------------------------------------------------- 1. an inference method


@dataclass(frozen=True)
class WarmupConfig(SVIConfig):
    """SVI's settings, and the warm-up's length (one declaration: it becomes the spec key
    ``warmup_epochs``, the TOML key and ``aevb train --warmup-epochs``)."""

    warmup_epochs: int = setting(
        5,
        minimum=1,
        help="epochs over which the weight of the latent terms rises linearly to 1 "
        "(Bowman et al. 2016's KL annealing)",
    )


class LatentWeight(Messenger):
    """Scale the log-density of every latent sample site (model and guide) by ``beta``:
    the ELBO becomes E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


class WarmupAlgorithm(SVIAlgorithm):
    """SVI's step under the epoch's latent weight beta = min(1, epoch / warmup_epochs)."""

    beta = 1.0

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.beta = min(1.0, epoch / self.cfg.warmup_epochs)

    def step(self, args, index) -> float:
        with LatentWeight(self.beta):
            return super().step(args, index)

    def epoch_diagnostics(self) -> dict:
        return {**super().epoch_diagnostics(), "beta": self.beta}


class KLWarmup(SVI):
    """SVI with a KL warm-up (the test ELBO is scored at beta = 1, outside the step)."""

    name, title, config = "kl-warmup", "SVI with a KL warm-up", WarmupConfig

    def configure(self, model, settings: dict) -> WarmupConfig:
        # beta changes every epoch, so the objective is not compiled (a trace would fix it)
        return super().configure(model, {**settings, "jit": False})

    def algorithm(self, model, guide, cfg: WarmupConfig) -> WarmupAlgorithm:
        return WarmupAlgorithm(model, guide, cfg)

    def run_name(self, cfg: WarmupConfig) -> str:
        return f"kl-warmup{cfg.warmup_epochs}-{super().run_name(cfg)}"


method.register(KLWarmup())

# ----------------------------------------------------------------- 2. an objective

objectives.register(
    "renyi-half",
    objectives.Objective(
        make=lambda k, alpha, nesting: RenyiELBO(
            alpha=0.5, num_particles=k, max_plate_nesting=nesting
        ),
        needs_shared_plate=True,
        summary="the Renyi bound at alpha = 1/2 (Li & Turner 2016)",
        default_particles=5,
    ),
)

# ----------------------------------------------------------------- 3. a sampler


@dataclass
class MALA(BatchedHMC):
    """Metropolis-adjusted Langevin, one chain per datapoint: an HMC transition with one
    leapfrog step is exactly a MALA step (Neal 2011, sec. 5.5.2), tuned to 0.574, the
    optimal acceptance of Roberts & Rosenthal (1998)."""

    num_steps: int = 1
    target_accept_prob: float = 0.574
    name: ClassVar[str] = "mala"


samplers.register("mala", MALA)

# ----------------------------------------------------------------- 4. an estimator


class TestELBO:
    """The test ELBO with num_samples draws per datapoint: a lower bound on log p(x), what
    IS with the same draws improves on."""

    samples_help = "draws per datapoint of the ELBO"
    default_samples = 100

    def elbo_samples(self, num_samples: int) -> int:
        return num_samples

    def estimate(self, task, bounds):
        # per test point ([N]), so that aevb compare pairs it across runs; a float (the
        # mean) is accepted too, and comparisons with it are then unpaired
        return bounds.elbo, {"is_from_same_draws": float(bounds.log_likelihood.mean())}


estimators.register("elbo", TestELBO())
