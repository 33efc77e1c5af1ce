"""The repository's layout, written from the tree itself: every module of the package and
every script with the first sentence of its docstring.

    python scripts/layout.py            # print it
    python scripts/layout.py --write    # put it into CONTRIBUTING.md between its markers

``tests/test_layout.py`` fails when CONTRIBUTING.md's copy differs from what this prints, so
a module added, removed or re-described without ``--write`` is caught.
"""

from __future__ import annotations

import argparse
import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
START, END = "<!-- layout: start (python scripts/layout.py --write) -->", "<!-- layout: end -->"
#: folders listed without their files, and what they hold
FOLDERS = {
    "scripts/configs/": "grid configs for aevb compare (one per table in the docs)",
    "docs/": "the Sphinx site (make docs): concepts/, tutorials/, notebooks/, api/, results/",
    "tests/": "pytest (make test); scripts/mutation_check.py checks that they catch bugs",
}


def first_sentence(path: Path) -> str:
    """The first sentence of the module docstring, Sphinx roles reduced to their text."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", paragraph).replace("``", "")
    # a period then a space ends it, unless it ends an abbreviation (et al., e.g., i.e.)
    match = re.match(r"(.+?(?<!\bal)(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".") + "."


def entries() -> list[tuple[str, str]]:
    """(path, what it is) for every package module and script, in path order."""
    files = sorted(ROOT.glob("aevb/**/*.py")) + sorted(ROOT.glob("scripts/*.py"))
    found = [(str(p.relative_to(ROOT)), first_sentence(p)) for p in files]
    return found + list(FOLDERS.items())


def layout() -> str:
    """The layout as a fenced text block, one wrapped entry per path."""
    lines = ["```text"]
    for path, what in entries():
        wrapped = textwrap.wrap(what, width=96 - 4)
        lines.append(path)
        lines.extend("    " + line for line in wrapped)
    lines.append("```")
    return "\n".join(lines)


def written() -> str:
    """The layout as CONTRIBUTING.md holds it (between the markers)."""
    text = CONTRIBUTING.read_text()
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="update CONTRIBUTING.md")
    args = p.parse_args()
    if not args.write:
        print(layout())
        return
    text = CONTRIBUTING.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    CONTRIBUTING.write_text(f"{head}{START}\n{layout()}\n{END}{tail}")


if __name__ == "__main__":
    main()
