"""Stage `discriminator`: pretrain the POLAR-style discriminator contrastively, then freeze it.

Triples (prompt, reference, positive, negative): the reference is the teacher's demonstration, the
positive a second teacher sample for the same prompt (same policy), the negative a sample of another
policy (student-s, student-m) or a corrupted teacher sample (words shuffled). Held-out pairwise
accuracy is reported per negative kind.
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import random
import time

import torch

from uniapl.config import load_params
from uniapl.discriminator import Discriminator, pairwise_accuracy, train_contrastive
from uniapl.errors import run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, write_json
from uniapl.models import decode_responses, encode_prompt, load_policy, load_tokenizer, tiny_qwen3_config
from uniapl.rollout import HFEngine, row_seed


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
    demos = read_jsonl(demos_path, keys=("prompt", "response"))
    rng = random.Random(d.seed)
    rows = rng.sample(demos, min(d.n_prompts, len(demos)))
    prompts = [r["prompt"] for r in rows]
    cap = p.teacher_demos.max_new_tokens
    second = sample(f"{models}/teacher", prompts, d.seed + 101, cap)
    negs = {name: sample(f"{models}/{name}", prompts, d.seed + 202, cap) for name in ("student-s", "student-m")}

    def corrupt(text: str) -> str:
        w = text.split(" ")
        rng.shuffle(w)
        return " ".join(w)

    triples = []
    for i, r in enumerate(rows):
        kind = ("student-s", "student-m", "corrupted")[i % 3]
        neg = corrupt(r["response"]) if kind == "corrupted" else negs[kind][i]
        triples.append({"prompt": r["prompt"], "reference": r["response"], "positive": second[i],
                        "negative": neg, "kind": kind})
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
    acc = {k: pairwise_accuracy(disc, [t for t in test if t["kind"] == k]) for k in ("student-s", "student-m", "corrupted")}
    with atomic_path(out) as tmp:
        disc.save(tmp)
    stats = {"heldout_pairwise_accuracy": pairwise_accuracy(disc, test), "by_negative": acc,
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
