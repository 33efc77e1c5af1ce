# %% [markdown]
# # Solutions: factor analysis
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. The gap is a KL

# %%
from torch.distributions import kl_divergence

x = test.x.double()
m = model.double()
g = guide.double()
with torch.no_grad():
    gap = m.log_evidence(x) - m.exact_elbo(x, x @ g.V.T, g.scale_tril)
    kl = kl_divergence(g.posterior(x), m.exact_posterior(x))
print(f"mean gap {gap.mean():.6f}, mean KL {kl.mean():.6f} nats")
assert torch.allclose(gap, kl, atol=1e-9)
assert (gap >= 0).all()

# %% [markdown]
# ## 2. Estimator A is unbiased

# %%
x20 = x[:20]
with torch.no_grad():
    torch.manual_seed(0)
    w = inference.log_weights(m, g, (x20,), num_samples=4000)  # [4000, 20]
    closed = m.exact_elbo(x20, x20 @ g.V.T, g.scale_tril)
se = w.std(0) / 4000**0.5
z = (w.mean(0) - closed) / se
print("largest |z| over 20 points:", float(z.abs().max()))
assert (z.abs() < 5).all()

# %% [markdown]
# ## 3. The perfect proposal

# %%
V, L = m.exact_posterior_parameters()
g.set_parameters(V.detach(), L.detach())
with torch.no_grad():
    w = inference.log_weights(m, g, (x[:5],), num_samples=1000)
    evidence = m.log_evidence(x[:5])
print("spread of the log weights per point:", w.std(0).numpy())
assert (w.std(0) < 1e-8).all()
assert torch.allclose(w.mean(0), evidence, atol=1e-9)
