"""The tiny random Qwen3 both vLLM test modules save in the hub layout and load in vLLM and transformers."""

from types import SimpleNamespace

import torch
from transformers import Qwen3ForCausalLM

from uniapl.models import tiny_qwen3_config, train_tokenizer

TEXTS = ["Write a note about cats. Answer in lowercase.", "cats are nice. i like cats a lot.",
         "<<Cats>>\nCats are simple to enjoy.", "Well, to be honest, I really think that cats are good."] * 20
"""The tokenizer's training texts."""
ARCH = SimpleNamespace(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=64)
"""The model's shape (head_dim 64: vLLM's CPU attention kernels take it)."""


def save_tiny_qwen3(directory, texts: list[str], arch):
    """A 300-token BPE on ``texts`` and a random Qwen3 of shape ``arch`` (seed 0), saved together in
    ``directory``; returns (tokenizer, model in eval mode). ``initializer_range`` 0.2: at the default 0.02
    greedy decoding repeats one token and samples barely vary (weak checks, equal rewards in a group)."""
    tok = train_tokenizer(texts, 300)
    torch.manual_seed(0)
    cfg = tiny_qwen3_config(arch, len(tok), tok.pad_token_id, tok.eos_token_id)
    cfg.initializer_range = 0.2
    model = Qwen3ForCausalLM(cfg).eval()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return tok, model
