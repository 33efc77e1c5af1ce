"""Annealed importance sampling against the exact FA evidence."""

import json

import pyro
import torch

from aevb import data
from aevb.cli import main
from aevb.inference.ais import AISConfig, ais, sigmoid_schedule


def fa_batch(n=60):
    truth = data.fa_truth()
    _, test = data.load("fa-synthetic")
    x = test.x[:n]
    return truth, x, truth.log_evidence(x).detach()


def test_schedule_runs_from_prior_to_posterior():
    betas = sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 51
    assert torch.all(betas[1:] > betas[:-1])


def test_ais_matches_the_exact_fa_evidence_from_below():
    truth, x, exact = fa_batch()
    pyro.set_rng_seed(0)
    r = ais(truth, (x,), AISConfig(num_temperatures=200, num_chains=16))
    err = r.log_likelihood - exact
    se_mean = float(r.stderr.pow(2).sum().sqrt() / len(x))
    # E[log of an unbiased estimate] <= log p(x): not above the evidence beyond its noise...
    assert float(err.mean()) < 3 * se_mean
    # ...and close to it with a modest schedule
    assert abs(float(err.mean())) < 0.02
    assert 0.5 < r.accept_prob < 0.8  # adapted towards 0.65


def test_ais_standard_error_shrinks_with_more_chains():
    truth, x, _ = fa_batch(30)
    pyro.set_rng_seed(1)
    few = ais(truth, (x,), AISConfig(num_temperatures=30, num_chains=4))
    many = ais(truth, (x,), AISConfig(num_temperatures=30, num_chains=32))
    # sd(w) / (sqrt(C) mean(w)): 8x the chains, about 1/sqrt(8) = 0.35 the error
    assert float(many.stderr.mean()) < 0.6 * float(few.stderr.mean())


def test_cli_evaluates_an_mcem_run_by_ais(tmp_path, capsys):
    out = tmp_path / "fa"
    train = ["train", "fa", "--data", "fa-synthetic", "--inference", "mcem", "--subset", "320"]
    train += ["--test-subset", "100", "--epochs", "6", "--proposal-epochs", "0"]
    assert main([*train, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(out), "--estimator", "ais", "--num-samples", "8"]
    assert main([*argv, "--ais-temperatures", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["estimator"] == "ais" and result["num_samples"] == 8
    assert abs(result["test_log_likelihood"] - result["test_log_evidence_exact"]) < 0.05
    assert result["test_log_likelihood_stderr"] > 0
