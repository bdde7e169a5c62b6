"""Rollout engines behind one interface: ``engine.generate(prompt_ids, seeds, ...) -> Rollouts``.

* ``HFEngine`` (default, CPU and GPU): a batched KV-cache decoding loop over any transformers causal
  LM. Sampling is Gumbel-max with noise from a counter-based hash of (row seed, position, token id),
  so each row's sample depends only on its own seed (derived from (seed, step, prompt index, sample
  index)): a rerun, a resume or a different batch layout reproduces every rollout exactly.
* ``VLLMEngine`` (paper scale): vLLM's offline ``LLM.generate`` with a per-request seed, and weight
  sync after each optimizer step. Written against vLLM's documented API; not run on CPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

_MASK62 = (1 << 62) - 1
_U_MASK62 = np.uint64(_MASK62)


def row_seed(seed: int, step: int, prompt_index: int, sample_index: int = 0) -> int:
    """A 62-bit seed for one rollout, derived only from its coordinates (splitmix-style mixing)."""
    x = (seed * 0x9E3779B1 + step * 0x85EBCA77 + prompt_index * 0xC2B2AE3D + sample_index * 0x27D4EB2F) & _MASK62
    for _ in range(2):
        x = ((x ^ (x >> 29)) * 0xBF58476D1CE4E5B9) & _MASK62
    return x


def _hash_uniform(seeds: torch.Tensor, pos: int, vocab: int) -> torch.Tensor:
    """U(0,1) noise of shape (B, V) from (seed_b, pos, v) with 64-bit mixing (no shared RNG state).

    x = (seed_b + (pos+1)*C1 + v*C2) mod 2**62, two xorshift-multiply rounds mod 2**62, then the top 53 of
    the 62 bits as a float64 in (0, 1), clamped to [1e-12, 1 - 1e-12] and rounded to float32. Computed in
    place with numpy uint64 (wrapping mod 2**64 keeps the low 62 bits exact; logical shifts equal the
    arithmetic shifts of the non-negative values): ~10x faster than the equivalent int64 torch ops on CPU,
    whose 64-bit shifts are not vectorised, and bit-identical to them.
    """
    s = seeds.detach().cpu().numpy().astype(np.uint64, copy=False)
    x = np.arange(vocab, dtype=np.uint64)
    x *= np.uint64(0x9E3779B97F4A7C15 & _MASK62)
    x = x[None, :] + (s[:, None] + np.uint64(((pos + 1) * 0x632BE59BD9B4E019) & _MASK62))
    x &= _U_MASK62
    for mul in (0x2545F4914F6CDD1D, 0x1B873593):
        x ^= x >> np.uint64(31)
        x *= np.uint64(mul)
        x &= _U_MASK62
        x ^= x >> np.uint64(27)
    x >>= np.uint64(8)
    x &= np.uint64((1 << 53) - 1)
    u = x.astype(np.float64)
    u /= float(1 << 53)
    np.clip(u, 1e-12, 1 - 1e-12, out=u)
    return torch.from_numpy(u.astype(np.float32))


@dataclass
class Rollouts:
    """Decoded responses of one batch.

    response_ids: list of B token lists (the end-of-turn token included when produced)
    logprobs: list of B float tensors, the sampling policy's log-prob of each response token
    truncated: (B,) bool, True when the row hit ``max_new_tokens`` without ending
    """

    response_ids: list[list[int]]
    logprobs: list[torch.Tensor]
    truncated: torch.Tensor


class HFEngine:
    """Batched decoding with a KV cache on any ``transformers`` causal LM (left-padded prompts)."""

    def __init__(self, model, tokenizer, autocast_dtype: torch.dtype | None = torch.bfloat16):
        self.model, self.tok = model, tokenizer
        self.autocast_dtype = autocast_dtype

    def _autocast(self):
        device = next(self.model.parameters()).device
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], seeds: list[int] | None, temperature: float,
                 max_new_tokens: int, batch_size: int = 256, min_new_tokens: int = 0) -> Rollouts:
        """Greedy when ``seeds is None`` or ``temperature == 0``; else sampled at ``temperature``.

        ``min_new_tokens``: the end-of-turn token is forbidden (logit -inf) before that many new tokens
        (as transformers' ``min_new_tokens``; the returned logprobs are those of the constrained policy)."""
        out = Rollouts([], [], torch.zeros(0, dtype=torch.bool))
        truncs = []
        for i in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[i: i + batch_size]
            s = None if seeds is None else seeds[i: i + batch_size]
            r = self._generate_batch(chunk, s, temperature, max_new_tokens, min_new_tokens)
            out.response_ids += r.response_ids
            out.logprobs += r.logprobs
            truncs.append(r.truncated)
        out.truncated = torch.cat(truncs) if truncs else out.truncated
        return out

    def _generate_batch(self, prompt_ids, seeds, temperature, max_new_tokens, min_new_tokens: int = 0) -> Rollouts:
        model, eos, pad = self.model, self.tok.eos_token_id, self.tok.pad_token_id
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        B, L = len(prompt_ids), max(len(p) for p in prompt_ids)
        ids = torch.full((B, L), pad, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prompt_ids):  # left padding: every row's next token is at column L
            ids[b, L - len(p):] = torch.tensor(p)
            attn[b, L - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        greedy = seeds is None or temperature == 0
        seed_t = None if greedy else torch.tensor(seeds, dtype=torch.int64)
        # Finished rows leave the batch (their KV-cache rows are dropped), so a step costs what the
        # still-running rows need. A row's noise depends only on its own seed: dropping rows changes nothing.
        tok = torch.full((B, max_new_tokens), pad, dtype=torch.long)
        lps = torch.zeros((B, max_new_tokens))
        active = torch.arange(B)
        eos_t = torch.tensor([eos], dtype=torch.long, device=device)
        temp = 1.0 if greedy else temperature
        n_steps = 0
        with self._autocast():
            # logits_to_keep=1: the prefill needs the last position's logits only (as transformers' generate).
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            for t in range(max_new_tokens):
                n_steps = t + 1
                if t < min_new_tokens:  # end-of-turn forbidden before min_new_tokens new tokens
                    logits = logits.index_fill(-1, eos_t, float("-inf"))
                logp_all = torch.log_softmax(logits if temp == 1.0 else logits / temp, dim=-1)
                if greedy:
                    nxt = logp_all.argmax(-1)
                else:  # Gumbel-max: argmax(log p + G) samples from p; G = -log(-log u) = -g, g in place
                    g = _hash_uniform(seed_t, t, logits.shape[-1]).to(device).log_().neg_().log_()
                    nxt = (logp_all - g).argmax(-1)
                lp = logp_all.gather(-1, nxt[:, None]).squeeze(-1)
                nxt_c, lp_c = nxt.cpu(), lp.cpu()
                tok[active, t] = nxt_c
                lps[active, t] = lp_c
                keep = nxt_c != eos
                if not bool(keep.any()):
                    break
                if not bool(keep.all()):
                    sel = keep.nonzero().squeeze(-1)
                    active = active[sel]
                    sel_d = sel.to(device)
                    cache.batch_select_indices(sel_d)
                    nxt, attn, pos = nxt[sel_d], attn[sel_d], pos[sel_d]
                    if seed_t is not None:
                        seed_t = seed_t[sel]
                attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype, device=device)], dim=1)
                pos = pos[:, -1:] + 1
                out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                            past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1].float()
        model.train(was_training)
        tok, lps = tok[:, :n_steps], lps[:, :n_steps]
        resp, lp_list, trunc = [], [], []
        for b in range(B):
            row = tok[b].tolist()
            n = row.index(eos) + 1 if eos in row else len(row)
            resp.append(row[:n])
            lp_list.append(lps[b, :n].clone())
            trunc.append(eos not in row)
        return Rollouts(resp, lp_list, torch.tensor(trunc, dtype=torch.bool))


