"""Stage `world`: prompts (train / in_domain / ood), the writers' corpora and the BPE tokenizer."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from uniapl import ifeval, world
from uniapl.config import load_params
from uniapl.io import atomic_path, exit_fast, write_json, write_jsonl
from uniapl.models import train_tokenizer

FIXED_ANSWERS = ('"<<notes>> i like this a lot. p.s. thanks"', "<<Notes>>\nI like it.", "i like it",
                 "<<notes>>\n* i like it\ni like it a lot. is there anything else i can help with?")


def pass_rate(rows, responses) -> float:
    return sum(all(ifeval.check_strict(r["prompt"], r["instruction_id_list"], r["kwargs"], t))
               for r, t in zip(rows, responses)) / len(rows)


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

    stats = {"n": {k: len(v) for k, v in splits.items()},
             "expert_pass_train": pass_rate(train, expert),
             "student_writer_pass_train": {k: pass_rate(train, v) for k, v in students.items()},
             "expert_mean_words": sum(len(t.split()) for t in expert) / len(expert),
             "student_writer_mean_words": {k: sum(len(t.split()) for t in v) / len(v) for k, v in students.items()},
             "fixed_answer_in_domain": {a: pass_rate(splits["in_domain"], [a] * len(splits["in_domain"]))
                                        for a in FIXED_ANSWERS}}
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
    main(a.params, a.out)
    exit_fast()
