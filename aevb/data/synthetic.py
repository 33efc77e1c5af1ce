"""Synthetic data from known models, kept with the generating model so that estimates can be
compared with the truth.

``fa-synthetic``: a ground-truth factor-analysis model with D=3, L=2 (the aevb-tutorial's
sec. 5.2 setting), W and the pre-softplus noise scales drawn from N(0, 1) with a fixed seed,
generating 1000 training and 1000 test points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aevb.data.dataset import Dataset

#: Seed of the ground-truth FA model and of its samples. Deliberately not a small integer:
#: a model initialised with ``seed=0`` must not start at the truth by coincidence.
FA_SEED = 20_220_816


def fa_truth(seed: int = FA_SEED):
    """The generating FA model of ``fa-synthetic`` (an :class:`aevb.models.FactorAnalysis`)."""
    from aevb.models.fa import FactorAnalysis

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 2, generator=g, device="cpu")
    sigma = F.softplus(torch.randn(3, generator=g, device="cpu"))
    return FactorAnalysis().set_parameters(W, sigma)


def fa_synthetic(
    binarize: str = "none", n_train: int = 1000, n_test: int = 1000, seed: int = FA_SEED
):
    """``(train, test)`` drawn from :func:`fa_truth`: x = W z + sigma * eps."""
    truth = fa_truth(seed)
    g = torch.Generator().manual_seed(seed + 1)
    n = n_train + n_test
    with torch.no_grad():
        z = torch.randn(n, truth.z_dim, generator=g, device="cpu")
        x = z @ truth.W.T + truth.sigma * torch.randn(n, truth.x_dim, generator=g, device="cpu")
    train = Dataset.from_arrays(x[:n_train], binarize=binarize, name="fa-synthetic-train")
    test = Dataset.from_arrays(x[n_train:], binarize=binarize, name="fa-synthetic-test")
    return train, test
