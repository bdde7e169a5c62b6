"""Stage `discriminator`: pretrain the POLAR-style discriminator contrastively, then freeze it.

Triples (prompt, reference, positive, negative): the reference is a verifier-passing teacher sample, the
positive a second passing teacher sample for the same prompt (same policy, also correct). The negatives come
in five kinds, in equal shares: a sample of another policy (student-s, student-m), a corrupted teacher
sample (words shuffled), and two hard ones that a style detector cannot reject, so the discriminator has to
read the prompt and the reference: a teacher sample of the same prompt that fails its instructions
(`teacher_failing`), and a passing teacher answer to a different prompt (`other_prompt`). A prompt without two passing samples
uses a failing one as reference or positive (counted in `n_without_two_passing`). Held-out pairwise accuracy is reported per negative kind.
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import random
import time

import torch

from uniapl import ifeval
from uniapl.config import load_params
from uniapl.discriminator import Discriminator, pairwise_accuracy, train_contrastive
from uniapl.errors import run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, write_json
from uniapl.models import decode_responses, encode_prompt, load_policy, load_tokenizer, tiny_qwen3_config
from uniapl.rollout import HFEngine, row_seed


KINDS = ("student-s", "student-m", "corrupted", "teacher_failing", "other_prompt")
"""Negative kinds, assigned in turn (``teacher_failing`` falls back to ``other_prompt`` when a prompt has no
failing teacher sample)."""


def sample(model_dir: str, prompts: list[str], seed: int, max_new_tokens: int) -> list[str]:
    tok = load_tokenizer(model_dir)
    engine = HFEngine(load_policy(model_dir), tok, None)
    ids = [encode_prompt(tok, p) for p in prompts]
    out = engine.generate(ids, [row_seed(seed, 0, i) for i in range(len(ids))], 1.0, max_new_tokens)
    return decode_responses(tok, out.response_ids)  # scored texts: <think> reasoning stripped (hub models)


def main(params_path: str, models: str, demos_path: str, out: str) -> None:
    p = load_params(params_path)
    d = p.discriminator
    torch.set_num_threads(p.pretrain.threads)
    t0 = time.time()
    samples = read_jsonl(demos_path, keys=("key", "prompt", "response", "pass", "instruction_id_list", "kwargs"))
    groups: dict[str, list[dict]] = {}
    for r in samples:
        groups.setdefault(r["key"], []).append(r)
    rng = random.Random(d.seed)
    keys = rng.sample(sorted(groups), min(d.n_prompts, len(groups)))
    rows = [groups[k][0] for k in keys]
    prompts = [r["prompt"] for r in rows]
    cap = p.teacher_demos.max_new_tokens
    second = sample(f"{models}/teacher", prompts, d.seed + 101, cap)
    second_pass = [all(ifeval.check_strict(r["prompt"], r["instruction_id_list"], r["kwargs"], t))
                   for r, t in zip(rows, second)]
    negs = {name: sample(f"{models}/{name}", prompts, d.seed + 202, cap) for name in ("student-s", "student-m")}

    def corrupt(text: str) -> str:
        w = text.split(" ")
        rng.shuffle(w)
        return " ".join(w)

    usable, n_weak = [], 0  # (index, [reference, positive], failing samples left over) per prompt
    for i, k in enumerate(keys):
        passing = [g["response"] for g in groups[k] if g["pass"]] + ([second[i]] if second_pass[i] else [])
        failing = [g["response"] for g in groups[k] if not g["pass"]] + ([] if second_pass[i] else [second[i]])
        ordered = passing + failing  # reference and positive: passing samples first
        n_weak += len(passing) < 2
        usable.append((i, ordered[:2], ordered[2:] if len(passing) < 2 else failing))
    triples = []
    for j, (i, passing, failing) in enumerate(usable):
        kind = KINDS[j % len(KINDS)]
        if kind == "teacher_failing" and not failing:
            kind = "other_prompt"
        if kind == "teacher_failing":
            neg = failing[0]
        elif kind == "other_prompt":  # the next usable prompt's reference: teacher style, correct, off-prompt
            neg = usable[(j + 1) % len(usable)][1][0]
        elif kind == "corrupted":
            neg = corrupt(passing[0])
        else:
            neg = negs[kind][i]
        triples.append({"prompt": prompts[i], "reference": passing[0], "positive": passing[1], "negative": neg,
                        "kind": kind})
    n_test = max(30, len(triples) // 10)
    test, train = triples[:n_test], triples[n_test:]
    tok = load_tokenizer(f"{models}/teacher")
    cfg = tiny_qwen3_config(d, len(tok), pad_token_id=None, eos_token_id=None, max_positions=1024,
                            tie_word_embeddings=False)  # a score head: no LM head to tie
    torch.manual_seed(d.seed)
    disc = Discriminator.from_config(cfg, tok, style="embedded", max_length=d.max_length)
    before = pairwise_accuracy(disc, test)
    final = train_contrastive(disc, train, steps=d.steps, lr=d.lr, batch_size=d.batch_size, seed=d.seed,
                              log_every=50)
    disc.freeze()
    acc = {k: pairwise_accuracy(disc, [t for t in test if t["kind"] == k]) for k in KINDS
           if any(t["kind"] == k for t in test)}
    with atomic_path(out) as tmp:
        disc.save(tmp)
    stats = {"heldout_pairwise_accuracy": pairwise_accuracy(disc, test), "by_negative": acc,
             "n_prompts": len(keys), "n_without_two_passing": n_weak,
             "negatives": {k: sum(t["kind"] == k for t in triples) for k in KINDS},
             "accuracy_before_training": before, "n_train": len(train), "n_test": len(test),
             "final_train": {k: v for k, v in final.items() if isinstance(v, (int, float))},
             "seconds": round(time.time() - t0, 1)}
    write_json("results/discriminator.json", stats)
    print(stats)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--models", default="models")
    ap.add_argument("--demos", default="data/teacher_demos.jsonl")
    ap.add_argument("--out", default="models/discriminator")
    a = ap.parse_args()
    run_stage(main, a.params, a.models, a.demos, a.out)
    exit_fast()
