"""Build, load and save policies and tokenizers: tiny Qwen3 models (embedded) or hub models (paper);
pack sequences into batches and score their responses (``sequence_logprobs``).

One masking convention for the whole codebase: a sequence is ``prompt_ids + response_ids`` where
``prompt_ids`` is the chat template with the generation prompt and ``response_ids`` ends with the
end-of-turn token; the loss mask is 1 exactly on the response tokens (the end-of-turn token included,
so models learn to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from uniapl import qwen3_fused

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


def _made_by(path: str) -> str:
    """Where a missing model/tokenizer directory comes from: the DVC stage that writes it, or a flag."""
    parts = Path(path).parts
    if parts[-2:] == ("world", "tokenizer"):
        return "run `dvc repro world` first, or check --world"
    if len(parts) >= 2 and parts[-2] == "models":
        stage = "discriminator" if parts[-1] == "discriminator" else f"pretrain@{parts[-1]}"
        return f"run `dvc repro {stage}` first, or check --models"
    if "runs" in parts:
        return "run the training stage that writes it first (`dvc stage list`), or check the path"
    return "check the path"


def _from_pretrained(load, path: str | Path, kind: str, files: tuple[str, ...], **kwargs):
    """``load(path, **kwargs)`` (a transformers ``from_pretrained``), with a user's mistake in ``path`` as a
    :class:`~uniapl.errors.UserError` naming it instead of transformers' hub-lookup error. ``path`` is a
    local directory when it exists, starts with '.', '/' or '~', has more than one '/' (hub ids are
    ``name`` or ``namespace/name``), or its first component is an existing directory or one the pipeline
    writes (models, data, runs); a local one must hold one of ``files``. Anything else is a hub id: a failed
    lookup (not found, offline) is a UserError too."""
    from uniapl.errors import MissingPathError, UserError

    s = str(path)
    local = Path(s).expanduser()
    first = s.split("/")[0]
    if local.exists() or s.startswith((".", "/", "~")) or s.count("/") > 1 or \
            ("/" in s and (first in ("models", "data", "runs") or Path(first).is_dir())):
        if not local.is_dir():
            raise MissingPathError(f"{s}: no such {kind} directory ({_made_by(s)})")
        if not any((local / f).is_file() for f in files):
            raise MissingPathError(f"{s}: not a {kind} directory (no {' or '.join(files)}; {_made_by(s)})")
        return load(str(local) if s.startswith("~") else s, **kwargs)
    try:
        return load(s, **kwargs)
    except (OSError, ValueError) as e:
        if not _is_hub_lookup_failure(e):
            raise  # disk, permission, gated-repo, format or architecture problems are not a mistyped path
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{s}: no such {kind} directory, and no such model on the Hugging Face Hub ({why}); "
                        f"{_made_by(s)}") from None


# What transformers says (it wraps huggingface_hub's errors in an OSError) when an id names nothing it can
# find: not on disk, not on the Hub, not in the offline cache, or not a valid id at all.
_HUB_LOOKUP_MESSAGES = ("is not a local folder and is not a valid model identifier", "not a valid model identifier",
                        "Repo id must", "We couldn't connect to", "offline mode", "Offline mode",
                        "Cannot find the requested files in the local cache", "does not exist on the Hub")


def _is_hub_lookup_failure(e: BaseException) -> bool:
    """``e`` (or what it wraps) says the id was not found, offline or invalid: a user's mistake."""
    from huggingface_hub import errors as hub_errors
    kinds = tuple(getattr(hub_errors, n) for n in ("RepositoryNotFoundError", "RevisionNotFoundError",
                                                   "LocalEntryNotFoundError", "OfflineModeIsEnabled",
                                                   "HFValidationError") if hasattr(hub_errors, n))
    seen = 0
    while e is not None and seen < 5:
        if (kinds and isinstance(e, kinds)) or any(m in str(e) for m in _HUB_LOOKUP_MESSAGES):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved in a model (or tokenizer) directory, or of a hub id; a missing directory is a
    UserError naming it (see ``_from_pretrained``)."""
    tok = _from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer",
                           ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"),
                           trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_qwen3_config(spec, vocab_size: int, pad_token_id: int | None, eos_token_id: int | None,
                      max_positions: int = 512, tie_word_embeddings: bool = True) -> Qwen3Config:
    """A scaled-down Qwen3 (same architecture as Qwen3-0.6B/4B: GQA, q/k RMSNorm, SwiGLU, RoPE).

    ``spec``: any object with the six ``config.TinyArch`` fields. ``tie_word_embeddings``: policies tie the
    LM head to the embeddings (as Qwen3-0.6B); the discriminator has a score head and ties nothing."""
    return Qwen3Config(vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                       num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                       num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                       max_position_embeddings=max_positions, tie_word_embeddings=tie_word_embeddings,
                       pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None)


def build_policy(spec, tokenizer, seed: int) -> torch.nn.Module:
    """A fresh tiny Qwen3 (embedded) or a pretrained hub/local model when ``spec.name_or_path`` is set."""
    if spec.name_or_path:
        return load_policy(spec.name_or_path)
    torch.manual_seed(seed)
    cfg = tiny_qwen3_config(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    return Qwen3ForCausalLM(cfg)


# Weight formats other than safetensors: never copied from a hub model (every stage loads safetensors only).
OTHER_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot")


def resolve_pretrained(name_or_path: str | Path) -> tuple[Path, str | None]:
    """(local directory, revision) of a model given by path or hub id, read as ``load_policy`` reads it
    (see ``_from_pretrained``): a local directory must hold config.json; a hub id is the snapshot in the
    local Hugging Face cache (``huggingface_hub.snapshot_download``: cache only when ``HF_HUB_OFFLINE`` is
    set, else it may download, safetensors weights only). The revision is the snapshot's commit hash, known
    for a hub id or a path inside the cache (``.../snapshots/<commit>``), else None. A missing directory or
    an unknown/uncached hub id is a UserError."""
    import re

    from huggingface_hub import constants, snapshot_download

    def locate(s: str, **_) -> Path:
        if Path(s).is_dir():
            return Path(s)
        return Path(snapshot_download(s, local_files_only=constants.HF_HUB_OFFLINE,
                                      ignore_patterns=list(OTHER_WEIGHT_PATTERNS)))

    d = _from_pretrained(locate, name_or_path, "model", ("config.json",))
    real = d.resolve()
    rev = real.name if real.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", real.name) else None
    return d, rev


def load_policy(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """``AutoModelForCausalLM`` for a saved run or a hub id such as ``Qwen/Qwen3-0.6B`` (safetensors only);
    a missing directory is a UserError naming it (see ``_from_pretrained``)."""
    return _from_pretrained(AutoModelForCausalLM.from_pretrained, path, "model", ("config.json",), dtype=dtype,
                            use_safetensors=True, trust_remote_code=trust_remote_code)


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


# ----------------------------------------------------------------------------- log-probs of responses
# Rows per block in ``selected_logprobs``: a (256, V) float32 block (2 MB at V=2048, 155 MB at Qwen3's
# 151,936) is worked on while it is in cache instead of streaming several (N, V) temporaries through
# memory. Every op involved is row-wise, so the values do not depend on the block size (tested bitwise).
LOGPROB_BLOCK_ROWS = 256


def selected_logprobs(logits: torch.Tensor, labels: torch.Tensor, with_entropy: bool = False,
                      block_rows: int = LOGPROB_BLOCK_ROWS):
    """log p(label) of each row, and optionally its entropy (no gradient): logits (N, V), labels (N,) ->
    (N,) float32, (N,) float32 or None. One float32 log-softmax per block of ``block_rows`` rows; the
    entropy reuses it. Blocks come from ``Tensor.split`` so the backward pass concatenates the blocks'
    gradients once (a slice would add a zero-filled (N, V) gradient per block)."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but labels has {labels.shape[0]}")
    lps, ents = [], []
    for lg, lb in zip(logits.split(block_rows), labels.split(block_rows)):
        lsm = torch.log_softmax(lg.float(), dim=-1)
        lps.append(lsm.gather(-1, lb[:, None]).squeeze(-1))
        if with_entropy:
            with torch.no_grad():
                p = lsm.exp()
                ents.append(-torch.where(p > 0, p * lsm, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1))
    lp = lps[0] if len(lps) == 1 else torch.cat(lps)
    ent = (ents[0] if len(ents) == 1 else torch.cat(ents)) if with_entropy else None
    return lp, ent


