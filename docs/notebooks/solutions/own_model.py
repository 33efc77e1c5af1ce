# %% [markdown]
# # Solutions: write your own model
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. Your program is the package's program

# %%
from aevb import guides, models

vae = models.build("vae", z_dim=16, hidden=(200,))
vae_guide = guides.default_for(vae)


def gaussian_model(x):
    pyro.module("vae_decoder", vae.decoder)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(16), x.new_ones(16)).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)


x = test.x[:20]
with torch.no_grad():
    torch.manual_seed(0)
    theirs = inference.log_weights(vae, vae_guide, (x,), num_samples=50)
    torch.manual_seed(0)
    mine = inference.log_weights(gaussian_model, vae_guide, (x,), num_samples=50)
print(f"largest difference {(theirs - mine).abs().max():.2e} nats")
assert torch.allclose(theirs, mine, rtol=1e-5, atol=1e-3)  # float32 sums in another order

# %% [markdown]
# ## 2. A latent outside the plate is refused
#
# The IWAE bound is a log-mean-exp over k draws *per datapoint*; with one z for the whole
# minibatch the weights are not per datapoint, and RenyiELBO would silently compute one joint
# bound over the minibatch instead.

# %%
from aevb.errors import ObjectiveError


def global_guide(x):
    pyro.module("my_encoder", encoder)
    pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], L), 1.0).to_event(2))


try:
    inference.fit(model, global_guide, train.subset(200), "iwae", particles=5, epochs=1)
    refused = None
except ObjectiveError as err:
    refused = str(err)
print(refused)
assert refused is not None and "not inside a data plate" in refused
