# %% [markdown]
# # Solutions: MCMC inside the variational family
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. The AIS weight at the exact posterior
#
# With q the exact posterior, log p(x, z) - log q(z|x) = log p(x) for every z, so every AIS
# increment is (beta_k - beta_{k-1}) log p(x) wherever the chain is, and they sum to log p(x).

# %%
guide.set_parameters(V, L)
elbo = inference.make_objective(
    "a-mcvae", 1, None, 1, {"steps": 3, "step_size": 0.5, "adapt_gain": 0.0}
)
draws = torch.tensor([-elbo.loss(model, guide, x) / len(x) for _ in range(10)])
print(f"largest |bound - exact| {(draws - exact).abs().max():.2e}")
assert (draws - exact).abs().max() < 1e-8

# %% [markdown]
# ## 2. What the decisions cost
#
# The KL of any law over the 2^K decision paths to the uniform law is between 0 and K log 2.

# %%
for K in (1, 2, 3):
    mean, se = bound("metflow", {"steps": K})
    gap = exact - mean
    print(f"K = {K}: gap {gap:.3f} (se {se:.3f}); K log 2 = {K * math.log(2):.3f}")
    assert -3 * se <= gap <= K * math.log(2) + 3 * se
