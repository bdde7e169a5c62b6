"""Fixed POLAR-style discriminator for UniAPL's adversarial signal.

UniAPL (arXiv 2509.25148) scores each policy response *relative to an expert
reference for the same prompt* with a policy-discriminative reward model (POLAR,
arXiv 2507.05197; ``internlm/POLAR-1_8B`` / ``internlm/POLAR-7B``).  The score is
sentence level (one unbounded scalar per response): higher means "the candidate
looks like it came from the same policy as the reference".

POLAR input format (as found)
-----------------------------
Source: ``InternLM/xtuner``, file ``xtuner/utils/rm_utils.py``
(``RewardModelClient._encode``, commit 00796c17f118af10a9ec17351fab2fd780236647),
which the POLAR README (``InternLM/POLAR``, ``README.md``, "Inference with
transformers") names as the encoder to use with ``from xtuner.utils import
RewardModelClient`` (an identical copy lives in ``InternLM/POLAR``
``src/polar/reward_func.py``).  The training-side template is the same, in
``InternLM/xtuner`` ``xtuner/dataset/preference_dataset.py`` (``tokenize_ref``)
with ``reward_token_id = 92527  # use [UNUSED_TOKEN_130] as reward token`` from
``InternLM/POLAR`` ``examples/xtuner_configs/POLAR_1_8B_full_varlenattn_custom_dataset.py``.
The string is built from *plain text* (messages are flattened by joining their
``content`` with ``"\\n"``; no ``<|im_start|>``/``<|im_end|>`` chat markers)::

    {prompt}\\n{reference}<|reward|>{prompt}\\n{output}[UNUSED_TOKEN_130]

i.e. (prompt + reference), the separator special token ``<|reward|>``, then
(prompt + candidate) -- the prompt is repeated -- and finally the reward token
``[UNUSED_TOKEN_130]`` whose output is the score (the last token of the
sequence).  With ``wrapper="pretrain"`` the ``"\\n"`` joins are dropped.  The
tokenizer adds its BOS (``add_special_tokens=True``, as in the README's
``tokenizer(encoded_data, return_tensors='pt', padding=True)``).  One detail
differs between the two upstream copies: the training template omits the
``"\\n"`` when the response is empty, while the inference client's test
(``len(r1) == ""``) is always False and so always inserts it.  We follow the
training template (identical for every non-empty response).

Truncation in the POLAR client (reproduced by :func:`polar_truncate`): each
response is cut to ``max_response_length`` tokens (``response_cut_side``), and the
prompt (which appears twice) is cut *from the left* to
``(max_length - 4 - len(ref) - len(out)) // 2`` tokens.

Loading (README): ``AutoModel.from_pretrained(name, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(name, trust_remote_code=True)`` (remote class
``InternLM2ForRewardModel``); ``rewards = model(**batch)[0].squeeze(-1)`` gives one
scalar per sequence.  Here remote code is only trusted when the user sets
``discriminator.trust_remote_code: true``.

Embedded (tiny, CPU) world
--------------------------
``style="embedded"`` uses chat-template-like markers that our tiny tokenizer has
as special tokens::

    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>reference\\n{reference}<|im_end|>\\n<|im_start|>candidate\\n{candidate}<|im_end|>

scored by ``Qwen3ForSequenceClassification(num_labels=1)`` at the last non-pad
token (the final ``<|im_end|>``).  When a sequence is longer than ``max_length``
the *context* (prompt + reference part) is truncated from the left at token level
so the candidate segment is always kept whole; only if the candidate segment
alone exceeds ``max_length`` are its leftmost tokens dropped (the final,
scored token always survives).

Training objective: POLAR's policy-discriminative pre-training is a
Bradley-Terry ranking loss, ``-log sigmoid(s_pos - s_neg)``, where the positive
is another sample from the reference's policy and the negative a sample from a
different policy (:func:`pairwise_loss`, :func:`train_contrastive`).
:func:`gail_update` reuses it for the GAIL-style co-trained ablation.

Weights are always written as safetensors; ``trust_remote_code`` is never
enabled implicitly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from uniapl import qwen3_fused

logger = logging.getLogger(__name__)

POLAR_SEP_TOKEN = "<|reward|>"
POLAR_REWARD_TOKEN = "[UNUSED_TOKEN_130]"  # id 92527 in the InternLM2 vocab
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STYLES = ("polar", "embedded")
META_FILE = "discriminator.json"
TRUST_HINT = (
    "set `discriminator.trust_remote_code: true` in the config if you trust this "
    "checkpoint's code (POLAR's InternLM2ForRewardModel ships as remote code)"
)


# --------------------------------------------------------------------------- formatting
def _flatten(x: str | Sequence[dict]) -> str:
    """POLAR accepts either a string or a list of chat messages (joined contents)."""
    if isinstance(x, str):
        return x
    return "\n".join(m["content"] for m in x)


def _join(prompt: str, response: str, wrapper: str) -> str:
    if wrapper == "pretrain" or response == "":
        return prompt + response
    return prompt + "\n" + response


def _split_polar(prompt: str, reference: str, candidate: str, wrapper: str = "sft") -> tuple[str, str]:
    return _join(prompt, reference, wrapper) + POLAR_SEP_TOKEN, _join(prompt, candidate, wrapper) + POLAR_REWARD_TOKEN


def _split_embedded(prompt: str, reference: str, candidate: str) -> tuple[str, str]:
    context = f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}reference\n{reference}{IM_END}\n"
    return context, f"{IM_START}candidate\n{candidate}{IM_END}"


def format_split(prompt, reference, candidate, style: str = "polar", wrapper: str = "sft") -> tuple[str, str]:
    """Return ``(context, candidate_part)`` with ``context + candidate_part == format_polar_input(...)``."""
    prompt, reference, candidate = _flatten(prompt), _flatten(reference), _flatten(candidate)
    if style == "polar":
        if wrapper not in ("sft", "pretrain"):
            raise ValueError(f"wrapper must be 'sft' or 'pretrain', got {wrapper!r}")
        return _split_polar(prompt, reference, candidate, wrapper)
    if style == "embedded":
        return _split_embedded(prompt, reference, candidate)
    raise ValueError(f"unknown discriminator format style {style!r}; expected one of {STYLES}")


def format_polar_input(
    prompt: str | Sequence[dict],
    reference: str | Sequence[dict],
    candidate: str | Sequence[dict],
    style: str = "polar",
    wrapper: str = "sft",
) -> str:
    """Build the discriminator input string.

    ``style="polar"``: ``{p}\\n{ref}<|reward|>{p}\\n{cand}[UNUSED_TOKEN_130]`` (POLAR /
    xtuner ``RewardModelClient._encode``; ``wrapper="pretrain"`` drops the ``\\n``).
    ``style="embedded"``: ``<|im_start|>user ... <|im_start|>candidate\\n{cand}<|im_end|>``.
    """
    context, cand = format_split(prompt, reference, candidate, style, wrapper)
    return context + cand


def polar_truncate(
    tokenizer,
    prompt: str,
    reference: str,
    candidate: str,
    max_length: int = 16384,
    max_response_length: int = 4096,
    response_cut_side: str = "right",
) -> tuple[str, str, str]:
    """POLAR client's token-level truncation, returned as decoded text pieces.

    ``response_cut_side="right"`` keeps the beginning of an over-long response (as
    xtuner's training-side ``tokenize_ref`` does); ``"left"`` keeps its end.
    """
    budget = max_length - 4  # reward token, <|reward|>, two "\n"
    ids = [tokenizer.encode(x, add_special_tokens=True) for x in (prompt, reference, candidate)]
    p_ids, r_ids, c_ids = ids
    if len(r_ids) <= max_response_length and len(c_ids) <= max_response_length and (
        len(p_ids) <= (budget - len(r_ids) - len(c_ids)) // 2
    ):
        return prompt, reference, candidate  # nothing to cut: keep the text verbatim

    def cut(x):
        if len(x) <= max_response_length:
            return x
        return x[:max_response_length] if response_cut_side == "right" else x[-max_response_length:]

    r_ids, c_ids = cut(r_ids), cut(c_ids)
    max_prompt = max((budget - len(r_ids) - len(c_ids)) // 2, 0)
    if len(p_ids) > max_prompt:
        p_ids = p_ids[len(p_ids) - max_prompt:]
    dec = lambda x: tokenizer.decode(x, skip_special_tokens=True)  # noqa: E731
    return dec(p_ids), dec(r_ids), dec(c_ids)


# --------------------------------------------------------------------------- model
def _gather_last(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Pick x[b, last attended position] for per-token outputs (B, T[, 1]) or hidden states (B, T, D)."""
    if x.dim() == 3:
        x = x.squeeze(-1)
    idx = attention_mask.long().cumsum(dim=1).argmax(dim=1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


class Discriminator(torch.nn.Module):
    """Sequence-level scalar scorer of (prompt, reference, candidate).

    ``backbone`` is a ``transformers`` model returning one scalar per sequence:
    ``Qwen3ForSequenceClassification(num_labels=1)`` in the embedded world, POLAR's
    remote ``InternLM2ForRewardModel`` at paper scale.  Inputs are right padded;
    the score is read at the last non-pad token.  The module is frozen by default
    (``frozen=True``): ``score`` never builds a graph; use ``unfreeze()`` +
    ``forward`` (or :func:`train_contrastive` / :func:`gail_update`) to train.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        tokenizer,
        style: str = "embedded",
        max_length: int = 512,
        kind: str = "embedded",
        polar_max_response_length: int = 4096,
        polar_response_cut_side: str = "right",
        frozen: bool = True,
    ):
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the discriminator tokenizer needs a pad token")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.style = style
        self.max_length = int(max_length)
        self.kind = kind
        self.polar_max_response_length = int(polar_max_response_length)
        self.polar_response_cut_side = polar_response_cut_side
        cfg = getattr(backbone, "config", None)
        if cfg is not None and getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = tokenizer.pad_token_id
        if frozen:
            self.freeze()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config, tokenizer, style: str = "embedded", max_length: int = 512, frozen: bool = True):
        """Randomly initialised ``Qwen3ForSequenceClassification`` (num_labels=1) from a Qwen3Config."""
        from transformers import Qwen3ForSequenceClassification

        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id
        backbone = Qwen3ForSequenceClassification(config)
        return cls(backbone, tokenizer, style=style, max_length=max_length, kind="embedded", frozen=frozen)

    @classmethod
    def from_polar(
        cls,
        name_or_path: str,
        trust_remote_code: bool = False,
        device: str | torch.device = "cpu",
        dtype: Any = None,
        max_length: int = 16384,
        max_response_length: int = 4096,
        response_cut_side: str = "right",
        frozen: bool = True,
    ) -> "Discriminator":
        """Load a POLAR checkpoint (``internlm/POLAR-1_8B`` / ``-7B``) as in its README.

        ``trust_remote_code`` is passed through exactly as given; if the checkpoint
        needs remote code and it is False, the ``transformers`` error is re-raised
        with a hint to set ``discriminator.trust_remote_code: true``.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            kwargs = {"trust_remote_code": trust_remote_code}
            if dtype is not None:
                kwargs["dtype"] = dtype
            backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            if not trust_remote_code:
                raise RuntimeError(
                    f"could not load POLAR discriminator {name_or_path!r} with trust_remote_code=False: "
                    f"{type(e).__name__}: {e}\nIf the checkpoint ships custom modeling code, {TRUST_HINT}."
                ) from e
            raise
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        disc = cls(
            backbone, tokenizer, style="polar", max_length=max_length, kind="polar",
            polar_max_response_length=max_response_length, polar_response_cut_side=response_cut_side,
            frozen=frozen,
        )
        return disc.to(device)

    # ---------------------------------------------------------------- state
    def freeze(self) -> "Discriminator":
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def unfreeze(self) -> "Discriminator":
        for p in self.parameters():
            p.requires_grad_(True)
        self.train()
        return self

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---------------------------------------------------------------- encoding
    def _ids_one(self, prompt, reference, candidate) -> list[int]:
        tok, L = self.tokenizer, self.max_length
        if self.style == "polar":
            prompt, reference, candidate = (_flatten(x) for x in (prompt, reference, candidate))
            prompt, reference, candidate = polar_truncate(
                tok, prompt, reference, candidate, L, self.polar_max_response_length, self.polar_response_cut_side
            )
        context, cand = format_split(prompt, reference, candidate, self.style)
        ctx_ids = tok.encode(context, add_special_tokens=True)
        cand_ids = tok.encode(cand, add_special_tokens=False)
        n_prefix = len(tok.encode("", add_special_tokens=True))  # e.g. BOS, kept in front
        if len(ctx_ids) + len(cand_ids) <= L:
            return ctx_ids + cand_ids
        prefix, ctx_body = ctx_ids[:n_prefix], ctx_ids[n_prefix:]
        room = L - len(prefix) - len(cand_ids)
        if room > 0:  # truncate the context from the left, keep the candidate whole
            return prefix + ctx_body[len(ctx_body) - room:] + cand_ids
        # candidate alone is too long: keep its rightmost tokens (the scored token survives)
        keep = max(L - len(prefix), 1)
        return prefix + cand_ids[-keep:]

    def encode(self, prompts: Sequence, references: Sequence, candidates: Sequence) -> dict[str, torch.Tensor]:
        """Tokenise + right-pad a batch; returns ``input_ids`` / ``attention_mask`` on ``self.device``."""
        if not (len(prompts) == len(references) == len(candidates)):
            raise ValueError("prompts, references and candidates must have the same length")
        seqs = [self._ids_one(p, r, c) for p, r, c in zip(prompts, references, candidates)]
        T = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        dev = self.device
        return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}

    # ---------------------------------------------------------------- scoring
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Differentiable scores, shape (B,)."""
        bb = self.backbone
        if qwen3_fused.supports(bb) and isinstance(getattr(bb, "score", None), torch.nn.Linear):
            # the embedded Qwen3 classifier: the fused decoder, the score head at the last real token only
            return bb.score(_gather_last(qwen3_fused.hidden_states(bb, input_ids), attention_mask))[:, 0].float()
        out = bb(input_ids=input_ids, attention_mask=attention_mask)
        logits = getattr(out, "logits", None)
        if logits is None:
            logits = out[0] if isinstance(out, (tuple, list)) else out
        if logits.dim() == 3 and logits.shape[1] == input_ids.shape[1] and logits.shape[1] > 1:
            return _gather_last(logits, attention_mask).float()  # per-token output
        return logits.reshape(logits.shape[0], -1)[:, 0].float()

    def score_texts(self, prompts, references, candidates) -> torch.Tensor:
        """Differentiable scores for raw texts (used by the training loops)."""
        return self(**self.encode(prompts, references, candidates))

    @torch.no_grad()
    def score(self, prompts: Sequence, references: Sequence, candidates: Sequence, batch_size: int = 64) -> torch.Tensor:
        """Scores (N,) float32 on CPU; no graph, eval mode (restored afterwards)."""
        n = len(candidates)
        if not (len(prompts) == len(references) == n):
            raise ValueError("prompts, references and candidates must have the same length")
        was_training = self.training
        self.eval()
        try:
            outs = [
                self(**self.encode(prompts[i: i + batch_size], references[i: i + batch_size], candidates[i: i + batch_size])).cpu()
                for i in range(0, n, batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """``save_pretrained`` (safetensors only) + tokenizer + ``discriminator.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {
            "style": self.style,
            "kind": self.kind,
            "max_length": self.max_length,
            "polar_max_response_length": self.polar_max_response_length,
            "polar_response_cut_side": self.polar_response_cut_side,
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if any(path.glob("*.bin")):
            raise RuntimeError(f"non-safetensors weights were written to {path}")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        trust_remote_code: bool = False,
        device: str | torch.device = "cpu",
        frozen: bool = True,
    ) -> "Discriminator":
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            auto = AutoModel if meta.get("kind") == "polar" else AutoModelForSequenceClassification
            backbone = auto.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=True)
        except Exception as e:  # noqa: BLE001
            if not trust_remote_code:
                raise RuntimeError(
                    f"could not load discriminator from {str(path)!r} with trust_remote_code=False: "
                    f"{type(e).__name__}: {e}\nIf the checkpoint ships custom modeling code, {TRUST_HINT}."
                ) from e
            raise
        disc = cls(
            backbone, tokenizer, style=meta["style"], max_length=meta["max_length"], kind=meta.get("kind", "embedded"),
            polar_max_response_length=meta.get("polar_max_response_length", 4096),
            polar_response_cut_side=meta.get("polar_response_cut_side", "right"), frozen=frozen,
        )
        return disc.to(device)


