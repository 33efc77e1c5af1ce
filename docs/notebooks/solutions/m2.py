# %% [markdown]
# # Solutions: semi-supervised learning with M2
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. The weight of a label

# %%
objective = inference.make_objective("semisupervised", 1)
objective.bind_data(train)
by_hand = 0.1 * len(train) / train.num_labelled
print(f"w = 0.1 * {len(train)} / {train.num_labelled} = {by_hand}; the objective's: "
      f"{objective.weight}")
assert abs(objective.weight - by_hand) < 1e-12

# %% [markdown]
# ## 2. The test error by hand

# %%
with torch.no_grad():
    predicted = guide.class_probs(test.x).argmax(-1)
error = (predicted != test.y).float().mean().item()
print(f"test error {error:.3f} (history: {run.history['test_error'].iloc[-1]:.3f}, chance 0.9)")
assert abs(error - run.history["test_error"].iloc[-1]) < 1e-6
assert error < 0.9
