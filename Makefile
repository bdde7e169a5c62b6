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

# `dvc repro` of the embedded default, with a per-stage wall-clock table (results/timing/repro.json).
repro: setup
	$(BIN)/python experiments/timed_repro.py

# Every stage on tiny settings (profiles/quick.yaml) in a temporary copy (.quick/): a smoke run.
quick: setup
	$(BIN)/python experiments/quick.py

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/bench_grpo_vs_trl.py

clean-venv:
	rm -rf $(VENV)
