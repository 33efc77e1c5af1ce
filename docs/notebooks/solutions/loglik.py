# %% [markdown]
# # Solutions: estimating log p(x)
#
# Run after the notebook, in the same kernel. Each solution ends with the checks it answers.

# %% [markdown]
# ## 1. Unbiased for p, biased for log p
#
# A proposal wider than the posterior keeps the weights' variance finite (here, per draw,
# E[(w/p)^2] - 1 = (4 / sqrt 7)^2 - 1 = 1.29 for the two latent dimensions), so the standard
# errors below are trustworthy; Jensen's gap is then about -1.29 / (2 k) = -0.064 nats.

# %%
x1, n, k = x[:1], 20000, 10
with torch.no_grad():
    torch.manual_seed(2)
    w = inference.log_weights(model, wide, (x1,), num_samples=n * k).reshape(n, k)
log_p_hat = torch.logsumexp(w, 1) - math.log(k)  # [n] independent IS-10 estimates
ratio = torch.exp(log_p_hat - exact[0])  # p_hat / p
z_ratio = (ratio.mean() - 1) / (ratio.std() / n**0.5)
z_log = (log_p_hat.mean() - exact[0]) / (log_p_hat.std() / n**0.5)
print(f"mean p_hat / p = {ratio.mean():.4f} ({z_ratio:+.1f} se); "
      f"mean log p_hat - log p = {log_p_hat.mean() - exact[0]:+.4f} ({z_log:+.1f} se)")
assert abs(z_ratio) < 5
assert z_log < -5

# %% [markdown]
# ## 2. When the guide is poor, AIS wins

# %%
with torch.no_grad():
    torch.manual_seed(3)
    is100 = inference.bounds(model, untrained, x, num_samples=100).log_likelihood
torch.manual_seed(3)
by_ais = ais(model, (x,), AISConfig(num_temperatures=100, num_chains=16)).log_likelihood
gap_is, gap_ais = (is100 - exact).mean().item(), (by_ais - exact).mean().item()
print(f"IS-100 (untrained guide) {gap_is:+.4f}, AIS (T=100) {gap_ais:+.4f} nats from exact")
assert abs(gap_ais) < abs(gap_is)

# %% [markdown]
# ## 3. When k-hat raises its hand
#
# A proposal narrower than the posterior has weights w = p/q that grow like exp(c |z|^2) in
# q's tails: an infinite variance, a Pareto tail of shape 0.91 in theory. IS then sits below
# the truth by many of its own standard errors, which are computed from the same weights
# whose tail is missing; only k-hat says so. AIS needs no proposal, and BDMC's two bounds
# hold the exact evidence of simulated points between them.

# %%
from aevb.inference.estimators.bdmc import bdmc

narrow = guides.build("linear-gaussian", model).set_parameters(V.detach(), 0.3 * L.detach())
b = inference.bounds(model, narrow, x, num_samples=1000, seed=4)
t = b.trust(0.05)
gap_is = (b.log_likelihood - exact).mean().item()
gap_ais = (result.log_likelihood - exact).mean().item()  # the notebook's AIS, T = 200
print(f"narrow proposal: k-hat > 0.7 on {t['khat_share_over_0_7']:.0%} of the points; IS-1000 "
      f"{gap_is:+.3f} nats from exact = {gap_is / t['test_log_likelihood_mcse']:+.1f} Monte "
      f"Carlo se; AIS {gap_ais:+.4f}")
assert t["flagged"] and t["khat_share_over_0_7"] > 0.5
assert gap_is < -3 * t["test_log_likelihood_mcse"]  # its own error bar does not cover it
assert abs(gap_ais) < abs(gap_is)

sandwich = bdmc(model, x[:1], 10, AISConfig(num_temperatures=50, num_chains=4), seed=0)
with torch.no_grad():
    truth = model.log_evidence(sandwich.x).mean().item()
lower, upper = sandwich.lower.mean().item(), sandwich.upper.mean().item()
se = (sandwich.lower_stderr.pow(2).sum() + sandwich.upper_stderr.pow(2).sum()).sqrt().item() / 10
print(f"BDMC on 10 simulated points: [{lower:.3f}, {upper:.3f}] (Monte Carlo se {se:.3f}), "
      f"exact {truth:.3f}")
assert lower - 3 * se < truth < upper + 3 * se