# --------------------------------------------------------------------------- training
def pairwise_loss(s_pos: torch.Tensor, s_neg: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry / POLAR ranking loss: ``-logsigmoid(s_pos - s_neg).mean()``."""
    return -F.logsigmoid(s_pos - s_neg).mean()


def _pair_scores(disc: Discriminator, prompts, refs, pos, neg) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over pos and neg together (shared padding); returns (s_pos, s_neg)."""
    s = disc.score_texts(list(prompts) * 2, list(refs) * 2, list(pos) + list(neg))
    n = len(pos)
    return s[:n], s[n:]


def pairwise_accuracy(disc: Discriminator, triples: Sequence[dict], batch_size: int = 64) -> float:
    """Share of triples with score(positive) > score(negative)."""
    if not triples:
        return float("nan")
    p = [t["prompt"] for t in triples]
    r = [t["reference"] for t in triples]
    sp = disc.score(p, r, [t["positive"] for t in triples], batch_size=batch_size)
    sn = disc.score(p, r, [t["negative"] for t in triples], batch_size=batch_size)
    return (sp > sn).float().mean().item()


def train_contrastive(
    disc: Discriminator,
    triples: Sequence[dict],
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    log_every: int = 50,
    callback: Callable[[int, dict], None] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    max_grad_norm: float | None = 1.0,
    final_eval: bool = True,
) -> dict:
    """POLAR-style policy-discriminative pre-training on ``triples``.

    Each triple is ``{prompt, reference, positive, negative}`` where ``positive``
    comes from the reference's policy and ``negative`` from a different one.  AdamW
    (defaults follow POLAR's xtuner config: betas (0.9, 0.95), no weight decay,
    grad-norm clip 1); minibatches are drawn by epoch-wise permutations of a
    ``torch.Generator`` seeded with ``seed``, so the run is deterministic given the
    seed and the initial weights.  ``callback(step, metrics)`` is called every
    ``log_every`` steps and at the last step.  The discriminator is frozen again
    afterwards.  Returns the final metrics.
    """
    if not triples:
        raise ValueError("train_contrastive needs at least one triple")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    disc.unfreeze()
    params = [p for p in disc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    n, bs = len(triples), min(batch_size, len(triples))
    perm, cursor = torch.randperm(n, generator=gen), 0
    metrics: dict = {}
    window: list[float] = []
    try:
        for step in range(1, steps + 1):
            if cursor + bs > n:
                perm, cursor = torch.randperm(n, generator=gen), 0
            batch = [triples[i] for i in perm[cursor: cursor + bs].tolist()]
            cursor += bs
            s_pos, s_neg = _pair_scores(
                disc, [t["prompt"] for t in batch], [t["reference"] for t in batch],
                [t["positive"] for t in batch], [t["negative"] for t in batch],
            )
            loss = pairwise_loss(s_pos, s_neg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            window.append(loss.item())
            metrics = {
                "step": step,
                "loss": loss.item(),
                "batch_accuracy": (s_pos > s_neg).float().mean().item(),
                "margin": (s_pos - s_neg).mean().item(),
                "loss_window": sum(window[-log_every:]) / len(window[-log_every:]),
            }
            if step % max(log_every, 1) == 0 or step == steps:
                logger.info("disc step %d loss %.4f acc %.3f", step, metrics["loss"], metrics["batch_accuracy"])
                if callback is not None:
                    callback(step, dict(metrics))
    finally:
        disc.freeze()
    if final_eval:
        metrics["pairwise_accuracy"] = pairwise_accuracy(disc, triples)
    return metrics


def gail_update(
    disc: Discriminator,
    optimizer: torch.optim.Optimizer,
    prompts: Sequence,
    expert_refs: Sequence,
    expert_candidates: Sequence,
    policy_candidates: Sequence,
    max_grad_norm: float | None = 1.0,
) -> dict:
    """One GAIL-style co-training step (ablation): positive = an expert sample,
    negative = the current policy's sample, reference = another expert sample for
    the same prompt.  Temporarily unfreezes the discriminator and restores its
    previous frozen/eval state afterwards."""
    was_frozen = disc.frozen
    disc.unfreeze()
    try:
        s_pos, s_neg = _pair_scores(disc, prompts, expert_refs, expert_candidates, policy_candidates)
        loss = pairwise_loss(s_pos, s_neg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in disc.parameters() if p.grad is not None], max_grad_norm)
        optimizer.step()
    finally:
        if was_frozen:
            disc.freeze()
    return {
        "disc_loss": loss.item(),
        "disc_accuracy": (s_pos > s_neg).float().mean().item(),
        "disc_margin": (s_pos - s_neg).mean().item(),
    }


__all__ = [
    "Discriminator",
    "format_polar_input",
    "format_split",
    "polar_truncate",
    "pairwise_loss",
    "pairwise_accuracy",
    "train_contrastive",
    "gail_update",
    "POLAR_SEP_TOKEN",
    "POLAR_REWARD_TOKEN",
]
