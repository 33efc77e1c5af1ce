# %% [markdown]
# # Solutions: the conditional VAE
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. The decoder reads the label

# %%
import torch.nn.functional as F

x, y = test.x[:100], test.y[:100]
with torch.no_grad():
    z_bar = guide.posterior(x, y).mean  # the guide one-hot encodes the label itself
    by_label = torch.stack(
        [
            model.decode_given(z_bar, F.one_hot(torch.full_like(y, c), 10).float()).log_prob(x)
            for c in range(10)
        ]
    )  # [10 labels, 100 images]
    own = model.decode_given(z_bar, F.one_hot(y, 10).float()).log_prob(x)
wrong = by_label.masked_fill(F.one_hot(y, 10).T.bool(), float("-inf")).max(0).values
print(f"mean log p(x | z, true y) {own.mean():.1f}, best wrong label {wrong.mean():.1f}")
assert own.mean() > wrong.mean()
assert (own > wrong).float().mean() > 0.5  # for most images, not only on average

# %% [markdown]
# ## 2. A generative classifier

# %%
scores = torch.stack(
    [
        inference.bounds(model, guide, (x, torch.full_like(y, c)), num_samples=50).log_likelihood
        for c in range(10)
    ]
)  # [10, 100]: IS-50 estimates of log p(x | y = c)
accuracy = (scores.argmax(0) == y).float().mean().item()
print(f"accuracy of argmax_y p(x | y): {accuracy:.0%} (chance 10%)")
assert accuracy > 0.5
