# %% [markdown]
# # Solutions: Monte Carlo EM with HMC and NUTS
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. Within its Monte Carlo error

# %%
from pyro.ops.stats import effective_sample_size

ess = effective_sample_size(z[None], chain_dim=0, sample_dim=1)  # one chain, [2]
se = z.std(0) / ess.sqrt()
zscore = (z.mean(0) - exact.mean[0].detach()) / se
print(f"ESS {ess.numpy().round(0)} of 500 draws; (mean - exact) / se = {zscore.numpy().round(2)}")
assert (zscore.abs() < 5).all()

# %% [markdown]
# ## 2. Step size against acceptance

# %%
rates = {}
for eps in (0.05, 0.3, 1.0):
    torch.manual_seed(0)
    s = BatchedHMC().sample(latents, (x,), state.u, torch.tensor(eps), num_samples=50, adapt=False)
    rates[eps] = s.accept_prob.mean().item()
print({k: round(v, 3) for k, v in rates.items()})
assert rates[0.05] > rates[0.3] > rates[1.0]
