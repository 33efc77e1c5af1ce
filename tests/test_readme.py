"""The README is a front page (issue 38): at most 150 lines, the two commands first, every
relative link pointing to a file of the repository, and every registered name linked to the
page the docs' catalogue gives it."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "scripts"))
import catalogue  # noqa: E402

#: [text](target) and ![alt](target); the target up to a space or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def _lines() -> list[str]:
    return README.read_text().splitlines()


def test_the_readme_is_at_most_150_lines():
    assert len(_lines()) <= 150, f"README.md has {len(_lines())} lines; the manual takes the rest"


def test_the_readme_starts_with_the_two_commands():
    lines = [line for line in _lines() if line.strip()]
    assert lines[0].startswith("# ")
    assert lines[1].startswith("```")
    assert lines[2].split()[:2] == ["make", "demo"], lines[2]
    assert lines[3].split()[:2] == ["make", "test"], lines[3]
    assert lines[4] == "```"
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile


def test_every_relative_link_in_the_readme_exists():
    targets = LINK.findall(README.read_text())
    assert len(targets) >= 20
    missing = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https:, mailto:, an anchor in the page
        path = target.split("#")[0]
        if not (ROOT / path).exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_registered_name_links_to_its_page():
    text = README.read_text()
    missing = []
    for kind, registry in catalogue.registries().items():
        for name in registry:
            link = f"[`{name}`](docs/{catalogue.PAGES[kind][name]}.rst)"
            if link not in text:
                missing.append(f"{kind} {link}")
    assert not missing, f"README.md's table lacks (scripts/catalogue.py PAGES): {missing}"


def test_the_headline_table_is_its_results_pages():
    """Every figure of the README's one results table is in the CSV its results page shows
    (``docs/results/beyond_pyro.csv``), row by row, so the two cannot drift apart."""
    import csv

    source = ROOT / "docs" / "results" / "beyond_pyro.csv"
    rows = {
        r["cell"]: ",".join(r.values()).replace("**", "") for r in csv.DictReader(source.open())
    }
    lines = _lines()
    start = lines.index("## One result")
    table = [ln for ln in lines[start:] if ln.startswith("| ")][:20]
    body = [ln for ln in table[1:] if not ln.startswith("|---")]
    assert body, "no table under '## One result'"
    for line in body:
        cell, *values = [v.strip().replace("**", "") for v in line.strip("|").split("|")]
        assert cell in rows, f"README row {cell!r} is not in {source.name}"
        for value in values:
            assert value in rows[cell], f"README {cell}: {value!r} is not in {source.name}"
