"""The teaching notebooks: one MyST-markdown source each, turned into .ipynb files or executed.

Sources: ``docs/notebooks/<name>.md`` (the docs build renders and executes them) and the
reference solutions ``docs/notebooks/solutions/<name>.py`` (jupytext percent scripts, run after
the notebook in the same kernel). Nothing here is hand-kept as .ipynb.

    python scripts/notebooks.py --out notebooks             # what `make notebooks` runs
    python scripts/notebooks.py --out notebooks --execute   # the same, with outputs
    python scripts/notebooks.py --run vae                   # execute one with its solutions

``--out D`` writes ``D/<name>.ipynb`` for students and ``D/solutions/<name>.ipynb`` (the
notebook followed by its solutions) for teachers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "notebooks"
SOLUTIONS = SOURCES / "solutions"
#: seconds one cell may run before the execution fails
TIMEOUT_S = 600


def names() -> list[str]:
    """Every notebook, by file stem, in the order of the docs' toctree file names."""
    return sorted(p.stem for p in SOURCES.glob("*.md"))


def notebook(name: str) -> nbformat.NotebookNode:
    """The notebook read from its MyST source."""
    return jupytext.read(SOURCES / f"{name}.md")


def with_solutions(name: str) -> nbformat.NotebookNode:
    """The notebook followed by the cells of its solutions file."""
    nb = notebook(name)
    solutions = jupytext.read(SOLUTIONS / f"{name}.py", fmt="py:percent")
    nb.cells.extend(solutions.cells)
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell top to bottom in a fresh kernel started in ``cwd``; a cell that raises
    raises :class:`nbclient.exceptions.CellExecutionError` naming it."""
    client = NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def plain_links(nb: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """MyST's {doc}`page` roles, which plain Jupyter shows as raw text, as Markdown links into
    the built site (``docs/_build/html``, made by ``make docs``) relative to ``folder``."""
    site = Path(os.path.relpath(ROOT / "docs" / "_build" / "html", folder.resolve()))

    def link(match: re.Match) -> str:
        page = os.path.normpath(f"notebooks/{match.group(1)}")
        return f"[{page}]({(site / page).as_posix()}.html)"

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\{doc\}`([^`<>]+)`", link, cell.source)
    return nb


def write(out: Path, run: bool = False) -> list[Path]:
    """Write ``out/<name>.ipynb`` and ``out/solutions/<name>.ipynb`` for every notebook."""
    written = []
    for name in names():
        for nb, path in (
            (notebook(name), out / f"{name}.ipynb"),
            (with_solutions(name), out / "solutions" / f"{name}.ipynb"),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            nb = plain_links(nb, path.parent)
            if run:
                execute(nb, path.parent)
            nbformat.write(nb, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--out D [--execute]`` or ``--run NAME``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the .ipynb files")
    parser.add_argument("--execute", action="store_true", help="store outputs too (slow)")
    parser.add_argument("--run", metavar="NAME", help="execute one notebook and its solutions")
    args = parser.parse_args(argv)
    if args.run:
        start = time.perf_counter()
        execute(with_solutions(args.run), ROOT)
        print(f"{args.run}: executed with its solutions in {time.perf_counter() - start:.1f} s")
        return 0
    if args.out is None:
        parser.error("give --out D or --run NAME")
    for path in write(args.out, args.execute):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
