"""The teaching notebooks (``docs/notebooks``): each is a valid notebook with a budget line and
two or three exercises whose solutions exist, and -- under ``-m notebooks``, the stage
``make test-notebooks`` that ``.ci/run`` runs -- executes top to bottom with its solutions,
whose ``assert`` lines check the answers."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

#: one per tutorial and per capability with a page: models, MCEM, log p(x), gradient estimators
EXPECTED = {
    "fa",
    "vae",
    "cvae",
    "gmvae",
    "vrnn",
    "mcem",
    "loglik",
    "gradients",
    "own_model",
    "iaf",
    "m2",
    "mcmc_vi",
}


def _exercises(nb) -> list[int]:
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    part = text.split("## Exercises", 1)
    assert len(part) == 2, "no '## Exercises' section"
    return [int(n) for n in re.findall(r"^(\d+)\. \*\*", part[1], re.M)]


def test_every_tutorial_has_a_notebook_and_the_index_lists_them():
    assert set(notebooks.names()) == EXPECTED
    index = (notebooks.SOURCES / "index.rst").read_text()
    for name in EXPECTED:
        assert f"\n   {name}\n" in index, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_structure(name):
    nb = notebooks.notebook(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    first = nb.cells[0].source
    assert first.startswith("# Notebook: "), first[:60]
    assert "*Budget: " in first, "the first cell says what the notebook runs and how long"
    numbers = _exercises(nb)
    assert numbers == list(range(1, len(numbers) + 1)) and 2 <= len(numbers) <= 3, numbers
    solutions = (notebooks.SOLUTIONS / f"{name}.py").read_text()
    for n in numbers:
        assert f"# ## {n}. " in solutions, f"no solution heading for exercise {n}"
    assert solutions.count("assert ") >= len(numbers), "each solution checks its answer"
    merged = notebooks.with_solutions(name)
    assert len(merged.cells) > len(nb.cells)


def test_make_notebooks_writes_valid_ipynb(tmp_path):
    written = notebooks.write(tmp_path)
    assert len(written) == 2 * len(EXPECTED)
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    student = nbformat.read(tmp_path / "vae.ipynb", as_version=4)
    teacher = nbformat.read(tmp_path / "solutions" / "vae.ipynb", as_version=4)
    assert not any("Solutions" in c.source for c in student.cells)
    assert any("Solutions" in c.source for c in teacher.cells)
    # plain Jupyter shows MyST roles raw: the written notebooks link into the built site
    text = "\n".join(c.source for c in student.cells + teacher.cells)
    assert "{doc}" not in text
    site = notebooks.ROOT / "docs" / "_build" / "html"
    for folder, nb in ((tmp_path, student), (tmp_path / "solutions", teacher)):
        links = re.findall(r"\]\(([^)]+\.html)\)", nb.cells[0].source)
        assert links, nb.cells[0].source
        for target in links:
            assert (folder / target).resolve() == (site / "tutorials" / "vae.html").resolve()


@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes_with_its_solutions(name, tmp_path):
    nb = notebooks.execute(notebooks.with_solutions(name), tmp_path)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 1, "the notebook shows at least one figure inline"


def test_a_figure_without_a_path_is_returned_for_the_notebook_to_show(tmp_path):
    """``aevb.plots`` writes a PNG when given a path and returns the closed Figure without
    one (a notebook cell's last expression then shows it once, as the notebooks use it)."""
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.figure import Figure

    from aevb import plots

    images = torch.rand(6, 784)
    written = plots.image_grid(images, tmp_path / "grid.png", ncol=3)
    assert written == tmp_path / "grid.png" and written.read_bytes()[:4] == b"\x89PNG"
    fig = plots.image_grid(images, ncol=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert fig.number not in plt.get_fignums()  # closed: not shown a second time
