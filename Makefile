# `make repro` and `make test` each create .venv when it is missing (or when pyproject.toml changed).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test lint ui venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# constraints.txt pins the exact torch builds that pip takes from local disk on these machines
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

repro: venv
	$(BIN)/dvc repro

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

ui: venv
	$(BIN)/galmorph ui
