"""Sphinx configuration: ``make docs`` (warnings are errors) and ``make doctest``."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "aevb"
author = "the aevb developers"
copyright = "2026, the aevb developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.napoleon",
]

# docstrings use Sphinx field lists (:param x:); napoleon only reads their "Example:" and
# "References:" sections
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
nitpicky = False

exclude_patterns = ["_build", "README.md", "figures/*.csv", "_generated/*.csv"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "Deep latent-variable models as Pyro model/guide pairs"}

# doctest: every ``>>>`` block in the pages and in the autodoc'd docstrings runs
doctest_global_setup = """
import torch, pyro
pyro.clear_param_store()
pyro.set_rng_seed(0)
torch.set_num_threads(1)
"""
