"""The yardstick for ``scripts/bench.py``: the VAE estimators written by hand in PyTorch.

No Pyro here. The same architecture as the package's ``vae`` (784-200-200-50, tanh, Burda et
al.), the same estimators, the same Adam settings and the same data path (dynamic
binarisation of a shuffled minibatch), so that the benchmark's ratio measures only what
writing the model as a Pyro program costs:

* ``trace``     (SGVB estimator A)  -[log p(x|z) + log p(z) - log q(z|x)],  z ~ q(z|x)
* ``meanfield`` (SGVB estimator B)  -[log p(x|z) - KL(q(z|x) || p(z))],    z ~ q(z|x)
* ``iwae``      (k particles)       -log (1/k) sum_i p(x, z_i) / q(z_i|x),  z_i ~ q(z|x)

each summed over the minibatch and divided by B, as the package's SVI does.

References:
    Kingma & Welling (2013), arXiv:1312.6114, sec. 2.3 (estimators A and B).
    Burda, Grosse & Salakhutdinov (2015), arXiv:1509.00519 (IWAE bound, architecture).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers of ``sizes``, ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class ReferenceVAE(nn.Module):
    """Encoder q(z|x) = N(mu(x), sigma(x)^2) and decoder p(x|z) = Bernoulli(sigmoid(f(z)))."""

    def __init__(self, x_dim: int = 784, hidden=(200, 200), z_dim: int = 50):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = mlp([x_dim, *hidden, 2 * z_dim])
        self.decoder = mlp([z_dim, *reversed(hidden), x_dim])

    def log_weights(
        self, x: torch.Tensor, k: int, analytic_kl: bool = False, product_form: bool = False
    ) -> torch.Tensor:
        """[k, B] log p(x, z) - log q(z|x) (or log p(x|z) - KL with ``analytic_kl``).

        ``product_form``: the Bernoulli log-likelihood as the package evaluates it (one
        contraction, one sigmoid pass, a log per 64 pixels: :func:`bernoulli_product_form`);
        otherwise PyTorch's ``binary_cross_entropy_with_logits``, as one would write it."""
        loc, raw = self.encoder(x).chunk(2, -1)
        scale = F.softplus(raw) + 1e-4
        eps = torch.randn((k, *loc.shape), dtype=x.dtype, device=x.device)
        z = loc + scale * eps
        if product_form:
            log_px = bernoulli_product_form(self.decoder(z), x)
        else:
            log_px = -F.binary_cross_entropy_with_logits(
                self.decoder(z), x.expand(k, *x.shape), reduction="none"
            ).sum(-1)
        if analytic_kl:
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum(-1) - scale.log().sum(-1)
            return log_px - kl
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + LOG_2PI).sum(-1) - scale.log().sum(-1)
        return log_px + log_pz - log_qz

    def loss(self, x: torch.Tensor, objective: str, k: int = 1) -> torch.Tensor:
        """The negative bound summed over the minibatch (the package's convention)."""
        if objective == "iwae":
            w = self.log_weights(x, k)
            return -(torch.logsumexp(w, 0) - math.log(k)).sum()
        w = self.log_weights(x, k, analytic_kl=objective == "meanfield")
        return -w.mean(0).sum()


def bernoulli_product_form(logits: torch.Tensor, x: torch.Tensor, group: int = 64) -> torch.Tensor:
    """sum_d log Bernoulli(x_d; sigmoid(l_d)) =
    (x - 1/2) . l - sum_d |l_d| / 2 + sum_groups log prod_d sigmoid(|l_d|)."""
    a = logits.abs()
    total = torch.einsum("...d,...d->...", logits, x - 0.5) - 0.5 * a.sum(-1)
    a.sigmoid_()
    main = a.shape[-1] - a.shape[-1] % group
    total = total + a[..., :main].unflatten(-1, (-1, group)).prod(-1).log().sum(-1)
    return total + a[..., main:].log().sum(-1)


@torch.no_grad()
def importance_sampled_ll(
    model: ReferenceVAE, x: torch.Tensor, k: int, chunk: int, product_form: bool = True
) -> torch.Tensor:
    """IS-k estimate of log p(x) per datapoint [B]: k draws from q(z|x) in chunks of
    ``chunk`` particles, merged by logsumexp (Burda et al. 2015, sec. 5)."""
    parts, done = [], 0
    while done < k:
        n = min(chunk, k - done)
        parts.append(torch.logsumexp(model.log_weights(x, n, product_form=product_form), 0))
        done += n
    return torch.logsumexp(torch.stack(parts), 0) - math.log(k)


def train_steps(
    model: ReferenceVAE,
    optim: torch.optim.Optimizer,
    images: torch.Tensor,
    objective: str,
    k: int,
    batch_size: int,
    steps: int,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> float:
    """``steps`` Adam steps on shuffled, dynamically binarised minibatches; returns the last
    loss per datapoint. On a ``device`` other than the CPU each minibatch is moved there and
    binarised there (as the package's loop does)."""
    order = torch.randperm(images.shape[0], generator=generator)
    loss = torch.zeros(())
    away = device is not None and device.type != "cpu"
    draws = generator
    if away:
        draws = torch.Generator(device=device).manual_seed(int(generator.initial_seed()))
    for i in range(steps):
        idx = order[(i * batch_size) % len(order) :][:batch_size]
        raw = images[idx].to(device, non_blocking=True) if away else images[idx]
        x = torch.bernoulli(raw, generator=draws)
        loss = model.loss(x, objective, k)
        optim.zero_grad(set_to_none=True)
        (loss / x.shape[0]).backward()
        optim.step()
    return float(loss) / batch_size
