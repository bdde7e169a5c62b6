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


# Causal LMs whose forward computes exactly ``lm_head(decoder(...).last_hidden_state)`` (no logit scaling
# or soft-capping): for these the LM head can run on the response positions alone.
PLAIN_HEAD_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral")


def plain_head(model):
    """(decoder, lm_head) of a plain-head transformers model; None for anything else (a DeepSpeed engine
    too: its forward must wrap every pass)."""
    if getattr(getattr(model, "config", None), "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if not (hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings")):
        return None
    dec, head = model.get_decoder(), model.get_output_embeddings()
    return None if dec is None or head is None else (dec, head)


def autocast_dtype(name: str) -> torch.dtype | None:
    """The config's ``dtype`` ("bf16" / "fp32") as an autocast dtype; None: no autocast (fp32)."""
    return torch.bfloat16 if name == "bf16" else None


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def encode_response(tokenizer, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """:func:`encode_prompt` of each prompt, in one batched call (the same ids; 2x faster on a corpus)."""
    if not prompts:
        return []
    return tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in prompts],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)


def encode_responses(tokenizer, responses: list[str]) -> list[list[int]]:
    """:func:`encode_response` of each response, in one batched call (the same ids)."""
    if not responses:
        return []
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]


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


def pack_dense(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, capacity: int):
    """Padding-free layout of the same batch: sequences bin-packed into rows of ``capacity`` tokens.

    Returns ``input_ids``, ``position_ids`` and the response ``loss_mask``, all (R, capacity). Positions
    restart at 0 for each sequence, which is how transformers recognises packed sequences (with
    ``attention_mask=None`` and ``use_cache=False`` it builds a block-causal mask, so no token attends
    across sequences; with a cache it silently does not). The
    unused tail of a row is padding with its own positions and loss mask 0. Placement is first-fit
    decreasing (ties by index): deterministic, and on the embedded corpora it fills rows to ~95% where
    right-padding to the longest sequence fills 60-70%. Sequences longer than ``capacity`` are cut from
    the right, as :func:`pack` does with ``max_len``. The token-mean NLL over the loss mask is the same
    number as with :func:`pack`, up to float rounding (tested).
    """
    rows = [(p + r)[:capacity] for p, r in zip(prompt_ids, response_ids)]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for b, room in enumerate(free):
            if len(rows[i]) <= room:
                bins[b].append(i)
                free[b] -= len(rows[i])
                break
        else:
            bins.append([i])
            free.append(capacity - len(rows[i]))
    ids = torch.full((len(bins), capacity), pad_id, dtype=torch.long)
    pos = torch.zeros((len(bins), capacity), dtype=torch.long)
    lmask = torch.zeros((len(bins), capacity), dtype=torch.float32)
    for b, members in enumerate(bins):
        c = 0
        for i in members:
            n, n_prompt = len(rows[i]), min(len(prompt_ids[i]), len(rows[i]))
            ids[b, c: c + n] = torch.tensor(rows[i])
            pos[b, c: c + n] = torch.arange(n)
            lmask[b, c + n_prompt: c + n] = 1.0
            c += n
        pos[b, c:] = torch.arange(capacity - c)  # the tail: one more "sequence" of padding
    return ids, pos, lmask
