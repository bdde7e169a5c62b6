"""Calibration check (not a DVC stage): pass@k at temperature 1 on train prompts, per model."""

from __future__ import annotations

import argparse

import torch

from uniapl.errors import run_stage
from uniapl.evaluate import pass_at_k
from uniapl.io import read_jsonl, write_json
from uniapl.models import load_policy, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["student-s", "student-m", "teacher"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = read_jsonl("data/world/train.jsonl")[: a.n]
    out = {}
    for m in a.models:
        out[m] = pass_at_k(load_policy(f"models/{m}"), load_tokenizer(f"models/{m}"), rows, a.k, 1.0, 160, seed=7)
        print(m, f"pass@{a.k}", out[m])
    write_json("results/calibration_pass_at_k.json", {"n_prompts": a.n, "k": a.k, "pass_at_k": out})


if __name__ == "__main__":
    run_stage(main)
