"""The tiny random Qwen3 both vLLM test modules save in the hub layout and load in vLLM and transformers."""

import torch
from transformers import Qwen3ForCausalLM

from uniapl.models import tiny_qwen3_config, train_tokenizer


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
