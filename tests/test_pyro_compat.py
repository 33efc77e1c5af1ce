"""Every non-public Pyro name aevb relies on lives in :mod:`aevb.pyro_compat`, and this test
fails, naming it, if an installed Pyro renames or removes one (issue 34)."""

import ast
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer.mcmc import HMC, MCMC
from torch import nn

import aevb
from aevb import pyro_compat
from aevb.pyro_compat import PRIVATE_NAMES

PACKAGE = Path(aevb.__file__).parent


def _instance(owner):
    """An instance of ``owner`` where the name is an instance attribute."""
    if owner is MCMC:
        kernel = HMC(potential_fn=lambda p: (p["u"] ** 2).sum() / 2)
        return MCMC(kernel, num_samples=1, initial_params={"u": torch.zeros(1)})
    return owner()


@pytest.mark.parametrize("owner, name", PRIVATE_NAMES, ids=lambda v: getattr(v, "__name__", v))
def test_every_private_name_still_exists(owner, name):
    where = owner if hasattr(owner, name) else _instance(owner)
    assert hasattr(where, name), f"pyro {pyro.__version__}: {owner.__name__}.{name} is gone"


def test_no_other_module_reaches_a_private_pyro_name():
    """Outside pyro_compat, no attribute of a Pyro object starting with one underscore is
    read (``self._...`` on aevb's own classes is fine)."""
    private = {name for _, name in PRIVATE_NAMES if name.startswith("_")}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "pyro_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private - {"_get_trace"}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert not found, found


def test_replacing_a_stored_parameter_keeps_the_reverse_map_right():
    net = nn.Linear(2, 1)
    pyro.module("net", net)
    name = "net$$$weight"
    fresh = nn.Parameter(torch.zeros(1, 2))
    old = pyro_compat.unconstrained_param(name)
    pyro_compat.replace_unconstrained(name, fresh)
    store = pyro.get_param_store()
    assert pyro_compat.unconstrained_param(name) is fresh
    assert store.param_name(fresh) == name and store.param_name(old) is None
    assert dict(pyro_compat.unconstrained_params())[name] is fresh
