"""Build, load and save policies and tokenizers: tiny Qwen3 models (embedded) or hub models (paper).

One masking convention for the whole codebase: a sequence is ``prompt_ids + response_ids`` where
``prompt_ids`` is the chat template with the generation prompt and ``response_ids`` ends with the
end-of-turn token; the loss mask is 1 exactly on the response tokens (the end-of-turn token included,
so models learn to stop).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# Qwen-style chat markup, so the embedded world and Qwen3 at paper scale share one format.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``, wrapped as a transformers fast tokenizer with the template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                                   additional_special_tokens=[IM_START])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_qwen3_config(spec, vocab_size: int, pad_token_id: int, eos_token_id: int, max_positions: int = 512) -> Qwen3Config:
    """A scaled-down Qwen3 (same architecture as Qwen3-0.6B/4B: GQA, q/k RMSNorm, SwiGLU, RoPE)."""
    return Qwen3Config(vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                       num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                       num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                       max_position_embeddings=max_positions, tie_word_embeddings=True,
                       pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None)


def build_policy(spec, tokenizer, seed: int) -> torch.nn.Module:
    """A fresh tiny Qwen3 (embedded) or a pretrained hub/local model when ``spec.name_or_path`` is set."""
    if spec.name_or_path:
        return load_policy(spec.name_or_path)
    torch.manual_seed(seed)
    cfg = tiny_qwen3_config(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    return Qwen3ForCausalLM(cfg)


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """``AutoModelForCausalLM`` for a saved run or a hub id such as ``Qwen/Qwen3-0.6B`` (safetensors only)."""
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                trust_remote_code=trust_remote_code)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def encode_response(tokenizer, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, max_len: int | None = None):
    """Right-padded ``input_ids``, ``attention_mask`` and the response ``loss_mask`` (all (B, T)).

    ``loss_mask[b, t] = 1`` when token ``t`` of row ``b`` is a response token; the logits that predict
    it sit at position ``t - 1``. Sequences longer than ``max_len`` are cut from the right.
    """
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    if max_len is not None:
        rows = [r[:max_len] for r in rows]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    lmask = torch.zeros((len(rows), T), dtype=torch.float32)
    for b, (p, row) in enumerate(zip(prompt_ids, rows)):
        ids[b, : len(row)] = torch.tensor(row)
        attn[b, : len(row)] = 1
        lmask[b, len(p): len(row)] = 1.0
    return ids, attn, lmask
