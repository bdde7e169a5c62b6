"""Training runs per hour on a fixed slice of the pipeline: the 18 `train_s` runs (6 methods x 3 seeds), each
run by its DVC stage's command (`experiments/train.py ... --evaluate`, evaluation included), one after the
other, in a tree that holds the pipeline's inputs (models/, data/).

    python benchmarks/bench_train_slice.py TREE OUT.json [--server]

`--server`: the stages run as `make repro` runs them, in the warm interpreter of `uniapl.stage_server`
(its start is counted). To compare two commits side by side on one machine (docs/performance.md):

    git worktree add /tmp/base 157e508 && ln -s $PWD/models /tmp/base/models && ln -s $PWD/data /tmp/base/data
    python benchmarks/bench_train_slice.py /tmp/base /tmp/base.json
    python benchmarks/bench_train_slice.py . /tmp/new.json --server    # writes runs/ and results/ of TREE

Prints each run's wall-clock seconds, then one JSON line: total seconds, median run, runs per hour and RL
rollout tokens per wall-clock second (generated tokens of every RL step, from each run's DVCLive
`train/response_len` curve x batch_rl x group_size), with the host's CPU model and flags.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("sft", "a_sft", "grpo", "chord", "a_chord", "uniapl")
SEEDS = (0, 1, 2)


def host() -> dict:
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": model, "flags": [f for f in keep if f in flags], "cpus": os.cpu_count()}


def main(tree: Path, out: Path, server: bool) -> dict:
    import yaml
    tree = tree.resolve()
    train = yaml.safe_load((tree / "params.yaml").read_text())["train"]
    per_step = train["batch_rl"] * train["group_size"]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    ctx = None
    if server:
        sys.path.insert(0, str(tree / "src"))
        from uniapl.stage_server import StageServer
        ctx = StageServer(env)
        env = ctx.__enter__()
    t_server = time.time() - t0
    runs = []
    try:
        for m in METHODS:
            for seed in SEEDS:
                s = time.time()
                r = subprocess.run([sys.executable, "experiments/train.py", "--student", "student-s", "--method", m,
                                    "--seed", str(seed), "--evaluate"], cwd=tree, env=env, capture_output=True, text=True)
                dt = time.time() - s
                if r.returncode:
                    sys.exit(f"{m} seed {seed} failed ({r.returncode}):\n{r.stderr[-3000:]}")
                if "running in this process" in r.stderr:
                    sys.exit(f"{m} seed {seed}: the stage server was not used:\n{r.stderr[-1000:]}")
                tsv = tree / f"runs/student-s/{m}/seed{seed}/dvclive/plots/metrics/train/response_len.tsv"
                toks = 0.0
                if tsv.exists():
                    toks = per_step * sum(float(x.split("\t")[-1]) for x in tsv.read_text().splitlines()[1:])
                runs.append({"method": m, "seed": seed, "seconds": round(dt, 2), "rollout_tokens": toks})
                print(m, seed, round(dt, 1), flush=True)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    total = time.time() - t0
    res = {"tree": str(tree), "server": server, "server_start_s": round(t_server, 1), "total_s": round(total, 1),
           "median_run_s": statistics.median(r["seconds"] for r in runs),
           "runs_per_hour": round(len(runs) * 3600 / total, 1),
           "rollout_tokens_per_s": round(sum(r["rollout_tokens"] for r in runs) / total, 1),
           "host": host(), "runs": runs}
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}))
    return res


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--server"]
    if len(args) != 2:
        sys.exit(__doc__)
    main(Path(args[0]), Path(args[1]), "--server" in sys.argv)
