"""A plain-PyTorch GMVAE with the aevb-tutorial's recipe, as a yardstick for aevb's gmvae.

Written from the equations (Yang 2022, sec. 5.5), not from the tutorial's code: y summed out
exactly, analytic KL(q(z|x,y) || p(z|y)), 784-512-512 ReLU networks, z of 64 dims,
p(z|y) = N(W y + b, softplus(W' y + b')^2), Glorot-normal weights and zero biases, Adam 1e-3,
minibatches of 100 in file order (no shuffling), MNIST x > 0.5. Prints per epoch the test
ELBO (without the constant log p(y), as the tutorial logs it) and the cluster accuracy.

    python scripts/gmvae_reference.py SEED [EPOCHS]   # 20 epochs by default, ~40 s each
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from aevb import data
from aevb.models.gmvae import cluster_accuracy

seed = int(sys.argv[1])
torch.manual_seed(seed)
train, test = data.load("mnist", "threshold")
xtr = (train.x > 0.5).float()
xte = (test.x > 0.5).float()
yte = test.y.numpy()
C, Z, H = 10, 64, 512


def mlp(i, o):
    return nn.Sequential(nn.Linear(i, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, o))


qy = mlp(784, C)
qz = mlp(784 + C, 2 * Z)
dec = mlp(Z, 784)
pmu = nn.Linear(C, Z)
psig = nn.Linear(C, Z)
mods = nn.ModuleList([qy, qz, dec, pmu, psig])
for m in mods.modules():
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)
opt = torch.optim.Adam(mods.parameters(), lr=1e-3)
eye = torch.eye(C)


def elbo(x):
    """sum_y q(y|x) [E_q(z|x,y) log p(x|z) - KL(q(z|x,y) || p(z|y))] + H(q(y|x)), batch mean;
    the C values of y are stacked class-major: row c*B + i pairs class c with x_i."""
    B = x.shape[0]
    logits = qy(x)
    q = F.softmax(logits, -1)
    logq = F.log_softmax(logits, -1)
    ys = eye.repeat_interleave(B, 0)
    xs = x.repeat(C, 1)
    h = qz(torch.cat([xs, ys], 1))
    mu, s = h.chunk(2, -1)
    post = Independent(Normal(mu, F.softplus(s)), 1)
    z = post.rsample()
    prior = Independent(Normal(pmu(ys), F.softplus(psig(ys))), 1)
    rec = -F.binary_cross_entropy_with_logits(dec(z), xs, reduction="none").sum(-1)
    other = (rec - kl_divergence(post, prior)).reshape(C, B).T
    return ((q * other).sum(1) - (q * logq).sum(1)).mean()


def acc():
    with torch.no_grad():
        return cluster_accuracy(qy(xte).argmax(-1).numpy(), yte)


epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
for ep in range(1, epochs + 1):
    for i in range(0, 60000, 100):
        loss = -elbo(xtr[i : i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        te = elbo(xte).item()
    print(ep, round(te, 2), acc(), flush=True)