def scatter_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) values -> (B, T) float32 with ``values`` at the N true positions of ``mask`` (row-major), 0 elsewhere."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=values.device).masked_scatter(mask, values.float())


@dataclass
class Batch:
    """Right-padded sequences (the three tensors of :func:`pack`): ids/attn/lmask (B, T); lmask is 1 on
    response tokens."""

    ids: torch.Tensor
    attn: torch.Tensor
    lmask: torch.Tensor


def first_response_position(lmask: torch.Tensor) -> int:
    """Smallest column holding a response token in any row (>= 1); the logits before it are never used."""
    cols = lmask.any(0).nonzero()
    return max(1, int(cols[0])) if len(cols) else lmask.shape[1] - 1


def sequence_logprobs(model, batch: Batch, with_entropy: bool = False, autocast_dtype=None):
    """Per-token log-probs (B, T) aligned with ``batch.lmask`` (position t scores token t; t=0 gets 0),
    and the per-token entropy (no gradient) when ``with_entropy``.

    Every position where ``lmask`` is 0 gets 0. Only response positions go through the LM head and the
    log-softmax: for plain-head models (``PLAIN_HEAD_MODEL_TYPES``) the head runs on the selected hidden
    states; otherwise (a DeepSpeed engine, other architectures) the model's forward computes the logits
    from the first response column on (``logits_to_keep``) and the response positions are selected.
    ``autocast_dtype``: a dtype from :func:`autocast_dtype` (None: fp32, no autocast)."""
    T = batch.ids.shape[1]
    first = first_response_position(batch.lmask)
    m = batch.lmask[:, first:].bool()
    labels = batch.ids[:, first:][m]
    split = plain_head(model)
    with torch.autocast(batch.ids.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        if split is not None:
            dec, head = split
            hidden = (qwen3_fused.hidden_states(model, batch.ids) if qwen3_fused.supports(model)
                      else dec(input_ids=batch.ids, attention_mask=batch.attn).last_hidden_state)
            logits = head(hidden[:, first - 1: T - 1][m])  # (N, V)
        else:
            logits = model(input_ids=batch.ids, attention_mask=batch.attn, logits_to_keep=T - first + 1).logits[:, :-1][m]
    lp, ent = selected_logprobs(logits, labels, with_entropy)
    lp = torch.nn.functional.pad(scatter_rows(lp, m), (first, 0))
    if ent is not None:
        ent = torch.nn.functional.pad(scatter_rows(ent, m), (first, 0))
    return lp, ent


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_prompt(tokenizer, prompt: str, enable_thinking: bool = False) -> list[int]:
    """The chat template of one user turn, with the generation prompt.

    ``enable_thinking``: passed to the template. Qwen3's template reads it: False (the default) renders the
    assistant turn's empty ``<think>\n\n</think>\n\n`` block, so the model answers without reasoning (the
    paper's setting); the embedded world's template ignores it (the same ids either way)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False, enable_thinking=enable_thinking)


def encode_response(tokenizer, response: str) -> list[int]:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_prompts(tokenizer, prompts: list[str], enable_thinking: bool = False) -> list[list[int]]:
    """:func:`encode_prompt` of each prompt, in one batched call (the same ids; 2x faster on a corpus)."""
    if not prompts:
        return []
    return tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in prompts],
                                         add_generation_prompt=True, tokenize=True, return_dict=False,
                                         enable_thinking=enable_thinking)


THINK_START, THINK_END = "<think>", "</think>"


def strip_thinking(text: str) -> str:
    """The answer part of a response: the text after the last ``</think>``, left-stripped, as
    lm-evaluation-harness does for reasoning models (``think_end_token``; the harness's fix for Qwen3). A
    response that opens ``<think>`` and never closes it (cut while reasoning) has no answer: "" (the harness
    would keep such text). Text without ``</think>`` and not starting with ``<think>`` is returned as is."""
    if THINK_END in text:
        return text.split(THINK_END)[-1].lstrip()
    if text.lstrip().startswith(THINK_START):
        return ""
    return text


def thinking_token_ids(tokenizer) -> tuple[int | None, int | None] | None:
    """(id of ``<think>``, id of ``</think>``) when ``</think>`` is an added token of ``tokenizer`` (Qwen3 and
    other reasoning models), else None: the embedded world's tokenizer has none, so its responses are
    decoded exactly as before."""
    added = tokenizer.get_added_vocab()
    return (added.get(THINK_START), added[THINK_END]) if THINK_END in added else None


def decode_responses(tokenizer, response_ids: list[list[int]]) -> list[str]:
    """The texts that are scored (IFEval, the verifier reward, the discriminator, teacher demonstrations):
    each response decoded without special tokens and, for a tokenizer with thinking tokens, with its
    ``<think>...</think>`` reasoning stripped (:func:`strip_thinking`; cut at the token too, so a tokenizer
    that marks the tags special, and drops them when decoding, is stripped as well)."""
    think = thinking_token_ids(tokenizer)
    out = []
    for ids in response_ids:
        if think is None:
            out.append(tokenizer.decode(ids, skip_special_tokens=True))
            continue
        ids, (start, end) = list(ids), think
        if end in ids:
            ids = ids[len(ids) - ids[::-1].index(end):]
            out.append(strip_thinking(tokenizer.decode(ids, skip_special_tokens=True).lstrip()))
        elif ids and ids[0] == start:
            out.append("")
        else:
            out.append(strip_thinking(tokenizer.decode(ids, skip_special_tokens=True)))
    return out


def decode_response(tokenizer, ids: list[int]) -> str:
    """:func:`decode_responses` of one response."""
    return decode_responses(tokenizer, [ids])[0]


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


def sampler_logprobs(logprobs: list[torch.Tensor], lmask: torch.Tensor) -> torch.Tensor:
    """The sampler's per-token log-probs (one tensor per row, the response's tokens in order) laid out as
    ``lmask`` (B, T) of the packed batch (``models.pack``): row b's values at its response positions, 0
    elsewhere. A row whose tensor is empty while its mask is not (an empty response packed as the
    end-of-turn token alone) gets NaN there: no sampler log-prob (``importance_weights`` gives it weight 1)."""
    m = lmask.bool()
    out = torch.zeros(lmask.shape, dtype=torch.float32)
    for b, lp in enumerate(logprobs):
        n = int(m[b].sum())
        if len(lp) == 0 and n:
            out[b, m[b]] = float("nan")
            continue
        if len(lp) != n:
            raise ValueError(f"row {b}: {len(lp)} sampler log-probs for {n} response tokens")
        out[b, m[b]] = lp.float().to(out.device)
    return out
