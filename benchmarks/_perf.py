"""Pure helpers of ``bench_grpo_vs_trl.py``: analytic model FLOPs, exclusive per-phase wall-clock timing of
nested calls, the host description from /proc/cpuinfo and a matmul peak microbenchmark.

Only the microbenchmark and :func:`host_info` import torch (lazily), so the counting and parsing helpers are
cheap to test (``tests/test_bench_helpers.py``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable

# ----------------------------------------------------------------------------- analytic FLOPs

@dataclass(frozen=True)
class Dims:
    """The shapes of a Qwen3-style decoder (GQA attention, SwiGLU MLP, untied or tied LM head)."""
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, cfg) -> "Dims":
        return cls(vocab=cfg.vocab_size, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
                   layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def body_matmul_params(d: Dims) -> int:
    """Weights every token multiplies in the decoder layers: q and o (hidden x heads*head_dim), k and v
    (hidden x kv_heads*head_dim), gate, up and down (hidden x intermediate). Embedding lookups, RMSNorms
    (q/k norms included) and rotary embeddings are not matmuls and are not counted."""
    attn = 2 * d.hidden * d.heads * d.head_dim + 2 * d.hidden * d.kv_heads * d.head_dim
    return d.layers * (attn + 3 * d.hidden * d.intermediate)


def head_matmul_params(d: Dims) -> int:
    """The LM head (hidden x vocab; counted once per scored position, tied to the embedding or not)."""
    return d.hidden * d.vocab


def causal_pairs(n: int) -> int:
    """(query, key) pairs of causal attention over ``n`` positions: 1 + 2 + ... + n."""
    return n * (n + 1) // 2


def forward_flops(d: Dims, tokens: int, head_tokens: int, attn_pairs: int) -> int:
    """FLOPs (2 per multiply-add) of one forward of a sequence: the decoder's matmuls on ``tokens`` positions,
    the LM head on ``head_tokens`` positions, and attention's two matmuls (q.k and p.v, each 2*head_dim FLOPs
    per head and (query, key) pair) over ``attn_pairs`` pairs in every layer. Grouped-query attention shares
    k/v between heads but every query head still does its own products, so ``heads`` counts, not ``kv_heads``."""
    return (2 * body_matmul_params(d) * tokens + 2 * head_matmul_params(d) * head_tokens
            + d.layers * 4 * d.heads * d.head_dim * attn_pairs)


def grpo_step_flops(d: Dims, n_seq: int, prompt_len: int, completion_len: int) -> dict:
    """Model FLOPs of one GRPO step of ``n_seq`` unpadded sequences (beta=0, one pass: no old/ref forward).

    * generation: prefill of the prompt plus one decode step per sampled token but the last, i.e. the
      decoder on ``prompt_len + completion_len - 1`` positions with causal attention over the KV cache,
      and the LM head on the ``completion_len`` positions whose logits are sampled from;
    * train_forward: the decoder on all ``prompt_len + completion_len`` positions (causal attention), the
      LM head on the ``completion_len`` scored positions;
    * backward: twice the training forward (gradients of activations and of weights).
    What an implementation executes on top (padding, a decode step after the last token, logits of positions
    that are not scored) is not counted: the same number for every implementation."""
    gen_len = prompt_len + completion_len - 1
    gen = n_seq * forward_flops(d, gen_len, completion_len, causal_pairs(gen_len))
    seq = prompt_len + completion_len
    fwd = n_seq * forward_flops(d, seq, completion_len, causal_pairs(seq))
    return {"generation": gen, "train_forward": fwd, "backward": 2 * fwd, "total": gen + 3 * fwd}


# ----------------------------------------------------------------------------- per-phase timing

class PhaseClock:
    """Exclusive wall-clock seconds per phase from nested timed calls.

    ``wrap(fn, phase)`` returns a function that times ``fn``; a timed call inside another one is charged to
    its own phase and subtracted from the outer one, so the phases of a step add up to at most its time.
    ``phase`` is a name or a zero-argument function returning one at call time (e.g. depending on
    ``torch.is_grad_enabled()``). ``take()`` returns the seconds accumulated since the last ``take()``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.stack: list[list] = []  # [phase, start, seconds spent in nested timed calls]
        self.acc: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def push(self, phase: str) -> None:
        self.stack.append([phase, self.clock(), 0.0])

    def pop(self) -> None:
        phase, t0, inner = self.stack.pop()
        dt = self.clock() - t0
        self.acc[phase] += dt - inner
        self.calls[phase] += 1
        if self.stack:
            self.stack[-1][2] += dt

    def wrap(self, fn: Callable, phase: str | Callable[[], str]) -> Callable:
        def timed(*args, **kwargs):
            self.push(phase() if callable(phase) else phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.pop()
        timed.__wrapped__ = fn
        return timed

    def take(self) -> dict[str, float]:
        out = dict(self.acc)
        self.acc.clear()
        return out


def phase_medians(per_step: list[dict[str, float]], phases) -> dict[str, float]:
    """Median over steps of each phase's seconds (0 where a step has none)."""
    return {p: statistics.median([s.get(p, 0.0) for s in per_step]) if per_step else 0.0 for p in phases}


# ----------------------------------------------------------------------------- host

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def parse_cpuinfo(text: str) -> dict:
    """CPU model name, logical CPU count and flags from the text of /proc/cpuinfo (first processor's)."""
    model, flags, n, ident = None, None, 0, {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            n += 1
        elif key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features") and flags is None:  # "Features": aarch64
            flags = set(value.split())
        elif key in ("vendor_id", "cpu family", "model", "stepping") and key not in ident:
            ident[key] = value
    ident_s = " ".join(f"{k.replace('cpu ', '')} {v}" for k, v in ident.items() if k != "vendor_id")
    return {"cpu_model": model or platform.processor() or "unknown", "logical_cpus": n,
            "flags": flags or set(), "cpu_id": " ".join(x for x in (ident.get("vendor_id"), ident_s) if x),
            "virtualized": "hypervisor" in (flags or set())}


def host_info(threads: int, cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    import torch
    try:
        with open(cpuinfo_path) as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        info = {"cpu_model": platform.processor() or "unknown", "logical_cpus": 0, "flags": set(), "cpu_id": "",
                "virtualized": False}
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = "unknown"
    return {"cpu_model": info["cpu_model"], "cpu_id": info["cpu_id"], "virtualized": info["virtualized"],
            "logical_cpus": info["logical_cpus"] or os.cpu_count(),
            "cpu_flags": {f: f in info["flags"] for f in CPU_FLAGS}, "torch": torch.__version__,
            "torch_cpu_capability": capability, "threads": threads, "python": platform.python_version(),
            "pinned_isa": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
                           if k in os.environ}}


def format_host(h: dict) -> str:
    flags = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in h["cpu_flags"].items())
    pin = (" pinned " + " ".join(f"{k}={v}" for k, v in h["pinned_isa"].items())) if h["pinned_isa"] else ""
    ident = f"{h['cpu_id']}, " if h.get("cpu_id") else ""
    vm = ", virtualized" if h.get("virtualized") else ""
    return (f"host: {h['cpu_model']} ({ident}{h['logical_cpus']} logical CPUs{vm}); flags {flags}; torch {h['torch']} "
            f"(kernels {h['torch_cpu_capability']}{pin}); threads {h['threads']}; python {h['python']}")


# ----------------------------------------------------------------------------- matmul peak

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def matmul_peak_gflops(dtype: str, threads: int, reps: int = 7, max_seconds: float = 0.3,
                       sizes: tuple[int, ...] = (512, 1024, 2048)) -> dict:
    """Measured GFLOP/s of a square ``torch.matmul`` in ``dtype`` ("fp32"/"bf16") with ``threads`` threads:
    the largest size of ``sizes`` whose single product is predicted (from the previous size) to take at most
    ``max_seconds`` (so a host without native bf16 is not stuck in a 2048^3 emulated product), one warm-up,
    then the median of ``reps`` products."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dt = getattr(torch, TORCH_DTYPES[dtype])
        g = torch.Generator().manual_seed(0)
        best = None
        for n in sizes:
            a = torch.randn(n, n, generator=g).to(dt)
            b = torch.randn(n, n, generator=g).to(dt)
            torch.matmul(a, b)  # warm-up (kernel selection, page faults)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                torch.matmul(a, b)
                ts.append(time.perf_counter() - t0)
            med = statistics.median(ts)
            best = {"n": n, "seconds": med, "gflops": 2 * n ** 3 / med / 1e9, "reps": reps}
            if med * 8 > max_seconds:  # the next size (2x) takes about 8x as long
                break
        return best
    finally:
        torch.set_num_threads(old)


def as_jsonable(obj):
    if isinstance(obj, set):
        return sorted(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(type(obj))
