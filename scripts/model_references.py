"""Yardsticks for ``scripts/bench.py``: the GMVAE and the VRNN written by hand in PyTorch.

No Pyro here. Each has the architecture of the package's default configuration (``gmvae``:
784-256-256 ReLU networks, z of 32 dims, 10 clusters; ``vrnn``: LSTM of 128 units, features
and hidden layers of 128, z_t of 16 dims, MNIST read as 28 rows of 28 pixels) and the
estimator the package trains it with by default, so the benchmark's ratio measures what
writing them as Pyro programs costs:

* GMVAE, ``enum`` (Pyro's ``TraceEnum_ELBO``): y summed out exactly, one draw of z per
  value of y (Kingma et al. 2014's M2 bound without labels; Yang 2022, sec. 5.5)::

      sum_y q(y|x) [log p(x|z_y) + log p(z_y|y) - log q(z_y|x,y) + log p(y) - log q(y|x)]

* VRNN, ``trace``: one draw of z_{1:T} from the guide, estimator A of Kingma & Welling
  summed over the steps (Chung et al. 2015)::

      sum_t log p(x_t | z_t, h_{t-1}) + log p(z_t | h_{t-1}) - log q(z_t | x_t, h_{t-1})

  The recurrence h_t is run once per step; the package's guide and model each run it (the
  model replays the guide's draws), the price of the model/guide split.

Both return the negative bound summed over the minibatch, as the package's SVI does.
``python scripts/model_references.py`` loads the package's weights into both and prints the
two bounds side by side (equal up to Monte Carlo noise).

References:
    Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised Learning with Deep Generative
    Models, arXiv:1406.5298.
    Chung, Kastner, Dinh, Goel, Courville & Bengio (2015), A Recurrent Latent Variable Model
    for Sequential Data, arXiv:1506.02216.
    Yang (2022), arXiv:2208.07818.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch_reference import mlp

LOG_2PI = math.log(2 * math.pi)


def _mlp(sizes: list[int]) -> nn.Sequential:
    return mlp(sizes, nn.ReLU)


def _gaussian(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loc, s = raw.chunk(2, -1)
    return loc, F.softplus(s) + 1e-4


def _log_normal(z, loc, scale) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def _bernoulli(logits, x) -> torch.Tensor:
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


class ReferenceGMVAE(nn.Module):
    """q(y|x) q(z|x,y), p(y) p(z|y) p(x|z); q(z|x,y)'s first layer is W_x x + W_y y, with
    W_x x computed once per x (as the package's mixture guide does)."""

    def __init__(self, x_dim=784, hidden=(256, 256), z_dim=32, clusters=10):
        super().__init__()
        self.clusters = clusters
        self.y_net = _mlp([x_dim, *hidden, clusters])
        self.z_in_x = nn.Linear(x_dim, hidden[0])
        self.z_in_y = nn.Linear(clusters, hidden[0], bias=False)
        self.z_net = _mlp([*hidden, 2 * z_dim])
        self.decoder = _mlp([z_dim, *reversed(hidden), x_dim])
        self.z_loc = nn.Parameter(0.1 * torch.randn(clusters, z_dim))
        self.z_raw = nn.Parameter(0.1 * torch.randn(clusters, z_dim))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        c = self.clusters
        log_qy = F.log_softmax(self.y_net(x), -1)  # [B, C]
        eye = torch.eye(c, dtype=x.dtype, device=x.device)
        # all C values of y at once: [C, B, ...]
        h = F.relu(self.z_in_x(x) + self.z_in_y(eye).unsqueeze(1))
        loc, scale = _gaussian(self.z_net(h))
        z = loc + scale * torch.randn_like(loc)
        p_loc = self.z_loc.unsqueeze(1)
        p_scale = F.softplus(self.z_raw).unsqueeze(1) + 1e-4
        log_ratio = _log_normal(z, p_loc, p_scale) - _log_normal(z, loc, scale)
        rec = _bernoulli(self.decoder(z), x.expand(c, *x.shape))
        qy = log_qy.exp().T  # [C, B]
        bound = (qy * (rec + log_ratio - log_qy.T - math.log(c))).sum(0)
        return -bound.sum()


class ReferenceVRNN(nn.Module):
    """The VRNN of :mod:`aevb.models.vrnn` with its recurrent guide, one recurrence."""

    def __init__(self, step_dim=28, z_dim=16, rnn_dim=128, hidden=128):
        super().__init__()
        self.step_dim, self.rnn_dim = step_dim, rnn_dim
        self.phi_x = nn.Linear(step_dim, hidden)
        self.phi_z = nn.Linear(z_dim, hidden)
        self.cell = nn.LSTMCell(2 * hidden, rnn_dim)
        self.prior_net = _mlp([rnn_dim, hidden, 2 * z_dim])
        self.emit_net = _mlp([hidden + rnn_dim, hidden, step_dim])
        self.post_net = _mlp([hidden + rnn_dim, hidden, 2 * z_dim])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        seqs = x.reshape(x.shape[0], -1, self.step_dim)
        h = x.new_zeros(x.shape[0], self.rnn_dim)
        c = torch.zeros_like(h)
        bound = x.new_zeros(x.shape[0])
        for t in range(seqs.shape[1]):
            fx = F.relu(self.phi_x(seqs[:, t]))
            q_loc, q_scale = _gaussian(self.post_net(torch.cat([fx, h], -1)))
            eps = torch.randn_like(q_loc)
            z = q_loc + q_scale * eps
            p_loc, p_scale = _gaussian(self.prior_net(h))
            fz = F.relu(self.phi_z(z))
            logits = self.emit_net(torch.cat([fz, h], -1))
            log_q = (-0.5 * eps**2 - q_scale.log() - 0.5 * LOG_2PI).sum(-1)
            bound = bound + _bernoulli(logits, seqs[:, t]) + _log_normal(z, p_loc, p_scale) - log_q
            h, c = self.cell(torch.cat([fx, fz], -1), (h, c))
        return -bound.sum()


def seconds_per_step(
    model: nn.Module, images: torch.Tensor, batch: int, steps: int, lr: float, seed: int
) -> float:
    """Median-free steady state: ``steps`` Adam steps on shuffled minibatches of
    ``images > 0.5`` (the threshold binarisation both models default to), after 5 untimed."""
    torch.manual_seed(seed)
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=g)
    stamps = []
    for i in range(steps + 5):
        idx = order[(i * batch) % len(order) :][:batch]
        x = (images[idx] > 0.5).to(images.dtype)
        loss = model.loss(x)
        optim.zero_grad(set_to_none=True)
        (loss / x.shape[0]).backward()
        optim.step()
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[4]) / steps


