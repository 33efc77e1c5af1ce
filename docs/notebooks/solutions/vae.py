# %% [markdown]
# # Solutions: the variational autoencoder
#
# Run after the notebook, in the same kernel (`make notebooks` writes the two together as
# `notebooks/solutions/vae.ipynb`). Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. The analytic KL

# %%
import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

x1 = test.x[:1]
with torch.no_grad():
    q = guide.posterior(x1)
    mu, sigma = q.mean, q.stddev
    by_hand = 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    by_torch = kl_divergence(q, prior)
print(f"KL by hand {by_hand.item():.4f}, by torch {by_torch.item():.4f} nats")
assert torch.allclose(by_hand, by_torch, rtol=1e-5)

# %% [markdown]
# ## 2. IS-K rises with K

# %%
with torch.no_grad():
    torch.manual_seed(1)
    w = inference.log_weights(model, guide, (test.x,), num_samples=1000)  # [1000, N]
is_k = {k: (torch.logsumexp(w[:k], 0) - math.log(k)).mean().item() for k in (1, 10, 100, 1000)}
print({k: round(v, 2) for k, v in is_k.items()})
assert abs(is_k[1] - w[0].mean().item()) < 1e-4  # K = 1 is one draw of the ELBO
# the expected IS-K increases with K; averaged over the test images, one draw does as well:
# each step is worth several nats here, the standard error a few tenths
assert is_k[1] < is_k[10] < is_k[100] < is_k[1000]

# %% [markdown]
# ## 3. Active units

# %%
means = inference.posterior_means(guide, test)  # [N, 20]
by_hand = int((means.var(0) > 0.01).sum())
print(f"{by_hand} of {means.shape[1]} units active")
assert by_hand == inference.active_units(guide, test)
assert 0 < by_hand <= means.shape[1]
