"""Two training runs side by side with one thread each vs the same two runs one after the other with two
threads each: wall-clock seconds of the pair, as a stage of dvc.yaml runs it (`experiments/train.py ...
--evaluate`, evaluation included), in a scratch tree that links this tree's models/ and data/.

    python benchmarks/bench_side_by_side.py [--method grpo] [--student student-s] [--steps 30] [--repeats 3]
        [--out results/bench/side_by_side_<host>.json]

Each repeat runs both arms, alternating which goes first (machine drift hits both). Prints each arm's seconds per
repeat, then one JSON line: medians, the ratio serial / side-by-side (runs per hour gained), the host's CPU model
and flags. Needs models/ and data/ (`dvc repro discriminator evaluate_base` first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_train_slice import host  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="grpo")
    ap.add_argument("--student", default="student-s")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for d in ("models", "data"):
        if not (ROOT / d).is_dir():
            sys.exit(f"error: {ROOT / d}: no such directory (run `dvc repro discriminator evaluate_base` first)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    env.pop("UNIAPL_STAGE_SERVER", None)  # every run starts its own interpreter, in both arms
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for d in ("models", "data", "experiments"):
            (tree / d).symlink_to(ROOT / d)
        shutil.copy(ROOT / "params.yaml", tree / "params.yaml")
        if (ROOT / "results/selection").is_dir():
            shutil.copytree(ROOT / "results/selection", tree / "results/selection")
        sel = ["--selected", "results/selection"] if (tree / "results/selection").is_dir() else []

        def train(seed: int, threads: int, tag: str) -> str:
            return " ".join([sys.executable, "experiments/train.py", "--student", a.student, "--method", a.method,
                             "--seed", str(seed), "--name", f"{a.method}_{tag}", *sel, "--evaluate",
                             "--set", f"steps={a.steps}", f"threads={threads}", "eval_every=0"])

        def timed(cmds: list[str]) -> float:
            t0 = time.perf_counter()
            subprocess.run(cmds, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        def serial(r: int) -> float:
            return sum(timed(["bash", "-c", train(s, 2, f"serial{r}")]) for s in (0, 1))

        def pair(r: int) -> float:
            return timed([sys.executable, "experiments/side_by_side.py", train(0, 1, f"pair{r}"),
                          train(1, 1, f"pair{r}")])

        res = {"serial": [], "side_by_side": []}
        for r in range(a.repeats):
            order = (("serial", serial), ("side_by_side", pair)) if r % 2 == 0 else (("side_by_side", pair), ("serial", serial))
            for name, fn in order:
                res[name].append(fn(r))
                print(f"repeat {r} {name}: {res[name][-1]:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {"method": a.method, "student": a.student, "steps": a.steps, "repeats": a.repeats,
           "seconds": res, "median_seconds": med, "ratio_serial_over_side_by_side": med["serial"] / med["side_by_side"],
           "host": host(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
