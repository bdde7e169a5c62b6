"""The pure helpers of the TRL benchmark (``benchmarks/_perf.py``): FLOP counts, phase timing, cpuinfo parsing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_perf", ROOT / "benchmarks" / "_perf.py")
perf = importlib.util.module_from_spec(_spec)
sys.modules["bench_perf"] = perf  # dataclasses look their module up while the class is built
_spec.loader.exec_module(perf)

# vocab 10, hidden 4, intermediate 6, 2 layers, 2 query heads, 1 KV head, head_dim 3
TINY = perf.Dims(vocab=10, hidden=4, intermediate=6, layers=2, heads=2, kv_heads=1, head_dim=3)


def test_flops_of_a_tiny_model_by_hand():
    # per layer: q 4x6=24, o 6x4=24, k 4x3=12, v 12, gate/up/down 3x4x6=72 -> 144; 2 layers -> 288
    assert perf.body_matmul_params(TINY) == 288
    assert perf.head_matmul_params(TINY) == 40
    assert perf.causal_pairs(5) == 15
    # 5 tokens, head on 2 positions, 15 causal pairs:
    # 2*288*5 = 2880; 2*40*2 = 160; attention 2 layers * (2 matmuls * 2 flops) * 2 heads * 3 dims * 15 = 720
    assert perf.forward_flops(TINY, 5, 2, 15) == 2880 + 160 + 720
    # 3 sequences, prompt 2, completion 3; attention costs 2*4*2*3 = 48 FLOPs per (query, key) pair.
    # Generation: decoder on 2+3-1 = 4 positions (10 causal pairs), head on 3:
    # 2*288*4 + 2*40*3 + 48*10 = 2304 + 240 + 480 = 3024 per sequence. Training forward: 5 positions
    # (15 pairs), head on 3: 2880 + 240 + 720 = 3840 per sequence; backward twice that.
    f = perf.grpo_step_flops(TINY, n_seq=3, prompt_len=2, completion_len=3)
    assert f == {"generation": 3 * 3024, "train_forward": 3 * 3840, "backward": 6 * 3840,
                 "total": 3 * 3024 + 9 * 3840}


def test_flops_match_torch_flop_counter_on_a_real_qwen3():
    """An independent count: torch's FlopCounterMode on a tiny transformers Qwen3 (eager attention, which
    computes the full T x T scores: pairs = T*T) equals the analytic count, and the matmul weights are the
    model's Linear weights."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=TINY.vocab * 5, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                      attn_implementation="eager")
    d = perf.Dims.from_config(cfg)
    model = Qwen3ForCausalLM(cfg).eval()
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert perf.body_matmul_params(d) == linear
    assert perf.head_matmul_params(d) == model.lm_head.weight.numel()
    B, T = 3, 7
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=ids)
    assert fc.get_total_flops() == B * perf.forward_flops(d, T, T, T * T)


def test_phase_clock_charges_nested_calls_to_their_own_phase():
    now = [0.0]
    clock = perf.PhaseClock(clock=lambda: now[0])

    def inner():
        now[0] += 2.0

    def outer():
        now[0] += 1.0
        timed_inner()
        now[0] += 0.5
        timed_inner()

    timed_inner = clock.wrap(inner, "gen")
    mode = ["a"]
    timed_outer = clock.wrap(outer, lambda: mode[0])
    timed_outer()
    mode[0] = "b"
    timed_outer()
    assert clock.take() == {"a": 1.5, "b": 1.5, "gen": 8.0}
    assert clock.take() == {}
    assert perf.phase_medians([{"gen": 1.0}, {"gen": 3.0, "a": 2.0}, {"gen": 2.0}], ["gen", "a"]) == {"gen": 2.0, "a": 0.0}


def test_parse_cpuinfo():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
            "model name\t: Intel(R) Xeon(R) Platinum 8480C\nstepping\t: 8\n"
            "flags\t\t: fpu avx avx2 avx512f avx512_bf16 amx_tile hypervisor\n\n"
            "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C\nflags\t\t: fpu\n")
    info = perf.parse_cpuinfo(text)
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480C"
    assert info["logical_cpus"] == 2
    assert info["cpu_id"] == "GenuineIntel family 6 model 143 stepping 8"
    assert info["virtualized"]
    assert {f for f in perf.CPU_FLAGS if f in info["flags"]} == {"avx2", "avx512f", "avx512_bf16", "amx_tile"}


def test_precision_check_flags_a_mismatch():
    spec = importlib.util.spec_from_file_location("bench_grpo_vs_trl", ROOT / "benchmarks" / "bench_grpo_vs_trl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # imports no TRL: only the children do

    def side(dtype, computed):
        return {"precision": {"dtype": dtype, "param_dtypes": ["float32"],
                              "observed": {"no_grad": [computed], "training": [computed]}}}

    assert bench.check_precision("fp32", {"ours": side("fp32", "float32"), "trl": side("fp32", "float32")}) == []
    assert bench.check_precision("bf16", {"ours": side("bf16", "bfloat16"), "trl": side("bf16", "bfloat16")}) == []
    problems = bench.check_precision("bf16", {"ours": side("bf16", "bfloat16"), "trl": side("bf16", "float32")})
    assert "the two sides compute in different dtypes" in problems
    assert any(p.startswith("trl: no_grad forwards computed in ['float32']") for p in problems)
    assert bench.check_precision("fp32", {"ours": side("bf16", "bfloat16"), "trl": side("fp32", "float32")})
