# Two commands do everything on a fresh machine: `make repro` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DS_BUILD_OPS := 0
export DS_ACCELERATOR := cpu
# Stage commands call `python`/`dvc`: the project's venv comes first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test quick bench clean-venv

# The venv is rebuilt when the declared dependencies change.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first (a looser pin could pull a multi-GB CUDA build).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

repro: setup
	dvc repro

quick: setup
	UNIAPL_PROFILE=quick $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/bench_grpo_vs_trl.py

clean-venv:
	rm -rf $(VENV)
