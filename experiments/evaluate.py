"""Stage `evaluate_base`: IFEval metrics, teacher-scored log-probs and held-out perplexity of one model.

Writes results/eval/<name>/<split>.json (+ .jsonl responses), results/logp/<name>/in_domain.json and
results/ppl/<name>.json (see uniapl.evaluate.evaluate_and_score). Trained runs are evaluated the same
way at the end of their own stage (experiments/train.py --evaluate).
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse

import torch

from uniapl.config import load_params
from uniapl.errors import run_stage
from uniapl.evaluate import evaluate_and_score
from uniapl.io import exit_fast
from uniapl.models import load_policy, load_tokenizer


def main(params_path: str, model_dir: str, name: str, splits: list[str], world_dir: str, teacher: str | None) -> None:
    p = load_params(params_path)
    torch.set_num_threads(p.pretrain.threads)
    tok = load_tokenizer(model_dir)
    if teacher is not None:
        load_tokenizer(teacher)  # a wrong --teacher fails now, not after the evaluation
    model = load_policy(model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    evaluate_and_score(p, model, tok, name, world_dir, "results", teacher, splits)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="model directory (save_pretrained) or hub id")
    ap.add_argument("--name", required=True, help="name under results/eval/")
    ap.add_argument("--splits", nargs="+", default=["in_domain", "ood"])
    ap.add_argument("--world", default="data/world")
    ap.add_argument("--teacher", default="models/teacher",
                    help="scorer of the log-prob analysis; 'self' when the model is the teacher")
    a = ap.parse_args()
    run_stage(main, a.params, a.model, a.name, a.splits, a.world, None if a.teacher == "self" else a.teacher)
    exit_fast()
