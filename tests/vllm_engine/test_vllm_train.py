"""GRPO steps end to end with ``rollout_engine: vllm`` (a colocated vLLM engine; ``make test-vllm``).

A tiny random Qwen3 is saved with ``save_pretrained``; the trainer's policy is loaded from that directory
and vLLM's engine is built from it (``rollout.build_vllm_engine``, as ``experiments/train.py`` does). The
checks: finite losses, the engine's weight version advances at every step (the policy is pushed before
each step's rollouts), the truncated importance-sampling ratio between vLLM's sampler and the trainer's
old policy is logged and is 1 up to kernel rounding (both fp32, the same weights: it also checks that the
sampler's log-probs land on the packed batch's response positions), and the policy moves.

The reward is the real verifier (``uniapl.ifeval.verifier_reward``: lm-evaluation-harness's IFEval checkers,
which the Makefile installs into ``.venv-vllm`` for this test). Skipped, with the reason, where vLLM is not
installed."""

import math
from types import SimpleNamespace

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this venv: run `make test-vllm`")

import torch  # noqa: E402
from transformers import Qwen3ForCausalLM  # noqa: E402

from uniapl import ifeval  # noqa: E402  (the real checkers)
from uniapl.config import TrainConfig  # noqa: E402
from uniapl.instructions import LOWER, NO_COMMA  # noqa: E402
from uniapl.models import Batch, sequence_logprobs  # noqa: E402
from uniapl.rollout import build_vllm_engine  # noqa: E402
from uniapl.trainer import Trainer  # noqa: E402

from ._tiny import ARCH, TEXTS, save_tiny_qwen3  # noqa: E402

PROMPTS = ["Write a note about cats.", "hello there friend", "Answer in lowercase.", "cats"]
STEPS = 3
IS_ATOL = 1e-3  # fp32 on both sides: vLLM's CPU kernels vs transformers' differ by ~1e-6 per log-prob


def _memory_share(kv_bytes: int = 1 << 30) -> float:
    """A share of memory that leaves vLLM's CPU worker ``kv_bytes`` for its KV cache. It budgets
    ``share * total memory of its NUMA node - this process's RSS``, and under ``make test-vllm`` the engine of
    test_vllm_engine.py (0.1 of it) still lives in this process: a fixed 0.1 would leave it nothing. The node's
    total is what vLLM reads (``get_memory_node_info``: /sys/devices/system/node/node0/meminfo), which can be
    less than the machine's RAM (11.5 of 23.5 GiB on a 2-core AMD EPYC host), so the share is taken of that."""
    import psutil
    try:
        from vllm.utils.cpu_resource_utils import get_memory_node_info
        total = get_memory_node_info(0).total_memory
    except ImportError:  # another vLLM layout: the machine's RAM, as vLLM does without per-node meminfo
        total = psutil.virtual_memory().total
    return min(1.0, (psutil.Process().memory_info().rss + kv_bytes) / total)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-qwen3-train")
    tok, _ = save_tiny_qwen3(d, TEXTS, ARCH)
    demos = [{"prompt": p, "instruction_id_list": [LOWER, NO_COMMA], "kwargs": [{}, {}],
              "response": "cats are nice."} for p in PROMPTS]
    policy = Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32)
    cfg = TrainConfig(method="grpo", rollout_engine="vllm", vllm_is_cap=2.0, steps=STEPS, batch_rl=2, group_size=4,
                      max_new_tokens=16, micro_batch=4, lr=3e-3, warmup=0, reward="fraction",
                      truncated_zero_reward=False, threads=1, checkpoint_every=100,
                      vllm_gpu_memory_utilization=_memory_share())
    engine = build_vllm_engine(cfg, str(d), tok)
    tr = Trainer(cfg, policy, tok, demos, tmp_path_factory.mktemp("out"), engine=engine)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    history, versions = [], []
    for _ in range(STEPS):
        history.append(tr.train_step())
        versions.append((tr.weight_version, engine.llm.get_weight_version()))
    return SimpleNamespace(tr=tr, engine=engine, tok=tok, before=before, history=history, versions=versions)


def test_losses_are_finite_and_the_policy_moves(run):
    import uniapl.trainer
    assert uniapl.trainer.ifeval is ifeval  # the trainer scored with the harness's checkers
    text = "this is a short note about my cats, written in english."
    assert ifeval.check_strict("p", [LOWER, NO_COMMA], [{}, {}], text) == [True, False]
    for m in run.history:
        assert "loss/grpo" in m and all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    assert any(m["train/reward_std_in_group"] > 0 for m in run.history)  # a gradient signal
    after = run.tr.policy.state_dict()
    assert any(not torch.equal(run.before[k], after[k]) for k in after)


def test_the_weight_version_advances_every_step(run):
    ours = [int(v) for v, _ in run.versions]
    assert [v for v, _ in run.versions] == [e for _, e in run.versions]  # the engine holds what we pushed
    assert all(b > a for a, b in zip(ours, ours[1:])) and len(set(ours)) == STEPS
    assert all("perf/sync_seconds" in m for m in run.history)


def test_no_sync_while_the_weights_are_unchanged(run):
    v = run.engine.llm.get_weight_version()
    assert run.tr._sync_engine() != {} and run.engine.llm.get_weight_version() != v  # stale after the last step
    v = run.engine.llm.get_weight_version()
    assert run.tr._sync_engine() == {} and run.engine.llm.get_weight_version() == v


def test_importance_ratio_is_logged_and_one(run):
    for m in run.history:
        print(f"is_ratio_mean - 1 = {m['train/is_ratio_mean'] - 1:.3g}, capped {m['train/is_capped_frac']}")
        assert abs(m["train/is_ratio_mean"] - 1) < IS_ATOL
        assert m["train/is_capped_frac"] == 0


def test_sampler_logprobs_align_with_the_trainers(run):
    """One more step's rollouts: the sampler's log-probs laid out on the packed batch equal the policy's
    ``sequence_logprobs`` there (right after a sync the two sides hold the same weights)."""
    tr = run.tr
    tr.weights_stale = True
    roll, _ = tr._rollouts(tr.step)
    b = roll["batch"]
    with torch.no_grad():
        lp, _ = sequence_logprobs(tr.policy, Batch(b.ids, b.attn, b.lmask))
    m = b.lmask.bool()
    assert not torch.isnan(roll["sampler_lp"]).any() and not roll["sampler_lp"][~m].any()
    assert float((roll["sampler_lp"][m] - lp[m]).abs().max()) < 1e-4
    shifted = torch.nn.functional.pad(lp, (1, 0))[:, :-1]  # off by one position: clearly different
    assert float((roll["sampler_lp"][m] - shifted[m]).abs().max()) > 1e-2
