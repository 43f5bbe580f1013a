# The two entry points the README documents: `make run` and `make test` (everything);
# `make test-fast` is the subset for a quick run while developing (under two minutes on 2 cores).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'

run: install
	$(BIN)/pe-search serve

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# No real server processes, kills, fuzzing or big builds, no PostgreSQL, Ray or browser (pyproject's markers).
FAST_MARKERS := not slow and not postgres and not ray and not browser

# pip runs again only when pyproject.toml changes, so a quick run does not wait on it.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

# ruff (lint rules and format) over all the Python, mypy on app/ and index/, and the layer contracts of pyproject.toml.
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check app index migrations tests bench
	$(BIN)/ruff format --check app index migrations tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
