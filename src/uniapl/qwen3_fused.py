"""A fused forward of a ``transformers`` Qwen3 decoder, for the overhead-bound models of the embedded world.

The embedded world's models are 64-128 wide: every kernel is tiny, so a step's time is the number of ops
dispatched, not their arithmetic (docs/performance.md). transformers' Qwen3 layer dispatches ~55 ops per
layer (separate q/k/v and gate/up projections, an RMSNorm of seven element-wise ops, ``rotate_half`` with a
cat, repeat_kv or an SDPA mask). This module computes the same function with ~23:

* the q/k/v projections as one matmul (weights concatenated), gate/up as one;
* RMSNorm through ``torch.nn.functional.rms_norm``; the q and k head norms as one call over the
  concatenated q and k heads with a per-head weight (the q part pre-multiplied by the attention scale);
* RoPE as ``x * cos + roll(x, d/2) * sin_signed`` on q and k at once;
* decode attention as two batched matmuls with the query heads grouped by KV head (no copy of the
  cache); full-sequence attention through ``scaled_dot_product_attention`` with ``is_causal`` (right-padded
  batches: a real token never sees a pad, so no mask is needed).

It reads the model's own parameters (the concatenations are differentiable, so training through it updates
the model), so it always computes the current policy. Its outputs equal transformers' forward up to float
rounding (tests/test_qwen3_fused.py, tests/test_models_rollout.py). Only plain Qwen3 qualifies
(:func:`supports`): full attention in every layer, SiLU, no projection biases, no attention dropout, default
RoPE; anything else takes transformers' forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supports(model) -> bool:
    """True for a plain transformers Qwen3 model with a decoder at ``model.model`` (a causal LM, or the
    discriminator's sequence classifier) that this module computes exactly; not a wrapper such as a
    DeepSpeed engine, whose forward must see every pass, even though it forwards attribute lookups."""
    from transformers import PreTrainedModel
    if not isinstance(model, PreTrainedModel):
        return False
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "qwen3" or not hasattr(model, "model"):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])):
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "attention_bias", False):
        return False
    if getattr(cfg, "attention_dropout", 0.0):  # the fused attention has no dropout
        return False
    if getattr(cfg, "rope_scaling", None) not in (None, {}) and (cfg.rope_scaling or {}).get("rope_type", "default") != "default":
        return False
    return True


class FusedWeights:
    """The per-layer fused tensors of ``model`` (q|k|v, gate|up, head norms), built from its parameters.

    Built once per generation (no gradient) or once per training forward (with gradient: the
    concatenations are part of the graph)."""

    def __init__(self, model):
        cfg = model.config
        inner = model.model
        att0 = inner.layers[0].self_attn
        self.d = att0.head_dim
        self.n_q = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.eps = cfg.rms_norm_eps
        self.scale = att0.scaling
        self.layers = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            # per-head norm weight of the concatenated q and k heads; the q part carries the attention scale
            # (RoPE is linear, so scaling before it is scaling the scores)
            qk_w = torch.cat([(att.q_norm.weight * self.scale).expand(self.n_q, self.d),
                              att.k_norm.weight.expand(self.n_kv, self.d)])
            self.layers.append((layer.input_layernorm.weight, qkv, qk_w, att.o_proj.weight,
                                layer.post_attention_layernorm.weight, gate_up, mlp.down_proj.weight))
        self.final_norm = inner.norm.weight
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb


def rope_tables(fw: FusedWeights, h: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin (B, S, 1, d) for positions ``pos`` (B, S): rotate_half(x) * sin ==
    roll(x, d/2) * sin_signed."""
    cos, sin = fw.rotary(h, pos)
    half = fw.d // 2
    sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return cos[:, :, None], sin[:, :, None]


def _qkv(fw: FusedWeights, lw, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Normed, rotated q (B, S, Hq, d), k (B, S, Hkv, d) and v (B, S, Hkv, d) of one layer."""
    ln_in, w_qkv, qk_w, *_ = lw
    B, S, _ = h.shape
    d, nq, nkv = fw.d, fw.n_q, fw.n_kv
    x = F.rms_norm(h, (h.shape[-1],), ln_in, fw.eps)
    qkv = F.linear(x, w_qkv).view(B, S, nq + 2 * nkv, d)
    qk, v = qkv[:, :, : nq + nkv], qkv[:, :, nq + nkv:]
    qk = F.rms_norm(qk, (d,), None, fw.eps) * qk_w
    qk = qk * cos + qk.roll(d // 2, dims=-1) * sin
    return qk[:, :, :nq], qk[:, :, nq:], v


def _mlp_out(lw, h: torch.Tensor, o: torch.Tensor, eps: float) -> torch.Tensor:
    """The residual stream after the attention output ``o`` (B, S, Hq*d) and the MLP."""
    _, _, _, w_o, ln_post, w_gu, w_down = lw
    h = h + F.linear(o, w_o)
    x = F.rms_norm(h, (h.shape[-1],), ln_post, eps)
    g, u = F.linear(x, w_gu).chunk(2, dim=-1)
    return h + F.linear(F.silu(g) * u, w_down)


def hidden_states(model, ids: torch.Tensor, fw: FusedWeights | None = None) -> torch.Tensor:
    """Final-norm hidden states (B, T, D) of right-padded ``ids`` (B, T) with positions 0..T-1 (what
    transformers computes for them with their attention mask: a real token attends to earlier real tokens
    only; pad positions hold values nobody reads). Differentiable."""
    fw = fw or FusedWeights(model)
    B, T = ids.shape
    h = fw.embed(ids)
    pos = torch.arange(T, device=ids.device)[None].expand(B, T)
    cos, sin = rope_tables(fw, h, pos)
    for lw in fw.layers:
        q, k, v = _qkv(fw, lw, h, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, scale=1.0, enable_gqa=fw.n_q != fw.n_kv)
        h = _mlp_out(lw, h, o.transpose(1, 2).reshape(B, T, -1), fw.eps)
    return F.rms_norm(h, (h.shape[-1],), fw.final_norm, fw.eps)


class KVDecoder:
    """Batched incremental decoding with a preallocated KV cache (written in place) over :class:`FusedWeights`.

    ``prefill`` takes left-padded prompts; ``step`` one token per row; ``select`` drops finished rows.
    The decode attention groups the query heads by KV head, (B, Hkv, G, d) @ (B, Hkv, d, T), so the cache is
    read in place; invalid (padding) key columns get -inf before the softmax."""

    def __init__(self, model, batch: int, max_len: int, device):
        self.m = model
        self.fw = FusedWeights(model)
        fw = self.fw
        n = len(fw.layers)
        self.k = [torch.empty((batch, fw.n_kv, max_len, fw.d), device=device) for _ in range(n)]
        self.v = [torch.empty((batch, fw.n_kv, max_len, fw.d), device=device) for _ in range(n)]
        self.bias = torch.zeros((batch, 1, 1, max_len), device=device)  # 0 on valid keys, -inf on padding
        self.length = 0

    def _ensure_dtype(self, dtype: torch.dtype) -> None:
        if self.k[0].dtype != dtype:  # autocast: the cache holds what the projections produce
            self.k = [t.to(dtype) for t in self.k]
            self.v = [t.to(dtype) for t in self.v]

    def prefill(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Left-padded prompts (B, L) -> last-position logits (B, V). A padding query attends to itself
        only (its output is never used; no query has an empty mask)."""
        fw = self.fw
        B, L = ids.shape
        self.bias[:, 0, 0, :L] = torch.where(attn.bool(), 0.0, float("-inf"))
        causal = torch.ones((L, L), dtype=torch.bool, device=ids.device).tril()
        mask = (causal[None] & attn.bool()[:, None, :]) | torch.eye(L, dtype=torch.bool, device=ids.device)[None]
        h = fw.embed(ids)
        cos, sin = rope_tables(fw, h, pos)
        for i, lw in enumerate(fw.layers):
            q, k, v = _qkv(fw, lw, h, cos, sin)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            self._ensure_dtype(k.dtype)
            self.k[i][:, :, :L] = k
            self.v[i][:, :, :L] = v
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask[:, None], scale=1.0,
                                               enable_gqa=fw.n_q != fw.n_kv)
            h = _mlp_out(lw, h, o.transpose(1, 2).reshape(B, L, -1), fw.eps)
        self.length = L
        return self.m.lm_head(F.rms_norm(h[:, -1], (h.shape[-1],), fw.final_norm, fw.eps))

    def step(self, nxt: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One new token per row (B,) at positions ``pos`` (B, 1) -> logits (B, V)."""
        fw = self.fw
        B = nxt.shape[0]
        t = self.length
        G = fw.n_q // fw.n_kv
        h = fw.embed(nxt[:, None])
        cos, sin = rope_tables(fw, h, pos)
        bias = self.bias[:, :, :, : t + 1]
        for i, lw in enumerate(fw.layers):
            q, k, v = _qkv(fw, lw, h, cos, sin)
            self.k[i][:, :, t] = k[:, 0]
            self.v[i][:, :, t] = v[:, 0]
            scores = q.view(B, fw.n_kv, G, fw.d) @ self.k[i][:, :, : t + 1].transpose(-1, -2)
            p = torch.softmax(scores + bias, dim=-1)
            o = (p @ self.v[i][:, :, : t + 1]).view(B, 1, -1)
            h = _mlp_out(lw, h, o, fw.eps)
        self.length = t + 1
        return self.m.lm_head(F.rms_norm(h[:, 0], (h.shape[-1],), fw.final_norm, fw.eps))

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (finished rows leave)."""
        self.bias = self.bias[rows]
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]
