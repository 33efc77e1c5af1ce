# %% [markdown]
# # Solutions: the Gaussian-mixture VAE
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. Cluster accuracy by hand

# %%
import numpy as np
from scipy.optimize import linear_sum_assignment

with torch.no_grad():
    clusters = guide.cluster_probs(test.x).argmax(-1).numpy()
labels = test.y.numpy()
counts = np.zeros((10, 10), dtype=int)
np.add.at(counts, (clusters, labels), 1)
rows, cols = linear_sum_assignment(-counts)  # maximise the matched counts
accuracy = counts[rows, cols].sum() / len(labels)
print(counts)
print(f"accuracy under the best matching: {accuracy:.3f}")
assert abs(accuracy - model.evaluation_metrics(guide, test)["cluster_accuracy"]) < 1e-12
assert accuracy > 0.1  # better than a constant cluster

# %% [markdown]
# ## 2. The sum over y, by hand

# %%
import math

x = test.x[:100]
K = 200
with torch.no_grad():
    torch.manual_seed(0)
    q_y = guide.cluster_probs(x)  # [100, 10]
    x_part = guide.z_in_x(x)
    terms, variances = [], []
    for c in range(10):
        y = torch.nn.functional.one_hot(torch.full((100,), c), 10).float()
        q_z = guide.z_posterior(x_part, y)
        z = q_z.sample((K,))  # [K, 100, L]
        inner = model.decode(z).log_prob(x) + model.z_prior(y).log_prob(z) - q_z.log_prob(z)
        terms.append(inner.mean(0) + math.log(1 / 10) - q_y[:, c].log())
        variances.append(inner.var(0) / K)
    terms, variances = torch.stack(terms, -1), torch.stack(variances, -1)  # [100, 10]
    by_hand = (q_y * terms).sum(-1)  # [100]
    by_hand_var = (q_y**2 * variances).sum(-1)
    w = inference.log_weights(model, guide, (x,), num_samples=2000)  # y sampled, [2000, 100]
sampled, sampled_var = w.mean(0), w.var(0) / 2000
diff = (by_hand.mean() - sampled.mean()).item()
se = ((by_hand_var.sum() + sampled_var.sum()) ** 0.5 / 100).item()
print(f"sum over y {by_hand.mean():.3f}, sampled y {sampled.mean():.3f}, "
      f"difference {diff:.3f} = {diff / se:.1f} standard errors")
assert abs(diff) < 5 * se
