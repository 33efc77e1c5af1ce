# Every target creates .venv and installs the package first, so each works from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-all lint format bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/aevb demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check aevb tests scripts
	$(BIN)/ruff format --check aevb tests scripts
	$(BIN)/mypy aevb

format: install
	$(BIN)/ruff check --fix aevb tests scripts
	$(BIN)/ruff format aevb tests scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
