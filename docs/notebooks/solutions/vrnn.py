# %% [markdown]
# # Solutions: the variational RNN
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. The loss is the sum over steps

# %%
from pyro.infer import Trace_ELBO

x = test.x[:50]
with torch.no_grad():
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(3)
    g = poutine.trace(guide).get_trace(x)
    m = poutine.trace(poutine.replay(model, g)).get_trace(x)
m.compute_log_prob()
g.compute_log_prob()
by_hand = sum(
    (m.nodes[f"z_{t}"]["log_prob"] + m.nodes[f"x_{t}"]["log_prob"] - g.nodes[f"z_{t}"]["log_prob"])
    .sum()
    .item()
    for t in range(28)
)
print(f"Trace_ELBO loss {loss:.3f}, minus the sum over steps {-by_hand:.3f}")
assert abs(loss + by_hand) < 1e-3 * abs(loss)

# %% [markdown]
# ## 2. Masked steps contribute nothing

# %%
half = models.build("vrnn", z_dim=8, rnn_dim=64, hidden=64, seq_len=14)
half.load_state_dict(model.state_dict())
half_guide = guides.default_for(half)
half_guide.load_state_dict(guide.state_dict())
mask = torch.arange(28).expand(len(x), 28) < 14  # [B, T]: rows 0-13 are real
with torch.no_grad():
    torch.manual_seed(5)
    masked = inference.log_weights(model, guide, (x, mask), num_samples=10)
    torch.manual_seed(5)
    top = inference.log_weights(half, half_guide, (x[:, : 14 * 28],), num_samples=10)
print(f"max difference {(masked - top).abs().max():.2e} nats")
assert torch.allclose(masked, top, atol=1e-4)
