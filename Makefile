# `make repro` and `make test` each create .venv when it is missing (or when pyproject.toml changed).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test lint ui venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch/torchvision first, exactly pinned: pip takes these builds from local disk
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: venv
	$(BIN)/dvc repro

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

ui: venv
	$(BIN)/galmorph ui
