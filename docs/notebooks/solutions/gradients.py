# %% [markdown]
# # Solutions: gradient estimators and their variance
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. Zero at the optimum

# %%
model.double()
guide.double()
x = x.double()
V64, L64 = (t.detach() for t in model.exact_posterior_parameters())
guide.set_parameters(V64, L64)
stl = gradient_draws("stl", repeats=50)
trace = gradient_draws("trace", repeats=50)
print(f"largest |stl| entry {stl.abs().max():.1e}; largest |trace| entry {trace.abs().max():.1e}")
assert stl.abs().max() < 1e-10
assert trace.abs().max() > 1e-3

# %% [markdown]
# ## 2. Unbiased, off the optimum

# %%
guide.set_parameters(V64 + 0.5 * noise.double(), L64 * 1.5)
a, b = gradient_draws("trace", repeats=400), gradient_draws("stl", repeats=400)
se = (a.var(0) / 400 + b.var(0) / 400).sqrt()
moving = se > 0  # the upper triangle of L is not a parameter: its gradient is always zero
assert torch.equal(a[:, ~moving], b[:, ~moving])
z = (a.mean(0) - b.mean(0))[moving] / se[moving]
print(f"largest |difference| / se over {len(z)} coordinates: {z.abs().max():.2f}; "
      f"total variance trace {a.var(0).sum():.1f}, stl {b.var(0).sum():.1f}")
assert (z.abs() < 5).all()

# %% [markdown]
# ## 3. MCMC inside the bound
#
# Each Langevin step moves the draw towards the posterior, and the reverse kernel in the
# weight keeps the bound valid: E[w] = p(x) at every K, so the bound stays below log p(x)
# (Jensen) while it rises.

# %%
guide.set_parameters(V64 + 1.0 * noise.double(), L64 * 2.0)
exact = model.log_evidence(x).mean().item()
bounds = {}
for K in (0, 3, 15):
    options = {"steps": K, "step_size": 0.05, "adapt_gain": 0.0}
    elbo = inference.make_objective("l-mcvae", 1, None, 1, options)
    draws = torch.tensor([-elbo.loss(model, guide, x) / len(x) for _ in range(20)])
    bounds[K] = (draws.mean().item(), draws.std().item() / 20**0.5)
    print(f"K = {K:2d}: bound {bounds[K][0]:9.3f} (se {bounds[K][1]:.3f}); exact {exact:.3f}")
for a, b in ((0, 3), (3, 15)):
    assert bounds[b][0] - bounds[a][0] > 3 * (bounds[a][1] ** 2 + bounds[b][1] ** 2) ** 0.5
assert all(mean < exact + 3 * se for mean, se in bounds.values())
