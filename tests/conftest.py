import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch

from aevb import data, guides
from aevb.inference.objectives import make_objective


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def prototype_data(n: int, d: int = 16, seed: int = 0, n_proto: int = 4) -> torch.Tensor:
    """Binary data from a few noisy prototypes: structure a small VAE can learn quickly."""
    g = np.random.default_rng(seed)
    protos = g.random((n_proto, d)) < 0.5
    which = g.integers(0, n_proto, n)
    flips = g.random((n, d)) < 0.1
    return torch.as_tensor((protos[which] ^ flips).astype(np.float32))


@pytest.fixture
def binary_data():
    return prototype_data(256)


def gradient_draws(model, guide, x, objective, repeats, k=1, alpha=None, prefix="encoder"):
    """``repeats`` independent gradients of ``objective``'s loss (k particles) with respect to
    the parameters whose names start with ``prefix``, one row each, and the loss values."""
    elbo = make_objective(objective, k, alpha)
    draws, losses = [], []
    for _ in range(repeats):
        with poutine.trace(param_only=True) as capture:
            losses.append(elbo.loss_and_grads(model, guide, x))
        params = {n: s["value"].unconstrained() for n, s in capture.trace.nodes.items()}
        names = sorted(n for n in params if n.startswith(prefix))
        draws.append(torch.cat([params[n].grad.flatten() for n in names]).clone())
        for p in params.values():
            p.grad = None
    return torch.stack(draws), losses


@pytest.fixture()
def fa():
    """The synthetic FA truth, its linear-Gaussian guide, 50 test points in float64 and the
    exact posterior's parameters (V, L)."""
    pyro.clear_param_store()
    truth = data.fa_truth()
    _, test = data.load("fa-synthetic")
    guide = guides.default_for(truth)
    V, L = truth.exact_posterior_parameters()
    return truth, guide, test.x[:50].double(), V.detach(), L.detach()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(server, url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server not up at {url} after {seconds} s")


@pytest.fixture
def tracking_server(tmp_path):
    """``mlflow server`` on a SQLite store, on 127.0.0.1, as a team would start it; yields
    (url, folder), the server logging to folder/mlflow.db and folder/artifacts."""
    pytest.importorskip("flask", reason="the MLflow server (pip install mlflow) is not installed")
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = open(store / "server.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(server, url)
        yield url, store
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
