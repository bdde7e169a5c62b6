"""Stage `evaluate`: IFEval metrics of one model on one split -> results/eval/<name>/<split>.json (+ .jsonl)."""

from __future__ import annotations

import argparse
import time

import torch

from uniapl.config import load_params
from uniapl.evaluate import evaluate_model
from uniapl.io import read_jsonl, write_json, write_jsonl
from uniapl.models import load_policy, load_tokenizer


def main(params_path: str, model_dir: str, name: str, splits: list[str], world_dir: str) -> None:
    p = load_params(params_path)
    e = p.evaluate
    torch.set_num_threads(p.pretrain.threads)
    tok = load_tokenizer(model_dir)
    model = load_policy(model_dir)
    for split in splits:
        t0 = time.time()
        rows = read_jsonl(f"{world_dir}/{split}.jsonl")
        metrics, out_rows = evaluate_model(model, tok, rows, e.max_new_tokens, e.n_sampled, e.temperature, e.seed, e.batch_size)
        metrics["seconds"] = round(time.time() - t0, 1)
        write_jsonl(f"results/eval/{name}/{split}.jsonl", out_rows)
        write_json(f"results/eval/{name}/{split}.json", metrics)
        print(name, split, {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="model directory (save_pretrained) or hub id")
    ap.add_argument("--name", required=True, help="name under results/eval/")
    ap.add_argument("--splits", nargs="+", default=["in_domain", "ood"])
    ap.add_argument("--world", default="data/world")
    a = ap.parse_args()
    main(a.params, a.model, a.name, a.splits, a.world)
