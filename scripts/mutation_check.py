"""Plant known bugs in the package, one at a time, and report which the test suite catches.

Each mutant is a one-place text edit of a source file (the exact text is replaced, so a
mutant whose text no longer exists is reported as ``stale`` instead of silently passing).
For every mutant the repository is copied to a temporary folder, the edit applied there and
the tests named for it run with pytest (``-x``: the first failure decides); ``--full`` runs the
whole suite instead. A mutant is *caught* when pytest fails, *survived* when it passes.
The unmutated copy is run first, so a red baseline is reported rather than counted as catches.

Run before a large refactor (``make test`` does not run it):

    python scripts/mutation_check.py                 # all mutants, their tests (~6 min)
    python scripts/mutation_check.py --only ais-     # mutants whose id starts with ais-
    python scripts/mutation_check.py --full --json   # the whole suite per mutant (slow)
    python scripts/mutation_check.py --only hmc-,leapfrog- -k invariant   # moment tests alone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    category: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


S = "aevb/inference/samplers/hmc.py"
S_TARGET = "aevb/inference/samplers/target.py"
S_PYRO = "aevb/inference/samplers/pyro_kernels.py"
AIS = "aevb/inference/estimators/ais.py"
EV = "aevb/inference/evaluate.py"
OBJ = "aevb/inference/objectives/__init__.py"
DS = "aevb/data/dataset.py"
T_SAMPLERS = ("tests/test_samplers.py", "tests/test_mcem.py")
SEMI = "aevb/inference/objectives/semisupervised.py"
T_M2 = ("tests/test_m2.py",)
MJ = "docs/_ext/offline_mathjax.py"
T_NB = "tests/test_notebooks.py::test_notebook_executes_with_its_solutions"
T_USER = "tests/test_user_programs.py"
MCVAE = "aevb/inference/objectives/mcvae.py"
T_MCVAE = ("tests/test_mcvae.py",)
METFLOW = "aevb/inference/objectives/metflow.py"
T_METFLOW = ("tests/test_metflow.py",)

MUTANTS = [
    Mutant(
        "hmc-loose-metropolis",
        "sampler",
        "Metropolis test looser by 0.3 nats",
        S,
        "accept = torch.rand_like(log_a).log() < log_a\n",
        "accept = torch.rand_like(log_a).log() < log_a + 0.3\n",
        T_SAMPLERS,
    ),
    Mutant(
        "hmc-always-accept",
        "sampler",
        "every proposal accepted (unadjusted HMC)",
        S,
        "accept = torch.rand_like(log_a).log() < log_a\n",
        "accept = torch.ones_like(log_a, dtype=torch.bool)\n",
        T_SAMPLERS,
    ),
    Mutant(
        "leapfrog-no-last-half-step",
        "sampler",
        "leapfrog loses its final half momentum step",
        S,
        "    r = r - 0.5 * step_size * grad\n    return u, r, U, grad\n",
        "    return u, r, U, grad\n",
        T_SAMPLERS,
    ),
    Mutant(
        "leapfrog-full-first-kick",
        "sampler",
        "leapfrog starts with a full momentum step instead of a half",
        S,
        "    r = r - 0.5 * step_size * grad\n    U = None\n",
        "    r = r - step_size * grad\n    U = None\n",
        T_SAMPLERS,
    ),
    Mutant(
        "hmc-momentum-wrong-mass",
        "sampler",
        "momentum drawn from N(0, M^-1) instead of N(0, M)",
        S,
        "        r = torch.randn_like(u)\n        if inv_mass is not None:\n"
        "            r = r / inv_mass.sqrt()\n        h0",
        "        r = torch.randn_like(u)\n        if inv_mass is not None:\n"
        "            r = r * inv_mass.sqrt()\n        h0",
        T_SAMPLERS,
    ),
    Mutant(
        "kinetic-ignores-mass",
        "sampler",
        "kinetic energy without the inverse mass",
        S,
        "else (r * r * inv_mass).sum(-1)",
        "else (r * r).sum(-1)",
        T_SAMPLERS,
    ),
    Mutant(
        "welford-half-variance",
        "sampler",
        "adapted mass matrix from half the chains' variance",
        S,
        "var = self.m2 / max(n - 1, 1)",
        "var = self.m2 / max(n - 1, 1) / 2",
        T_SAMPLERS,
    ),
    Mutant(
        "latents-no-jacobian",
        "sampler",
        "constrained latents sampled without the log-Jacobian",
        S_TARGET,
        "ladj = ladj + j.reshape(u.shape[0], -1).sum(-1)",
        "ladj = ladj + 0 * j.reshape(u.shape[0], -1).sum(-1)",
        T_SAMPLERS,
    ),
    Mutant(
        "pyro-kernel-tempered-potential",
        "sampler",
        "Pyro's kernels get half the potential (a tempered posterior)",
        S_PYRO,
        'return -latents.log_joint(params["u"], args).sum()',
        'return -0.5 * latents.log_joint(params["u"], args).sum()',
        T_SAMPLERS,
    ),
    Mutant(
        "ais-drop-first-increment",
        "estimator",
        "AIS drops its first annealing increment",
        AIS,
        "        log_w += (betas[t] - betas[t - 1]).double() * log_lik.double()",
        "        log_w += (t > 1) * (betas[t] - betas[t - 1]).double() * log_lik.double()",
        ("tests/test_ais.py",),
    ),
    Mutant(
        "ais-drop-last-increment",
        "estimator",
        "AIS drops its last annealing increment",
        AIS,
        "        log_w += (betas[t] - betas[t - 1]).double() * log_lik.double()",
        "        log_w += (t < len(betas) - 1) * (betas[t] - betas[t - 1]).double()"
        " * log_lik.double()",
        ("tests/test_ais.py",),
    ),
    Mutant(
        "ais-moves-at-the-posterior",
        "estimator",
        "AIS moves every chain with the beta = 1 kernel",
        AIS,
        "target = _Annealed(latents, rep, float(betas[t]))",
        "target = _Annealed(latents, rep, 1.0)",
        ("tests/test_ais.py",),
    ),
    Mutant(
        "ais-no-log-c",
        "estimator",
        "AIS average without its log C normaliser",
        AIS,
        "est = torch.logsumexp(log_w, 0) - math.log(c)",
        "est = torch.logsumexp(log_w, 0)",
        ("tests/test_ais.py",),
    ),
    Mutant(
        "is-no-log-k",
        "estimator",
        "IS-k without its log k normaliser",
        EV,
        "lse = torch.logsumexp(w, 0) - math.log(num_samples)",
        "lse = torch.logsumexp(w, 0)",
        ("tests/test_bounds.py", "tests/test_objectives.py", "tests/test_vrnn.py"),
    ),
    Mutant(
        "is-elbo-last-chunk",
        "estimator",
        "ELBO over chunks divided by the last chunk's size",
        EV,
        "    return (w.sum(0) / num_samples, lse, khat, ess, var)\n",
        "    return (w.sum(0) / k, lse, khat, ess, var)\n",
        ("tests/test_bounds.py", "tests/test_vrnn.py"),
    ),
    Mutant(
        "is-guide-half-weight",
        "estimator",
        "log weights with half of log q(z|x)",
        EV,
        'total = total - _site_log_prob(name, site, "guide", num_samples, batch)',
        'total = total - 0.5 * _site_log_prob(name, site, "guide", num_samples, batch)',
        ("tests/test_bounds.py", "tests/test_fa.py"),
    ),
    Mutant(
        "jit-meanfield-is-trace",
        "objective",
        "the compiled meanfield objective is estimator A",
        OBJ,
        "        make_jit=jit_meanfield,",
        "        make_jit=jit_trace,",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "meanfield-is-trace",
        "objective",
        "meanfield samples the KL (Trace_ELBO)",
        OBJ,
        "        lambda k, a, n: TraceMeanField_ELBO(",
        "        lambda k, a, n: Trace_ELBO(",
        ("tests/test_fa.py", "tests/test_fast_paths.py"),
    ),
    Mutant(
        "iwae-one-particle",
        "objective",
        "iwae ignores k (the ELBO)",
        OBJ,
        "RenyiELBO(0.0, k, max_plate_nesting=n",
        "RenyiELBO(0.0, 1, max_plate_nesting=n",
        ("tests/test_objectives.py", "tests/test_fa.py"),
    ),
    Mutant(
        "renyi-plate-size-unchecked",
        "objective",
        "the per-datapoint check accepts any plate",
        OBJ,
        "plates = {f.name for f in stack if f.vectorized and f.size == batch}",
        "plates = {f.name for f in stack if f.vectorized}",
        ("tests/test_objectives.py",),
    ),
    Mutant(
        "discrete-guide-unchecked",
        "objective",
        "a non-reparameterised guide site is accepted by iwae and meanfield",
        OBJ,
        'if why and site["type"] == "sample"',
        'if False and why and site["type"] == "sample"',
        ("tests/test_objectives.py", "tests/test_models.py"),
    ),
    Mutant(
        "dynamic-is-threshold",
        "data",
        "dynamic binarisation thresholds instead of drawing",
        DS,
        "    return torch.bernoulli(x, generator=g)",
        "    return (x > 0.5).to(x.dtype)",
        ("tests/test_data.py", "tests/test_fit.py"),
    ),
    Mutant(
        "dequantise-midpoint",
        "data",
        "continuous dequantisation adds 1/2 instead of U(0, 1)",
        DS,
        "return (torch.round(x * 255.0) + u) / 256.0",
        "return (torch.round(x * 255.0) + 0.5 + 0 * u) / 256.0",
        ("tests/test_data.py",),
    ),
    Mutant(
        "labels-misaligned",
        "data",
        "shuffled batches take labels in another order",
        DS,
        "raw.append(self.y[idx])  # type: ignore[index]",
        "raw.append(self.y[idx].flip(0))  # type: ignore[index]",
        ("tests/test_data.py",),
    ),
    Mutant(
        "idx-little-endian",
        "data",
        "IDX int32 read little-endian",
        "aevb/data/idx.py",
        '0x0C: np.dtype(">i4"),',
        '0x0C: np.dtype("<i4"),',
        ("tests/test_data.py",),
    ),
    Mutant(
        "mcem-decay-unclamped",
        "training",
        "MCEM's lr keeps decaying past lr_decay_epochs",
        "aevb/inference/mcem.py",
        "frac = min(t / max(self.decay_steps - 1, 1), 1.0)",
        "frac = t / max(self.decay_steps - 1, 1)",
        ("tests/test_mcem.py",),
    ),
    Mutant(
        "method-unknown-settings-accepted",
        "training",
        "the shared fit path lets a misspelt setting through (then fails or is ignored)",
        "aevb/inference/method.py",
        "    if unknown:\n",
        "    if False:\n",
        ("tests/test_fit.py",),
    ),
    Mutant(
        "vimcmc-new-chains-keep-stored-step",
        "training",
        "new chains start from the stored step size, not the sampler's initial search",
        "aevb/inference/samplers/chains.py",
        "eps = torch.where(new, start, eps)",
        "eps = torch.where(new, eps, eps)",
        ("tests/test_chains.py",),
    ),
    Mutant(
        "resume-ignores-data",
        "training",
        "resume does not compare the data settings",
        "aevb/inference/record.py",
        'if k != "versions"',
        'if k not in ("versions", "data_spec", "spec")',
        ("tests/test_cli.py", "tests/test_fit.py"),
    ),
    Mutant(
        "resume-ignores-spec",
        "training",
        "resume does not compare the run's spec",
        "aevb/inference/record.py",
        '    "spec.evaluation",\n    "modules",\n)',
        '    "spec",\n    "modules",\n)',
        ("tests/test_runs.py",),
    ),
    Mutant(
        "device-default-constructor",
        "devices",
        "the batched HMC makes its acceptance counts on the default device",
        "aevb/inference/samplers/hmc.py",
        "accepted = u.new_zeros(u.shape[0])",
        "accepted = torch.zeros(u.shape[0])",
        ("tests/test_devices.py",),
    ),
    Mutant(
        "device-checkpoint-not-mapped",
        "devices",
        "checkpoints are read without map_location (a GPU run does not load on a CPU)",
        "aevb/inference/rundir.py",
        'torch.load(path, map_location="cpu", weights_only=False)',
        "torch.load(path, weights_only=False)",
        ("tests/test_devices.py",),
    ),
    Mutant(
        "spec-no-minimum",
        "spec",
        "a RunSpec accepts integers below their minimum (epochs 0, particles -3)",
        "aevb/settings.py",
        "(value <= low if s.above else value < low)",
        "(value <= low if s.above else value < low - 10)",
        ("tests/test_spec.py",),
    ),
    Mutant(
        "recipe-ignored",
        "spec",
        "the library ignores the model's recipe (the CLI and fit disagree)",
        "aevb/models/base.py",
        "    return {**defaults, **settings}",
        "    return dict(settings)",
        ("tests/test_runs.py",),
    ),
    Mutant(
        "fa-evidence-sigma-not-squared",
        "referee",
        "FA's exact evidence with sigma for sigma^2",
        "aevb/models/fa.py",
        "cov = self.W @ self.W.T + torch.diag(self.sigma**2)",
        "cov = self.W @ self.W.T + torch.diag(self.sigma)",
        ("tests/test_fa.py",),
    ),
    # performance (issue 20): the fast paths must still compute the same thing
    Mutant(
        "perf-chains-pooled-across-datapoints",
        "performance",
        "measure_ess pools chains of different datapoints",
        "aevb/inference/diagnostics.py",
        "state.samples.reshape(draws, chains, batch, -1).transpose(0, 1)",
        "state.samples.reshape(draws, batch, chains, -1).transpose(0, 2).transpose(1, 2)",
        ("tests/test_samplers.py",),
    ),
    Mutant(
        "perf-product-form-drops-the-tail",
        "performance",
        "the product-form Bernoulli forgets the pixels past the last full group",
        "aevb/models/likelihoods.py",
        "        total = total + a[..., main:].log().sum(-1)",
        "        total = total + 0.0",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "perf-probe-trusts-any-trace",
        "performance",
        "the jit probe keeps a compiled objective whose loss differs from the eager one",
        "aevb/inference/objectives/jit.py",
        "                if not math.isclose(loss_jit, loss, rel_tol=rtol, abs_tol=1e-6):",
        "                if False:",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "perf-probe-draws-from-the-run",
        "performance",
        "the jit probe draws from the run's random stream",
        "aevb/inference/objectives/jit.py",
        "        with torch.random.fork_rng(devices=[]), quiet_trace():\n            for i, args",
        "        with quiet_trace():\n            for i, args",
        ("tests/test_fast_paths.py",),
    ),
    Mutant(
        "perf-vrnn-shares-any-recurrence",
        "performance",
        "the VRNN takes the guide's recurrence for latents the guide did not draw",
        "aevb/models/vrnn.py",
        "if shared is not None and t < len(shared) and shared[t][0] is z:",
        "if shared is not None and t < len(shared):",
        ("tests/test_vrnn.py",),
    ),
    Mutant(
        "perf-vrnn-shares-a-stale-state",
        "performance",
        "the recurrent guide hands the model the state before its step",
        "aevb/guides/recurrent.py",
        "state = model.advance(state, fx, z)\n                shared.append((z, state))",
        "shared.append((z, state))\n                state = model.advance(state, fx, z)",
        ("tests/test_vrnn.py",),
    ),
    # faults (issue 19): what keeps a run alive through a signal, a kill, a bad disk
    Mutant(
        "fault-resume-restarts-the-epoch",
        "faults",
        "a run resumed mid-epoch redoes the epoch's first minibatches",
        "aevb/inference/loop.py",
        "        if position < done.batches:",
        "        if position < 0:",
        ("tests/test_faults.py",),
    ),
    Mutant(
        "fault-no-previous-checkpoint",
        "faults",
        "the checkpoint being replaced is not kept as checkpoint.prev.pt",
        "aevb/inference/rundir.py",
        "    if keep is not None and path.exists():",
        "    if False:",
        ("tests/test_faults.py",),
    ),
    Mutant(
        "fault-lock-not-taken",
        "faults",
        "no OS lock is taken: a second process trains in a held run directory",
        "aevb/inference/rundir.py",
        "            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "            pass",
        ("tests/test_faults.py",),
    ),
    Mutant(
        "fault-signal-ignored",
        "faults",
        "SIGINT/SIGTERM stop nothing: the run trains on to its end",
        "aevb/inference/loop.py",
        "        stop.signum = signum\n",
        "        pass\n",
        ("tests/test_faults.py",),
    ),
    Mutant(
        "fault-unwritable-checkpoint-ignored",
        "faults",
        "a checkpoint write that fails is ignored (the run goes on without one)",
        "aevb/inference/rundir.py",
        "        tmp.unlink(missing_ok=True)\n        kept =",
        "        tmp.unlink(missing_ok=True)\n        return\n        kept =",
        ("tests/test_faults.py",),
    ),
    Mutant(
        "bad-input-labels-unchecked",
        "bad-input",
        "CVAE labels outside 0..C-1 pass the check",
        "aevb/models/base.py",
        "    bad = (y < least) | (y >= num_classes)",
        "    bad = y < -(10**9)",
        ("tests/test_bad_inputs.py",),
    ),
    Mutant(
        "dreg-coefficient-not-squared",
        "objective",
        "iwae-dreg scales each draw's path gradient by w~ instead of w~^2 (alpha = 0)",
        "aevb/inference/objectives/dreg.py",
        "        factor = self.alpha + (1.0 - self.alpha) * normalised\n",
        "        factor = self.alpha + (1.0 - self.alpha) * normalised.sqrt()\n",
        ("tests/test_dreg.py",),
    ),
    Mutant(
        "dreg-score-term-kept",
        "objective",
        "iwae-dreg keeps log q's score term (no detached re-scoring)",
        "aevb/inference/objectives/dreg.py",
        "            stick_the_landing_(guide_trace)\n",
        "            pass\n",
        ("tests/test_dreg.py",),
    ),
    Mutant(
        "rws-wake-phi-wrong-sign",
        "objective",
        "rws's wake-phi term with the sign flipped (q pushed away from the posterior)",
        "aevb/inference/objectives/rws.py",
        "+ (normalised * q).sum()",
        "- (normalised * q).sum()",
        ("tests/test_rws.py",),
    ),
    Mutant(
        "mcvae-missing-reverse-kernel",
        "objective",
        "L-MCVAE's weight without the reverse kernel L_k (only -log M_k)",
        MCVAE,
        "    log_ratio = log_l - log_m\n",
        "    log_ratio = -log_m\n",
        T_MCVAE,
    ),
    Mutant(
        "mcvae-beta-off-by-one",
        "objective",
        "L-MCVAE's k-th step targets pi_{k-1} (the beta schedule shifted by one)",
        MCVAE,
        "        for beta in schedule[1:]:\n",
        "        for beta in schedule[:-1]:\n",
        T_MCVAE,
    ),
    Mutant(
        "mcvae-ula-noise-scale",
        "objective",
        "ULA's noise sqrt(eta) instead of sqrt(2 eta) (the kernel no longer the one scored)",
        MCVAE,
        "math.sqrt(2.0 * eta) * torch.randn_like(start.u)",
        "math.sqrt(eta) * torch.randn_like(start.u)",
        T_MCVAE,
    ),
    Mutant(
        "mcvae-ais-increment-beta-not-its-step",
        "objective",
        "A-MCVAE's increment weighted by beta_k instead of beta_k - beta_{k-1}",
        MCVAE,
        "log_w + (schedule[k] - schedule[k - 1]) * (point.log_p",
        "log_w + schedule[k] * (point.log_p",
        T_MCVAE,
    ),
    Mutant(
        "mcvae-score-term-dropped",
        "objective",
        "A-MCVAE's gradient without the score term of the accept/reject decisions",
        MCVAE,
        "surrogate = surrogate + self.score_weight() * score",
        "surrogate = surrogate + 0.0 * score",
        T_MCVAE,
    ),
    Mutant(
        "mcvae-mala-accept-without-proposal-correction",
        "objective",
        "MALA's accept probability without the proposal ratio L_k / M_k (plain Metropolis)",
        MCVAE,
        "log_alpha = (end.log_pi(beta) - start.log_pi(beta) + log_ratio).clamp(max=0.0)",
        "log_alpha = (end.log_pi(beta) - start.log_pi(beta)).clamp(max=0.0)",
        T_MCVAE,
    ),
    Mutant(
        "vimcmc-encoder-fit-to-unrefined-draws",
        "sampler",
        "vi-mcmc's encoder_refined term evaluated at the encoder's own draws z^0, not z^K",
        "aevb/inference/vimcmc.py",
        "            self.refined_fit_loss(u, args).backward()",
        "            self.refined_fit_loss(self.latents.flatten({s.name: pyro.poutine.trace("
        "self.guide).get_trace(*args).nodes[s.name]['value'].detach() for s in "
        "self.latents.sites}), args).backward()",
        ("tests/test_vimcmc.py",),
    ),
    Mutant(
        "metflow-accept-without-jacobian",
        "objective",
        "MetFlow's accept probability without the proposal's Jacobian |det J_T|",
        METFLOW,
        "log_alpha = (log_p_new + ladj - log_p).clamp(max=0.0)",
        "log_alpha = (log_p_new - log_p).clamp(max=0.0)",
        T_METFLOW,
    ),
    Mutant(
        "metflow-rejected-tracked-as-accepted",
        "objective",
        "MetFlow's density of a rejected move tracked as if accepted (its log-Jacobian added)",
        METFLOW,
        "jacobian = torch.where(accept, ladj, torch.zeros_like(ladj))",
        "jacobian = ladj",
        T_METFLOW,
    ),
    Mutant(
        "metflow-decision-target-dropped",
        "objective",
        "MetFlow's weight without the decisions' target m (log p - log q_K(u_K, a | xi))",
        METFLOW,
        "        jacobian + log_m - log_decision,",
        "        jacobian - log_decision,",
        T_METFLOW,
    ),
    Mutant(
        "metflow-inverse-direction-never-drawn",
        "objective",
        "MetFlow always proposes F, never F^{-1} (the kernel no longer leaves pi invariant)",
        METFLOW,
        "directions = torch.rand(steps, n, dtype=u.dtype, device=u.device) < 0.5",
        "directions = torch.rand(steps, n, dtype=u.dtype, device=u.device) < 2.0",
        T_METFLOW,
    ),
    Mutant(
        "iaf-same-order-every-step",
        "guide",
        "every IAF step uses the same variable order",
        "aevb/guides/iaf.py",
        "order.flip(0) if t % 2 else order",
        "order",
        ("tests/test_iaf.py",),
    ),
    Mutant(
        "iaf-context-dropped",
        "guide",
        "the IAF steps get a zero context instead of the encoder's h",
        "aevb/guides/iaf.py",
        "        h = out[..., 2 * c.z_dim :]\n",
        "        h = out[..., 2 * c.z_dim :] * 0\n",
        ("tests/test_iaf.py",),
    ),
    Mutant(
        "jit-key-ignores-grad-mode",
        "sampler",
        "a compiled potential traced under no_grad is reused with gradients",
        S_TARGET,
        "        key = (torch.is_grad_enabled(), signature((u, *args)))\n",
        "        key = signature((u, *args))\n",
        ("tests/test_ais.py",),
    ),
    Mutant(
        "m2-classification-sign",
        "objective",
        "the classification term of Kingma et al.'s eq. 9 added with the wrong sign",
        SEMI,
        "        return loss - self.weight * term\n",
        "        return loss + self.weight * term\n",
        T_M2,
    ),
    Mutant(
        "m2-compiled-ignores-alpha-option",
        "objective",
        "the compiled semisupervised objective drops its alpha_fraction option",
        OBJ,
        "PerSignature(lambda: make(num_particles, max_plate_nesting, alpha, config=config))",
        "PerSignature(lambda: make(num_particles, max_plate_nesting, alpha))",
        T_M2,
    ),
    Mutant(
        "tracking-resume-skips-unlogged-epochs",
        "faults",
        "a resumed run's tracker does not log the checkpointed epochs its MLflow run lacks",
        "aevb/experiments/tracking.py",
        '            if int(row["epoch"]) < before and int(row["epoch"]) not in logged:',
        "            if False:",
        ("tests/test_tracking.py",),
    ),
    Mutant(
        "stopping-keeps-the-last-epoch",
        "faults",
        "a run stopped early ends with its last epoch's parameters, not its best epoch's",
        "aevb/inference/loop.py",
        'run.extra["best_epoch"] = best.restore(model, guide, device)',
        'run.extra["best_epoch"] = best.state and best.state["epoch"]',
        ("tests/test_stopping.py",),
    ),
    Mutant(
        "stopping-patience-off-by-one",
        "faults",
        "early stopping waits one epoch more than its patience",
        "aevb/inference/stopping.py",
        'rows[-1]["epoch"] - best >= patience',
        'rows[-1]["epoch"] - best > patience',
        ("tests/test_stopping.py",),
    ),
    Mutant(
        "stopping-best-by-the-test-set",
        "faults",
        "the validation columns are the test set's metrics (the test set chooses the epoch)",
        "aevb/inference/loop.py",
        "row.update(validation_columns(evaluate_epoch(model, guide, valid, cfg)))",
        "row.update(validation_columns(evaluate_epoch(model, guide, test or valid, cfg)))",
        ("tests/test_stopping.py",),
    ),
    Mutant(
        "m2-labelled-decoded-per-class",
        "model",
        "a labelled point is decoded once per enumerated class again (C times the work)",
        "aevb/models/m2.py",
        'if plate_dim("data") != -1:',
        "if True:",
        T_M2,
    ),
    Mutant(
        "m2-particles-taken-for-enumeration",
        "model",
        "the particle plate counted as an enumeration dim: K particles share one labelled decode",
        "aevb/models/nets.py",
        "value.dim() - event_dim + min(dims)",
        "value.dim() - event_dim + max(dims)",
        T_M2,
    ),
    Mutant(
        "stopping-resume-with-less-patience",
        "faults",
        "a stopped run may resume with a smaller patience (its stop can lie behind it)",
        "aevb/inference/record.py",
        "if key in a and key in b and b[key] >= a[key]:",
        "if key in a and key in b:",
        ("tests/test_stopping.py",),
    ),
    Mutant(
        "stopping-finished-run-scored-again",
        "faults",
        "a run its early-stopping rule ended is trained on and scored again on every re-run",
        "aevb/inference/stopping.py",
        "    return not patience_spent(rows, monitor, patience)\n",
        "    return True\n",
        ("tests/test_stopping.py",),
    ),
    Mutant(
        "m2-weight-ignores-labelled-share",
        "objective",
        "the labelled point's weight is alpha / N, not alpha / N_labelled",
        SEMI,
        "self.alpha_fraction * len(ds) / labelled if labelled else 0.0",
        "self.alpha_fraction if labelled else 0.0",
        T_M2,
    ),
    Mutant(
        "m2-term-unmasked",
        "objective",
        "the classification term also counts the unlabelled points' placeholder labels",
        SEMI,
        "        if mask is not None:\n",
        "        if False:\n",
        T_M2,
    ),
    Mutant(
        "m2-guide-ignores-known-label",
        "guide",
        "q(z | x, y) reads the enumerated guess even where the label is known",
        "aevb/guides/semisupervised.py",
        "torch.where(labelled[:, None], known, guess)",
        "guess",
        T_M2,
    ),
    Mutant(
        "m2-scored-with-labels",
        "estimator",
        "the test log-likelihood of M2 is log p(x, y): the labels are not hidden",
        "aevb/models/base.py",
        "    if hooks(model).marginal_labels and ds.y is not None:\n",
        "    if False:\n",
        T_M2,
    ),
    Mutant(
        "m2-labels-unbalanced",
        "data",
        "keep_labels takes the first n labelled points instead of n / C per class",
        DS,
        "        chosen = torch.cat(kept)\n",
        "        chosen = torch.arange(n)\n",
        T_M2,
    ),
    # issue 23: the offline site and the notebooks' solutions
    Mutant(
        "docs-mathjax-from-cdn",
        "docs",
        "the site keeps Sphinx's CDN MathJax: offline, the pages show raw TeX",
        MJ,
        "    app.config.mathjax_path = ENTRY\n",
        "",
        ("tests/test_docs_offline.py",),
    ),
    Mutant(
        "docs-checksum-ignored",
        "docs",
        "the MathJax tarball is used whatever its SHA-256",
        MJ,
        "    if got != SHA256:\n",
        "    if False:\n",
        ("tests/test_docs_offline.py",),
    ),
    Mutant(
        "notebook-fa-kl-without-logdet",
        "the referee",
        "FA's closed-form ELBO drops log det S from its KL (the FA notebook's exercise 1)",
        "aevb/models/fa.py",
        "        kl = 0.5 * (trace + (loc**2).sum(-1) - self.z_dim - logdet)\n",
        "        kl = 0.5 * (trace + (loc**2).sum(-1) - self.z_dim)\n",
        (f"{T_NB}[fa]",),
    ),
    Mutant(
        "notebook-vrnn-mask-ignored",
        "model",
        "the VRNN scores the padded steps of ragged sequences (the VRNN notebook's exercise 2)",
        "aevb/models/vrnn.py",
        "                m: Any = True if mask is None else mask[:, t].bool()\n",
        "                m: Any = True\n",
        (f"{T_NB}[vrnn]",),
    ),
    Mutant(
        "user-prior-of-proposed-site-counted",
        "estimator",
        "a latent the guide forgets keeps its prior term in the IS weight",
        EV,
        "            continue  # drawn from its prior: p(u) / p(u) in the weight\n",
        "            pass\n",
        (T_USER,),
    ),
    Mutant(
        "user-enumeration-not-summed",
        "estimator",
        "the model's own enumerated sites are sampled instead of summed out",
        EV,
        '        enumerate_model=True,\n        what="a batch",\n',
        '        enumerate_model=False,\n        what="a batch",\n',
        (T_USER,),
    ),
    Mutant(
        "user-nan-passed-through",
        "estimator",
        "a NaN log-density passes into the estimate",
        EV,
        "    if bool(bad.any()):\n",
        "    if False:\n",
        (T_USER,),
    ),
    Mutant(
        "user-seed-skips-closure-modules",
        "training",
        "a fresh fit leaves networks captured in closures as the last fit left them",
        "aevb/inference/loop.py",
        "        for module in others:",
        "        for module in others[:0]:",
        (T_USER,),
    ),
    Mutant(
        "user-global-latent-unscaled",
        "training",
        "minibatches of a model with a global latent are not scaled by N / B",
        "aevb/inference/programs.py",
        '            msg["scale"] = msg["scale"] * (self.full / self.batch)\n',
        "            pass\n",
        (T_USER,),
    ),
    Mutant(
        "user-resume-keeps-memory-weights",
        "training",
        "a resumed plain-function pair keeps its networks' in-memory weights",
        "aevb/inference/loop.py",
        "        _adopt_checkpoint(model, guide, ds, cfg, device)\n",
        "        pass\n",
        (T_USER,),
    ),
    Mutant(
        "cli-estimator-names-typed",
        "spec",
        "aevb evaluate's --estimator choices typed in cli.py instead of read from ESTIMATORS",
        "aevb/cli.py",
        '        kwargs["choices"] = choices\n',
        '        kwargs["choices"] = choices if key != "estimator" else ["is", "ais"]\n',
        ("tests/test_cli.py::test_the_cli_names_no_registry_key_itself",),
    ),
    Mutant(
        "khat-wrong-axis",
        "estimator",
        "Pareto k-hat fitted across datapoints instead of across a datapoint's draws",
        "aevb/inference/psis.py",
        "    rows = log_w.detach().double().cpu().T.numpy()  # [B, S]\n",
        "    rows = log_w.detach().double().cpu().numpy()  # [B, S]\n",
        ("tests/test_psis.py",),
    ),
    Mutant(
        "khat-log-weights-not-negated",
        "estimator",
        "k-hat of the negated log weights: ArviZ's psislw smooths the negatives of what it takes",
        "aevb/inference/psis.py",
        "            return array_stats.psislw(-rows, r_eff=1, axis=-1)[1]\n",
        "            return array_stats.psislw(rows, r_eff=1, axis=-1)[1]\n",
        ("tests/test_psis.py",),
    ),
    Mutant(
        "mcse-without-sqrt-n",
        "estimator",
        "the Monte Carlo standard error of a test-set mean divided by sqrt(N) instead of N",
        "aevb/inference/psis.py",
        '"test_log_likelihood_mcse": float(mc_variance.double().sum().sqrt() / n),',
        '"test_log_likelihood_mcse": float(mc_variance.double().sum().sqrt() / math.sqrt(n)),',
        ("tests/test_psis.py",),
    ),
    Mutant(
        "rhat-chain-draw-swapped",
        "sampler",
        "R-hat and bulk/tail ESS read the chain axis as draws and the draw axis as chains",
        "aevb/inference/diagnostics.py",
        "    x = np.moveaxis(x, (chain_axis, draw_axis), (0, 1))\n",
        "    x = np.moveaxis(x, (draw_axis, chain_axis), (0, 1))\n",
        ("tests/test_chain_diagnostics.py",),
    ),
    Mutant(
        "bdmc-reverse-from-the-prior",
        "estimator",
        "reverse AIS started from a prior draw instead of the exact z that simulated x",
        "aevb/inference/estimators/bdmc.py",
        "        exact = Latents(model, (x,)).flatten(values)\n",
        "        exact = Latents(model, (x,)).prior_draw((x,))\n",
        ("tests/test_bdmc.py",),
    ),
    Mutant(
        "comparison-ignores-pairing",
        "estimator",
        "two cells compared with each cell's own standard error though they scored the same points",
        "aevb/experiments/paired.py",
        "    if len(found) == 2 * len(seeds) and len(",
        "    if False and len(",
        ("tests/test_paired.py",),
    ),
    Mutant(
        "paired-se-from-each-side",
        "estimator",
        "the paired standard error taken from each cell's own spread instead of the differences'",
        "aevb/experiments/paired.py",
        "    se_points = float(d.mean(0).std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan\n",
        "    se_points = float(math.hypot(np.std(a, ddof=1), np.std(b, ddof=1)) / math.sqrt(n))\n",
        ("tests/test_paired.py",),
    ),
    Mutant(
        "mcvae-step-size-not-resumed",
        "faults",
        "a resumed Monte Carlo VAE run restarts its adapted step size from the setting",
        "aevb/inference/svi.py",
        '        if "objective" in state:\n',
        "        if False:\n",
        (
            "tests/test_faults.py::"
            "test_a_signal_mid_epoch_checkpoints_and_the_resumed_run_is_bit_identical",
        ),
    ),
]


def copy_repo(dest: Path) -> None:
    """The working tree (tracked and untracked files), without environments or outputs."""
    skip = {".git", ".venv", "runs", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    ignore = shutil.ignore_patterns("__pycache__", "_build", "_generated")
    for item in ROOT.iterdir():
        if item.name in skip or item.name.endswith(".egg-info"):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=ignore)
        else:
            shutil.copy2(item, dest / item.name)
    # the copy, not the editable install, must be what the tests import
    env = {**os.environ, "PYTHONPATH": str(dest)}
    probe = [sys.executable, "-c", "import aevb; print(aevb.__file__)"]
    found = subprocess.run(probe, cwd=dest, env=env, capture_output=True, text=True).stdout
    if not found.strip().startswith(str(dest)):
        raise RuntimeError(f"the copy's aevb is not the one imported ({found.strip()})")


def run_tests(
    where: Path, tests: tuple[str, ...] | None, timeout: float, select: str = ""
) -> tuple[int, str, float]:
    """pytest in ``where`` (its own copy of the package first on the path); returns (exit
    code, first failing test, seconds)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    cmd += ["-m", "not network", *(tests or ())] + (["-k", select] if select else [])
    env = {**os.environ, "PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=where, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.perf_counter() - start
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    return proc.returncode, (failed[0][7:] if failed else ""), time.perf_counter() - start


def check(mutant: Mutant, full: bool, timeout: float, select: str = "") -> dict:
    with tempfile.TemporaryDirectory(prefix="aevb-mutant-") as tmp:
        where = Path(tmp)
        copy_repo(where)
        path = where / mutant.path
        text = path.read_text()
        if text.count(mutant.old) != 1:
            return {"status": "stale", "first_failure": f"text found {text.count(mutant.old)}x"}
        path.write_text(text.replace(mutant.old, mutant.new))
        code, first, seconds = run_tests(where, None if full else mutant.tests, timeout, select)
    status = {0: "survived", 5: "no tests"}.get(code, "caught" if code > 0 else "timeout")
    return {"status": status, "first_failure": first, "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--only", default="", help="the mutants whose id starts with this (comma-separated)"
    )
    p.add_argument("--full", action="store_true", help="the whole suite for every mutant")
    p.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("-k", dest="select", default="", help="only the tests pytest -k selects")
    args = p.parse_args(argv)
    prefixes = tuple(args.only.split(","))
    chosen = [m for m in MUTANTS if m.id.startswith(prefixes)]
    tests = sorted({t for m in chosen for t in m.tests})
    with tempfile.TemporaryDirectory(prefix="aevb-baseline-") as tmp:
        copy_repo(Path(tmp))
        code, first, seconds = run_tests(
            Path(tmp), None if args.full else tuple(tests), args.timeout, args.select
        )
    if code != 0:
        print(f"baseline is not green ({first or code}); fix the suite first", file=sys.stderr)
        return 1
    rows = []
    for m in chosen:
        row = {
            "id": m.id,
            "category": m.category,
            "what": m.what,
            **check(m, args.full, args.timeout, args.select),
        }
        rows.append(row)
        if not args.json:
            print(
                f"{row['status']:>9}  {m.id}  ({row.get('seconds', '-')} s) {row['first_failure']}",
                flush=True,
            )
    caught = sum(r["status"] == "caught" for r in rows)
    summary = {
        "baseline_seconds": round(seconds, 1),
        "caught": caught,
        "total": len(rows),
        "mutants": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\n{caught} of {len(rows)} planted bugs caught (baseline {seconds:.0f} s)\n")
        print("| mutant | category | planted bug | result | first failing test |")
        print("|---|---|---|---|---|")
        for r in rows:
            cols = (r["id"], r["category"], r["what"], r["status"], r["first_failure"])
            print("| " + " | ".join(cols) + " |")
    return 0 if caught == len(rows) else 3


if __name__ == "__main__":
    sys.exit(main())
