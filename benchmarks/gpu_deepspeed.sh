#!/usr/bin/env bash
# DeepSpeed ZeRO-2/3 check on the lent GPU machine (one GPU, NCCL, torchrun --nproc_per_node 1): builds
# the tests' tiny world and runs experiments/train.py --deepspeed with the checks of
# tests/test_distributed.py (see benchmarks/gpu_deepspeed.py). Carry the git-ignored .devsite/: the
# pure-Python packages the image lacks, plus _ds_site.zip (DeepSpeed 0.19.8 without compiled ops, hjson,
# dvclive and the dvc packages it imports), unpacked here to /tmp/ds_site.
#   run(command="bash benchmarks/gpu_deepspeed.sh; bash benchmarks/gpu_smoke.sh", carry=[".devsite"])
# CPU dry run (gloo, DS_ACCELERATOR=cpu): DS_DRY_RUN_CPU=1 bash benchmarks/gpu_deepspeed.sh
# (PYTHON picks the interpreter, PYTHONPATH_PRE is put first on PYTHONPATH: both for dry runs only).
set -u
OUT=${OUT:-/tmp/gpu_deepspeed_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
DS_SITE=/tmp/ds_site
rm -rf "$DS_SITE" && mkdir -p "$DS_SITE" && "$PY" -m zipfile -e .devsite/_ds_site.zip "$DS_SITE" || {
  echo "FAIL  unpack .devsite/_ds_site.zip (carry .devsite; rebuild it with .devsite/_build_devsite.py)"; exit 1; }
export PYTHONPATH=${PYTHONPATH_PRE:+$PYTHONPATH_PRE:}$PWD/.devsite:$DS_SITE:$PWD/src
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DS_BUILD_OPS=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
if [ -n "${DS_DRY_RUN_CPU:-}" ]; then
  export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES=""
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || nvidia-smi
fi
# pydantic 2.14 needs typing_extensions >= 4.14 (Sentinel): the carried 4.16 goes first only if the image's is older.
"$PY" -c 'from typing_extensions import Sentinel' 2>/dev/null || export PYTHONPATH=$PWD/.devsite/_te_fallback:$PYTHONPATH
set -o pipefail
timeout "${DS_TIMEOUT:-330}" "$PY" benchmarks/gpu_deepspeed.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_deepspeed.log"
rc=$?
echo "gpu_deepspeed.sh: exit $rc"
exit $rc
