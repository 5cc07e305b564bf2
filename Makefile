# Two commands for a newcomer: `make run` and `make test` (SPEC §2).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/switchboard.toml

.PHONY: run test lint bench clean

$(BIN)/switchboard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/switchboard
	SWITCHBOARD_CONFIG=$(CONFIG) $(BIN)/switchboard serve

test: $(BIN)/switchboard
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(BIN)/switchboard
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(BIN)/switchboard
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/hostile.py

clean:
	rm -rf $(VENV) var .pytest_cache
