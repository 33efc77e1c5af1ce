import numpy as np
import pyro
import pytest
import torch


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
