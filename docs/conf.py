"""Sphinx configuration: ``make docs`` (warnings are errors) and ``make doctest``."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

project = "aevb"
author = "the aevb developers"
copyright = "2026, the aevb developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "offline_mathjax",  # MathJax from the built site (fetched once, checksum-verified)
    "myst_nb",  # the notebooks: MyST markdown, executed at build time, cached
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

exclude_patterns = ["_build", "README.md", "figures/*.csv", "_generated/*.csv", "_ext"]
html_theme = "furo"
html_title = "aevb"
html_static_path = ["_static"]
html_css_files = ["aevb.css"]
pygments_style = "friendly"
pygments_dark_style = "monokai"

# MathJax 3 (the local copy offline_mathjax serves); myst-nb adds its class filter to this dict
mathjax3_config = {"tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}

# notebooks (docs/notebooks/*.md, MyST markdown with a jupytext header): executed when the
# page is read and cached by jupyter-cache, so a rebuild with no changed notebook executes
# nothing; a cell that raises fails the build. `make doctest` and the doctest test pass
# -D nb_execution_mode=off.
nb_execution_mode = "cache"
nb_execution_cache_path = os.path.abspath("_build/.jupyter_cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]

# doctest: every ``>>>`` block in the pages and in the autodoc'd docstrings runs
doctest_global_setup = """
import torch, pyro
pyro.clear_param_store()
pyro.set_rng_seed(0)
torch.set_num_threads(1)
"""
