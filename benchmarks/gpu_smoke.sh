#!/usr/bin/env bash
# GPU smoke test: run from the repo root on the lent GPU machine (its python3 holds CUDA torch;
# no network). The device tool sets $OUT; carry the git-ignored .devsite/ (the third-party packages
# uniapl imports that the image lacks, for CPython 3.12 x86-64).
#   run(command="bash benchmarks/gpu_smoke.sh", carry=[".devsite"], timeout_s=420)
set -u
OUT=${OUT:-/tmp/gpu_smoke_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || nvidia-smi
export PYTHONPATH=$PWD/.devsite:$PWD/src HF_HUB_OFFLINE=1
# pydantic 2.14 needs typing_extensions >= 4.14 (Sentinel): put the carried 4.16 first only if the image's is older.
python3 -c 'from typing_extensions import Sentinel' 2>/dev/null || export PYTHONPATH=$PWD/.devsite/_te_fallback:$PYTHONPATH
python3 -c 'import sys, uniapl.trainer; print("import uniapl.trainer OK, python", sys.version.split()[0])' \
  || echo "import uniapl.trainer FAILED"
python3 benchmarks/gpu_smoke.py --device cuda --out $OUT 2>&1 | tee $OUT/log.txt
exit "${PIPESTATUS[0]}"
