"""The layout in CONTRIBUTING.md is the tree's: every module and script, each with the first
sentence of its docstring (``python scripts/layout.py --write`` rewrites it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import layout  # noqa: E402


def test_contributing_md_lists_every_module_as_the_tree_has_it():
    assert layout.written() == layout.layout(), "run: python scripts/layout.py --write"


def test_every_module_and_script_says_what_it_is():
    for path, what in layout.entries():
        assert len(what) > 10, f"{path}: its docstring's first sentence is {what!r}"
