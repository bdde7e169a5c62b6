"""Stage `pretrain`: train one tiny Qwen3 (teacher or a student) on its corpus; save it with save_pretrained."""

from __future__ import annotations

import argparse
import time

import torch

from uniapl.config import load_params
from uniapl.errors import UserError, run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, write_json
from uniapl.models import autocast_dtype, build_policy, load_tokenizer, n_params
from uniapl.supervised import train_lm


def main(params_path: str, name: str, world_dir: str, out: str) -> None:
    p = load_params(params_path)
    if name not in p.pretrain.models:
        raise UserError(f"{params_path}: pretrain.models has no model {name!r} (--model); "
                        f"it has {sorted(p.pretrain.models)}")
    spec = p.pretrain.models[name]
    torch.set_num_threads(p.pretrain.threads)
    corpus = read_jsonl(f"{world_dir}/corpus_{spec.corpus}.jsonl", keys=("prompt", "response"))
    tok = load_tokenizer(f"{world_dir}/tokenizer")
    model = build_policy(spec, tok, seed=p.pretrain.seed)
    t0 = time.time()
    losses = train_lm(model, tok, [(r["prompt"], r["response"]) for r in corpus], spec.steps, spec.lr,
                      spec.batch_size, spec.warmup, p.pretrain.seed, p.pretrain.max_len,
                      autocast_dtype(p.pretrain.dtype))
    secs = time.time() - t0
    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    write_json(f"results/pretrain/{name}.json", {"params": n_params(model), "steps": spec.steps,
                                                  "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                                                  "seconds": round(secs, 1)})
    print(name, n_params(model), "params", f"{secs:.0f}s", "loss", losses[-1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--world", default="data/world")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    run_stage(main, a.params, a.model, a.world, a.out or f"models/{a.model}")
    exit_fast()
