# Every target creates .venv and installs the package first, so each works from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-notebooks lint format bench mutants docs docs-figures docs-check doctest notebooks clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,ray,mlflow,arviz]'
	touch $(STAMP)

demo: install
	$(BIN)/aevb demo

test: install
	$(BIN)/python -m pytest -q -m "not notebooks"

# every teaching notebook run top to bottom with its exercise solutions (~3 min; .ci/run runs it)
test-notebooks: install
	$(BIN)/aevb data fetch mnist
	$(BIN)/python -m pytest -q -m notebooks

# the notebooks as .ipynb: notebooks/<name>.ipynb for students, notebooks/solutions/ for teachers
notebooks: install
	$(BIN)/python scripts/notebooks.py --out notebooks

lint: install
	$(BIN)/ruff check aevb tests scripts
	$(BIN)/ruff format --check aevb tests scripts
	$(BIN)/mypy aevb

# the benchmark of issue 8 (~8 min; BENCH_FLAGS=--quick for ~1 min, --json for one object)
bench: install
	$(BIN)/aevb data fetch mnist
	$(BIN)/python scripts/bench.py $(BENCH_FLAGS)

# plant known bugs one at a time and report which the tests catch (~10 min; not part of test)
mutants: install
	$(BIN)/python scripts/mutation_check.py $(MUTANT_FLAGS)

# the documentation site: figures from the repo's scripts first (~3 min, once), then Sphinx
# with warnings as errors, executing the notebooks (cached in docs/_build/.jupyter_cache);
# MathJax is fetched once from the npm registry and served by the site (docs/_ext).
# Open docs/_build/html/index.html
docs: install docs/_generated/.stamp
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# the built site opened in headless Chromium with no outside host reachable: the math is
# typeset by the site's own MathJax and nothing scrolls sideways (Debian: apt-get install chromium)
docs-check: docs
	$(BIN)/python scripts/check_offline_math.py docs/_build/html --screenshot-dir docs/_build/screenshots

docs-figures: install
	rm -f docs/_generated/.stamp
	$(MAKE) docs/_generated/.stamp

docs/_generated/.stamp:
	$(BIN)/python scripts/docs_figures.py --out docs/_generated
	touch $@

# every >>> example in the pages and in the docstrings they include
doctest: install
	$(BIN)/sphinx-build -W --keep-going -q -b doctest -D nb_execution_mode=off docs docs/_build/doctest

format: install
	$(BIN)/ruff check --fix aevb tests scripts
	$(BIN)/ruff format aevb tests scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache docs/_build notebooks
