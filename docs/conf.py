"""Sphinx configuration: ``make docs`` (warnings are errors) and ``make doctest``."""

import hashlib
import os
import sys
from pathlib import Path

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


def _package_digest() -> str:
    """SHA-256 (12 hex digits) of the package's source: the notebooks' outputs depend on it."""
    digest, package = hashlib.sha256(), Path(os.path.abspath("../aevb"))
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]


# notebooks (docs/notebooks/*.md, MyST markdown with a jupytext header): executed when the
# page is read and cached by jupyter-cache, keyed by the notebook's code cells, in a cache
# folder named by the package's source digest; so a rebuild with nothing changed executes
# nothing, and a change to aevb re-executes every notebook. A cell that raises fails the
# build. `make doctest` and the doctest test pass -D nb_execution_mode=off.
nb_execution_mode = "cache"
nb_execution_cache_path = os.path.abspath(f"_build/.jupyter_cache/{_package_digest()}")
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
