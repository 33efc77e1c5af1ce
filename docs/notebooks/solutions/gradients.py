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
