"""Stage `teacher_demos`: teacher samples of the training prompts, with verdicts and log-probs (the SFT data).

`teacher_demos.n_samples` samples per prompt; with `only_passing` the SFT pool is every passing sample
(`uniapl.demos.demo_pools`), and the stage reports the pass rate and the coverage (share of prompts with at least
one passing sample).

Backends: `hf` (the embedded teacher, transformers), `vllm` (offline engine) or `openai` (any
OpenAI-compatible server, e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507`) at paper scale: concurrent
requests with retries, finished shards kept in `<out stem>.shards/` so a restarted stage resumes
(`uniapl.demos.openai_demos`; `python -m uniapl.chat_server --model models/teacher` serves the embedded
teacher the same way, for a run of this path on a CPU).
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import shutil
import time
from pathlib import Path

import torch

from uniapl.config import load_params
from uniapl.demos import demo_pools, generate_demos
from uniapl.errors import run_stage
from uniapl.io import exit_fast, read_jsonl, write_json, write_jsonl


def main(params_path: str, teacher: str, prompts: str, out: str) -> None:
    p = load_params(params_path)
    torch.set_num_threads(p.pretrain.threads)
    rows = read_jsonl(prompts, keys=("key", "prompt", "instruction_id_list", "kwargs"))
    if p.teacher_demos.n_prompts is not None:  # the first n training prompts (the world shuffles them)
        rows = rows[: p.teacher_demos.n_prompts]
    t0 = time.time()
    shards = Path(out).with_name(Path(out).stem + ".shards")  # openai backend: finished shards (resume)
    demos = generate_demos(p.teacher_demos, teacher, rows, work_dir=shards)
    pass_rate = sum(d["pass"] for d in demos) / len(demos)
    write_jsonl(out, demos)  # every sample, with its verdict: only_passing filters the SFT pool only
    _, sft = demo_pools(demos, p.teacher_demos.only_passing)
    covered = len({d["key"] for d in demos if d["pass"]})
    stats = {"n_prompts": len(rows), "n_samples_per_prompt": p.teacher_demos.n_samples, "n_kept": len(sft),
             "pass_rate": pass_rate, "coverage": covered / len(rows),
             "pass_rate_first_sample": sum(d["pass"] for d in demos if d["sample"] == 0) / len(rows),
             "mean_tokens": sum(d["n_tokens"] for d in demos) / len(demos),
             "truncated": sum(d["truncated"] for d in demos) / len(demos), "seconds": round(time.time() - t0, 1)}
    write_json("results/teacher_demos.json", stats)
    shutil.rmtree(shards, ignore_errors=True)  # the stage is done: nothing to resume
    print(stats)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--teacher", default="models/teacher")
    ap.add_argument("--prompts", default="data/prompts/train.jsonl", help="the train pool of stage `prompts`")
    ap.add_argument("--out", default="data/teacher_demos.jsonl")
    a = ap.parse_args()
    run_stage(main, a.params, a.teacher, a.prompts, a.out)
    exit_fast()
