"""Does ``dtype=bf16`` (torch autocast around the policy forward) survive the DeepSpeed engine's forward?

``experiments/train.py --deepspeed --set dtype=bf16`` wraps the forward of ``trainer.ds_engine`` in
``torch.autocast(bf16)`` (``uniapl.models.sequence_logprobs``); its DeepSpeed config has no
``torch_autocast`` section. DeepSpeed 0.19.8's ``engine.forward`` runs the module inside
``runtime.torch_autocast.autocast_if_enabled``, which, when ``torch.is_autocast_enabled()`` (CUDA autocast)
is on and the engine's own ``torch_autocast`` is off, warns and runs the module with autocast DISABLED.

For ZeRO-2 and ZeRO-3, a tiny Qwen3 and one rank: the logits' dtype of a forward through the engine
under ``torch.autocast(device, bf16)``, with train.py's config and with ``torch_autocast: {enabled: true,
dtype: bfloat16}`` added; and whether one backward + step works in each. Writes OUT/gpu_ds_autocast.json.

    python3 -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/gpu_ds_autocast.py --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
import deepspeed  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402


def tiny_model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=256)
    return Qwen3ForCausalLM(cfg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    ids = torch.randint(0, 400, (2, 12), device=dev)
    res = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
           "deepspeed": deepspeed.__version__, "cases": {}}
    m = tiny_model().to(dev)
    with torch.autocast(dev, dtype=torch.bfloat16):
        res["plain_model_logits_dtype"] = str(m(ids).logits.dtype)
        res["torch.is_autocast_enabled()_inside_autocast"] = torch.is_autocast_enabled()
    for stage in (2, 3):
        for name, extra in (("train_py_config", {}),
                            ("with_torch_autocast", {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}})):
            key = f"zero{stage}/{name}"
            try:
                m = tiny_model().to(dev)
                opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
                cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                       "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
                       "managed_gradient_accumulation": False, "steps_per_print": 10 ** 9, **extra}
                eng, opt, _, _ = deepspeed.initialize(model=m, optimizer=opt, config=cfg)
                with torch.autocast(dev, dtype=torch.bfloat16):
                    out = eng(ids, labels=ids)
                eng.backward(out.loss)
                eng.step()
                res["cases"][key] = {"logits_dtype": str(out.logits.dtype), "loss": out.loss.item(),
                                     "step_ok": True}
            except Exception as e:  # noqa: BLE001
                res["cases"][key] = {"error": repr(e)[:500], "tb": traceback.format_exc()[-2000:]}
            print(key, res["cases"][key], flush=True)
    if torch.distributed.get_rank() == 0:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "gpu_ds_autocast.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res, indent=1), flush=True)


if __name__ == "__main__":
    main()
