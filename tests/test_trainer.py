"""Trainer tests on the tiny world built by the real stage scripts (tests/conftest.py)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from uniapl.config import load_params, run_config
from uniapl.discriminator import Discriminator
from uniapl.io import read_jsonl
from uniapl.methods import METHODS
from uniapl.models import load_policy, load_tokenizer
from uniapl.trainer import NonFiniteLoss, Trainer, verifier_reward

from conftest import run


def make_trainer(world, method, out, **extra):
    p = load_params(world / "params.yaml")
    cfg = run_config(p, method, "student-s", 0, extra)
    tok = load_tokenizer(world / "models/student-s")
    disc = Discriminator.load(world / "models/discriminator") if METHODS[method].adv != "none" else None
    return Trainer(cfg, load_policy(world / "models/student-s"), tok, read_jsonl(world / "data/teacher_demos.jsonl"),
                   out, discriminator=disc)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_takes_a_step_and_moves_weights(tiny_world, tmp_path, method):
    tr = make_trainer(tiny_world, method, tmp_path)
    before = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    m = tr.train_step()
    moved = any(not torch.equal(before[k], v) for k, v in tr.policy.state_dict().items())
    meth = METHODS[method]
    # A weight moves unless every active term has zero signal (e.g. GRPO when all rewards in a group tie).
    has_signal = m["weights/sft"] > 0 or meth.adv == "loss" or m.get("train/reward_std_in_group", 0) > 0
    if has_signal:
        assert moved
    assert ("loss/sft" in m) == (meth.uses_sft and m["weights/sft"] > 0)
    assert ("train/reward_mean" in m) == meth.uses_rollouts
    assert ("train/adv_score_mean" in m) == (meth.adv != "none")
    assert all(math.isfinite(v) for v in m.values())


def test_micro_batching_matches_full_batch(tiny_world, tmp_path):
    """Gradient accumulation over micro-batches gives the same gradient as one full batch."""
    grads = []
    for mb in (64, 1):
        tr = make_trainer(tiny_world, "uniapl", tmp_path / str(mb), micro_batch=mb)
        tr.opt.step = lambda: None  # keep the accumulated gradient for inspection
        tr.opt.zero_grad = lambda set_to_none=True: None
        tr.train_step()
        grads.append({n: p.grad.clone() for n, p in tr.policy.named_parameters()})
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4), k
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_nan_loss_stops_with_the_term_and_step(tiny_world, tmp_path):
    tr = make_trainer(tiny_world, "sft", tmp_path)
    with torch.no_grad():
        next(tr.policy.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"'sft' is nan at step 0"):
        tr.train_step()


def test_verifier_reward_modes():
    row = {"prompt": "x", "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
           "kwargs": [{}, {}]}
    assert verifier_reward(row, "all lowercase, with a comma", False, "binary", True) == 0.0
    assert verifier_reward(row, "all lowercase, with a comma", False, "fraction", True) == 0.5
    assert verifier_reward(row, "fine text here", False, "binary", True) == 1.0
    assert verifier_reward(row, "fine text here", True, "binary", True) == 0.0
    assert verifier_reward(row, "fine text here", True, "binary", False) == 1.0


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tiny_world, tmp_path):
    """A run killed with SIGKILL after its first checkpoint and restarted ends with the same weights/metrics."""
    args = ["experiments/train.py", "--method", "uniapl", "--set", "steps=4", "checkpoint_every=2"]
    run(args + ["--out", str(tmp_path / "straight")], tiny_world)
    r = run(args + ["--out", str(tmp_path / "killed")], tiny_world, env={"UNIAPL_FAULT_KILL_AT_STEP": "3"}, check=False)
    assert r.returncode == -9
    assert (tmp_path / "killed/checkpoint").exists() and not (tmp_path / "killed/metrics.json").exists()
    run(args + ["--out", str(tmp_path / "killed")], tiny_world)
    w1 = load_file(str(tmp_path / "straight/model/model.safetensors"))
    w2 = load_file(str(tmp_path / "killed/model/model.safetensors"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    f1 = json.loads((tmp_path / "straight/metrics.json").read_text())["final"]
    f2 = json.loads((tmp_path / "killed/metrics.json").read_text())["final"]
    assert {k: v for k, v in f1.items() if not k.startswith("perf/")} == \
        {k: v for k, v in f2.items() if not k.startswith("perf/")}
