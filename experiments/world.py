"""Stage `world`: prompts (train / in_domain / ood), the writers' corpora and the BPE tokenizer."""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

from uniapl import ifeval, world
from uniapl.config import load_params
from uniapl.errors import run_stage
from uniapl.io import atomic_path, exit_fast, write_json, write_jsonl
from uniapl.models import train_tokenizer

FIXED_ANSWERS = ('"<<notes>> i like this a lot. p.s. thanks"', "<<Notes>>\nI like it.", "i like it",
                 "<<notes>>\n* i like it\ni like it a lot. is there anything else i can help with?")


def _passes(pairs: list[tuple[dict, str]]) -> list[bool]:
    return [all(ifeval.check_strict(r["prompt"], r["instruction_id_list"], r["kwargs"], t)) for r, t in pairs]


def pass_rates(groups: dict[str, tuple[list[dict], list[str]]], workers: int) -> dict[str, float]:
    """Share of responses that pass every instruction (strict), per group of (rows, responses).

    The checks (about 20k, mostly langdetect in the case checkers) are spread over ``workers`` forked
    processes in fixed chunks; each verdict depends only on its (row, response), so the rates are the
    same for any ``workers``."""
    pairs = [(r, t) for rows, texts in groups.values() for r, t in zip(rows, texts, strict=True)]
    chunks = [pairs[i: i + 500] for i in range(0, len(pairs), 500)]
    if workers > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(workers) as pool:
            verdicts = [v for chunk in pool.map(_passes, chunks) for v in chunk]
    else:
        verdicts = [v for chunk in chunks for v in _passes(chunk)]
    out, i = {}, 0
    for name, (rows, _) in groups.items():
        out[name] = sum(verdicts[i: i + len(rows)]) / len(rows)
        i += len(rows)
    return out


def main(params_path: str, out: str) -> None:
    t0 = time.time()
    cfg = load_params(params_path).world
    splits = world.build_splits(cfg)
    rng = random.Random(cfg.seed + 1)
    train = splits["train"]
    expert = [world.expert_response(r, rng) for r in train]
    students = {name: [world.student_response(r, rng, p) for r in train] for name, p in cfg.follow_prob.items()}
    # Held-out base-corpus text (general-ability check): student-writer answers to in-domain prompts.
    base_name = min(cfg.follow_prob, key=cfg.follow_prob.get)
    heldout_rows = splits["in_domain"][: cfg.n_heldout_base]
    heldout = [world.student_response(r, rng, cfg.follow_prob[base_name]) for r in heldout_rows]

    groups = {"expert": (train, expert), **{f"student:{k}": (train, v) for k, v in students.items()},
              **{f"fixed:{a}": (splits["in_domain"], [a] * len(splits["in_domain"])) for a in FIXED_ANSWERS}}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rates = pass_rates(groups, workers=cpus)
    stats = {"n": {k: len(v) for k, v in splits.items()},
             "expert_pass_train": rates["expert"],
             "student_writer_pass_train": {k: rates[f"student:{k}"] for k in students},
             "expert_mean_words": sum(len(t.split()) for t in expert) / len(expert),
             "student_writer_mean_words": {k: sum(len(t.split()) for t in v) / len(v) for k, v in students.items()},
             "fixed_answer_in_domain": {a: rates[f"fixed:{a}"] for a in FIXED_ANSWERS}}
    with atomic_path(out) as tmp:
        for name, rows in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        write_jsonl(tmp / "corpus_expert.jsonl", [{"prompt": r["prompt"], "response": t} for r, t in zip(train, expert)])
        for name, texts in students.items():
            write_jsonl(tmp / f"corpus_{name}.jsonl", [{"prompt": r["prompt"], "response": t} for r, t in zip(train, texts)])
        write_jsonl(tmp / "base_heldout.jsonl", [{"prompt": r["prompt"], "response": t} for r, t in zip(heldout_rows, heldout)])
        texts = [r["prompt"] for rows in splits.values() for r in rows] + expert + [t for v in students.values() for t in v]
        tok = train_tokenizer(texts, load_params(params_path).tokenizer.vocab_size)
        tok.save_pretrained(str(tmp / "tokenizer"))
    stats["seconds"] = round(time.time() - t0, 1)
    write_json("results/world.json", stats)
    print(stats)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/world")
    a = ap.parse_args()
    run_stage(main, a.params, a.out)
    exit_fast()