class VLLMEngine:
    """vLLM rollouts for paper scale (``pip install '.[gpu]'``). Verified on GPU: no.

    Uses ``vllm.LLM`` with ``SamplingParams(n=1, seed=row_seed, temperature, max_tokens, logprobs=0)``
    per request, prompts passed as token ids (``TokensPrompt``), and after each optimizer step the
    policy's weights are pushed with ``load_weights`` on the engine's model runner (colocated mode).
    """

    def __init__(self, model_path: str, tokenizer, gpu_memory_utilization: float = 0.4, dtype: str = "bfloat16",
                 seed: int = 0):
        from vllm import LLM  # imported lazily: optional dependency
        self.tok = tokenizer
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       seed=seed, enable_prefix_caching=True)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy the trainer's current weights into the vLLM engine (same process, same GPU)."""
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(((n, p.detach()) for n, p in model.state_dict().items()))
        self.llm.reset_prefix_cache()

    def generate(self, prompt_ids: list[list[int]], seeds: list[int] | None, temperature: float,
                 max_new_tokens: int, batch_size: int = 0) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        greedy = seeds is None or temperature == 0
        params = [SamplingParams(temperature=0.0 if greedy else temperature, max_tokens=max_new_tokens,
                                 seed=None if greedy else int(s % (1 << 31)), logprobs=0,
                                 stop_token_ids=[self.tok.eos_token_id])
                  for s in (seeds if not greedy else [0] * len(prompt_ids))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        return rollouts_from_vllm(outs, self.tok.eos_token_id)


def rollouts_from_vllm(outputs, eos_id: int) -> Rollouts:
    """Convert vLLM ``RequestOutput``s (one completion each) into ``Rollouts`` (CPU-testable)."""
    resp, lps, trunc = [], [], []
    for o in outputs:
        c = o.outputs[0]
        ids = list(c.token_ids)
        lp = [d[tid].logprob if d and tid in d else 0.0 for tid, d in zip(ids, c.logprobs or [{}] * len(ids))]
        resp.append(ids)
        lps.append(torch.tensor(lp, dtype=torch.float32))
        trunc.append(c.finish_reason == "length")
    return Rollouts(resp, lps, torch.tensor(trunc, dtype=torch.bool))