@torch.no_grad()
def check_against_the_package(n: int = 500, draws: int = 20) -> None:
    """Load the package's default GMVAE and VRNN weights into the references and print both
    bounds on ``n`` training images, averaged over ``draws`` evaluations: the yardsticks
    compute the package's estimator (they differ by Monte Carlo noise only)."""
    from aevb import data, guides, models
    from aevb.inference.objectives import OBJECTIVES, make_objective

    x = (data.load("mnist")[0].x[:n] > 0.5).float()
    gm = models.build("gmvae")
    gq = guides.default_for(gm)
    ref = ReferenceGMVAE()
    for name in ("y_net", "z_in_x", "z_in_y", "z_net"):
        getattr(ref, name).load_state_dict(getattr(gq, name).state_dict())
    ref.decoder.load_state_dict(gm.decoder.state_dict())
    ref.z_loc.copy_(gm.z_loc)
    ref.z_raw.copy_(gm.z_raw_scale)
    enum, guide = make_objective("enum", 1), OBJECTIVES["enum"].prepare_guide(gq)
    pkg = sum(enum.loss(gm, guide, x) for _ in range(draws)) / draws / n
    print(f"gmvae: package {pkg:.3f}, hand-written {_mean_loss(ref, x, draws):.3f} nats/image")
    vm = models.build("vrnn")
    vq = guides.default_for(vm)
    rv = ReferenceVRNN()
    rv.phi_x.load_state_dict(vm.phi_x[0].state_dict())
    rv.phi_z.load_state_dict(vm.phi_z[0].state_dict())
    for name in ("cell", "prior_net", "emit_net"):
        getattr(rv, name).load_state_dict(getattr(vm, name).state_dict())
    rv.post_net.load_state_dict(vq.net.state_dict())
    trace = make_objective("trace", 1)
    pkg = sum(trace.loss(vm, vq, x) for _ in range(draws)) / draws / n
    print(f"vrnn:  package {pkg:.3f}, hand-written {_mean_loss(rv, x, draws):.3f} nats/image")


def _mean_loss(model: nn.Module, x: torch.Tensor, draws: int) -> float:
    return sum(float(model.loss(x)) for _ in range(draws)) / draws / x.shape[0]


if __name__ == "__main__":
    check_against_the_package()
