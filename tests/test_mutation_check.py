"""Every mutant of ``scripts/mutation_check.py`` still plants its bug: its text occurs exactly
once in its file. A refactor that moves the text makes the mutant ``stale`` (it would test
nothing); this fails in ``make test`` instead of waiting for the next mutation run."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "mutation_check", ROOT / "scripts" / "mutation_check.py"
)
assert _spec is not None and _spec.loader is not None
mutation_check = importlib.util.module_from_spec(_spec)
sys.modules["mutation_check"] = mutation_check  # its dataclasses look their module up
_spec.loader.exec_module(mutation_check)


@pytest.mark.parametrize("mutant", mutation_check.MUTANTS, ids=lambda m: m.id)
def test_the_mutant_text_occurs_once(mutant):
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, (
        f"{mutant.id}: its text occurs {source.count(mutant.old)} times in {mutant.path}; "
        "update the mutant's old/new to plant the same bug in the new code"
    )
    assert mutant.old != mutant.new
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).exists(), f"{mutant.id}: no {test}"


def test_mutant_ids_are_unique():
    ids = [m.id for m in mutation_check.MUTANTS]
    assert len(ids) == len(set(ids))
