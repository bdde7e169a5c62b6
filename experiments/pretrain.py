"""Stage `pretrain`: train one tiny Qwen3 (teacher or a student) on its corpus; save it with save_pretrained.

A model given by ``pretrain.models.<name>.name_or_path`` (a hub id such as Qwen/Qwen3-0.6B, or a local
directory) is not trained: its files (weights, config, its own tokenizer and chat template) are copied to
``models/<name>`` byte for byte, and results/pretrain/<name>.json records where they came from.
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import fnmatch
import hashlib
import shutil
import time
from pathlib import Path

import torch

from uniapl.config import load_params
from uniapl.errors import UserError, run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, write_json
from uniapl.models import (OTHER_WEIGHT_PATTERNS, autocast_dtype, build_policy, load_tokenizer, n_params,
                           resolve_pretrained)
from uniapl.supervised import train_lm


def main(params_path: str, name: str, world_dir: str, out: str) -> None:
    p = load_params(params_path)
    if name not in p.pretrain.models:
        raise UserError(f"{params_path}: pretrain.models has no model {name!r} (--model); "
                        f"it has {sorted(p.pretrain.models)}")
    spec = p.pretrain.models[name]
    if spec.name_or_path:
        return record_pretrained(name, spec.name_or_path, out)
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def record_pretrained(name: str, name_or_path: str, out: str) -> None:
    """``models/<name>`` := the files of the hub/local model ``name_or_path`` (no training): every file of
    its directory or cached snapshot except hidden ones and non-safetensors weights, byte for byte, so
    later stages read the model, its own tokenizer and chat template through the same path. Records
    source, name_or_path, revision, the sha256 of each weight file and the parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src, revision = resolve_pretrained(name_or_path)
    tok = load_tokenizer(src)  # its own tokenizer (never the world's): fails early when it has none
    if not tok.chat_template:
        raise UserError(f"{name_or_path}: the tokenizer has no chat template (pretrain.models.{name}.name_or_path "
                        f"needs an instruction/chat model, e.g. Qwen/Qwen3-0.6B)")
    files = sorted(f.relative_to(src) for f in src.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(src).parts)
                   and not any(fnmatch.fnmatch(f.name, pat) for pat in OTHER_WEIGHT_PATTERNS))
    weights = [f for f in files if f.name.endswith(".safetensors")]
    if not weights:
        raise UserError(f"{name_or_path}: no safetensors weights in {src} (every stage loads safetensors only)")
    cfg = AutoConfig.from_pretrained(str(src))
    with torch.device("meta"):  # the parameter count without reading the weights
        count = n_params(AutoModelForCausalLM.from_config(cfg))
    with atomic_path(out) as tmp:
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f, tmp / f)  # follows the cache's symlinks to its blobs
    sha = {f.as_posix(): _sha256(Path(out) / f) for f in weights}
    write_json(f"results/pretrain/{name}.json", {"source": "hub", "name_or_path": name_or_path,
                                                  "revision": revision, "sha256": sha, "params": count})
    print(name, name_or_path, f"revision {revision}", count, "params", "(copied, not trained)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--world", default="data/world")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    run_stage(main, a.params, a.model, a.world, a.out or f"models/{a.model}")
    exit_fast()
