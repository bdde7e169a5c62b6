"""Is our GRPO GRPO? Our `grpo` runs and TRL `GRPOTrainer` runs (`experiments/trl_grpo.py`) on the same world,
student, prompts, reward, group size, learning rate and rollouts, compared paired over seeds and test prompts.

The DVC stages `train_s@grpo-*` and `trl_grpo@*` do this inside `dvc repro`; this script runs the same
commands, two at a time side by side, in a scratch tree that links this tree's models/ and data/ (so the
committed results are not touched), and writes the comparison:

    python benchmarks/trl_baseline.py [--seeds 0 1 2 3] [--steps N] [--out results/bench/trl_baseline_<host>.json]

Output: per side and seed, the final in-domain greedy prompt-strict accuracy, the validation curve and the
training-reward curve; the paired difference ours - TRL (``uniapl.paired.compare_models``: effect, 95% CI, p,
MDE) on in_domain and ood, greedy and sampled; the verdict ``equivalent`` / ``differs`` / ``inconclusive``
against ``claims.min_effect``; the host. Needs models/, data/ and results/selection/grpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
from bench_train_slice import host  # noqa: E402


def curve(tree: Path, run: str) -> dict:
    v = json.loads((tree / "results/eval" / run / "validation.json").read_text())
    hist = tree / run / "history.jsonl"
    reward = ([json.loads(x).get("train/reward_mean") for x in hist.read_text().splitlines() if x.strip()]
              if hist.exists() else v.get("reward"))
    return {"steps": v["steps"], "val_prompt_strict": v["prompt_strict"], "train_reward": reward,
            "train_seconds": v["budget"]["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=None, help="default: params.yaml's train.steps")
    ap.add_argument("--student", default="student-s")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", default=None, help="keep the scratch tree here")
    ap.add_argument("--from-tree", default=None, help="no training: compare the runs of a tree kept by --keep")
    ap.add_argument("--wall-seconds", type=float, default=None, help="with --from-tree: the training's wall time, from its log")
    a = ap.parse_args()
    for d in ("models", "data", "results/selection"):
        if not (ROOT / d).is_dir():
            sys.exit(f"error: {ROOT / d}: no such directory (run `dvc repro choose` first)")
    if len(a.seeds) % 2:
        sys.exit("error: --seeds: an even number (the runs go side by side in pairs)")
    from uniapl import paired
    from uniapl.config import load_params

    params = load_params(ROOT / "params.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src"), "WANDB_DISABLED": "true"}
    env.pop("UNIAPL_STAGE_SERVER", None)
    tmp = a.from_tree or tempfile.mkdtemp(prefix="trl_baseline_")
    tree = Path(tmp)
    try:
        if not a.from_tree:
            for d in ("models", "data", "experiments"):
                (tree / d).symlink_to(ROOT / d)
            shutil.copy(ROOT / "params.yaml", tree / "params.yaml")
            shutil.copytree(ROOT / "results/selection", tree / "results/selection")
        steps = ["--set", f"steps={a.steps}"] if a.steps else []
        ours = [f"{sys.executable} experiments/train.py --student {a.student} --method grpo --seed {s} "
                f"--selected results/selection --evaluate {' '.join(steps)}" for s in a.seeds]
        trl = [f"{sys.executable} experiments/trl_grpo.py --student {a.student} --seed {s} --selected results/selection"
               + (f" --steps {a.steps}" if a.steps else "") for s in a.seeds]
        t0 = time.time()
        for cmds in [] if a.from_tree else [ours[i:i + 2] for i in range(0, len(ours), 2)] + [trl[i:i + 2] for i in range(0, len(trl), 2)]:
            subprocess.run([sys.executable, "experiments/side_by_side.py", *cmds], cwd=tree, env=env, check=True)
            print(f"{time.time() - t0:.0f} s: done {len(cmds)} runs", flush=True)
        runs = {side: {f"seed{s}": f"runs/{a.student}/{side}/seed{s}" for s in a.seeds} for side in ("grpo", "trl_grpo")}
        res = tree / "results"
        out = {"student": a.student, "seeds": a.seeds, "steps": a.steps or params.train.get("steps"),
               "chosen": json.loads((ROOT / "results/selection/grpo.json").read_text()).get("chosen"),
               "min_effect": params.claims.min_effect, "wall_seconds": a.wall_seconds if a.from_tree else round(time.time() - t0, 1),
               "host": host(), "date": time.strftime("%Y-%m-%d"), "per_run": {}, "compare": {}}
        for side, models in runs.items():
            for seed, m in models.items():
                ev = json.loads((res / "eval" / m / "in_domain.json").read_text())
                out["per_run"][f"{side}/{seed}"] = {"in_domain_prompt_strict": ev["prompt_strict"],
                                                    "in_domain_prompt_strict_sampled": ev.get("prompt_strict_sampled"),
                                                    "train_seconds_measured": json.loads(
                                                        (tree / m / "metrics.json").read_text())["seconds"],
                                                    **curve(tree, m)}
        for split in ("in_domain", "ood"):
            for metric in ("greedy", "sampled"):
                r = paired.compare_models(res, runs["grpo"], runs["trl_grpo"], split, metric)
                out["compare"][f"{split}/{metric}"] = {
                    "verdict": paired.equivalence_verdict(r, params.claims.min_effect),
                    **{k: r.get(k) for k in ("effect", "ci95", "p", "mde", "mean_a", "mean_b", "n_seeds", "n_prompts")}}
        print(json.dumps(out["compare"], indent=1))
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        if a.from_tree:
            return
        if a.keep:
            shutil.copytree(tree, a.keep, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    main()
