"""Trainer tests on the tiny world built by the real stage scripts (tests/conftest.py)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from uniapl import checkpoint as C
from uniapl.config import load_params, run_config
from uniapl.discriminator import Discriminator
from uniapl.ifeval import verifier_reward
from uniapl.io import read_jsonl
from uniapl.methods import METHODS
from uniapl.models import load_policy, load_tokenizer
from uniapl.trainer import NonFiniteLoss, Trainer

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


def test_every_step_logs_the_ratio_and_both_clip_fractions(tiny_world, tmp_path):
    """On-policy (ppo_epochs=1) the ratio is exactly 1: no KL between the sampling and the updated policy,
    nothing clipped, in either policy-gradient term; a second PPO epoch moves them."""
    m = make_trainer(tiny_world, "uniapl", tmp_path / "one").train_step()
    assert (m["train/ratio_mean"], m["train/approx_kl"], m["train/clip_frac"], m["adv/clip_frac"]) == (1, 0, 0, 0)
    m = make_trainer(tiny_world, "a_sft", tmp_path / "two", ppo_epochs=2).train_step()  # the last epoch's values
    assert m["train/ratio_mean"] != 1 and m["train/approx_kl"] > 0 and "adv/clip_frac" in m
    assert "train/clip_frac" not in m  # a_sft has no verifier-reward term


def test_safetensors_helper_round_trips_tied_weights(tiny_world, tmp_path):
    policy = load_policy(tiny_world / "models/student-s")
    sd = policy.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()  # tied
    with pytest.raises(RuntimeError):  # why the helper clones: safetensors refuses shared memory
        save_file(sd, str(tmp_path / "raw.safetensors"))
    C.save_safetensors(sd, tmp_path / "model.safetensors")
    back = load_file(str(tmp_path / "model.safetensors"))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], v) for k, v in sd.items())
    fresh = load_policy(tiny_world / "models/student-s")
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(back, strict=False)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied after loading
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values()))


def test_checkpoint_round_trip_continues_like_the_original(tiny_world, tmp_path):
    """save -> load into a fresh trainer restores weights, optimizer, scheduler, RNG states and step (and the
    co-trained discriminator): the next step is bit-for-bit the original's."""
    tr = make_trainer(tiny_world, "uniapl", tmp_path / "a", disc_cotrain=True)
    tr.disc.unfreeze()
    tr.train_step()
    tr.save_checkpoint(tmp_path / "ckpt")
    assert sorted(f.name for f in (tmp_path / "ckpt").iterdir()) == \
        ["disc.safetensors", "disc_opt.pt", "model.safetensors", "trainer_state.pt"]
    assert list(torch.load(tmp_path / "ckpt/trainer_state.pt", weights_only=True)) == \
        ["step", "optimizer", "scheduler", "torch_rng", "python_rng"]
    tr2 = make_trainer(tiny_world, "uniapl", tmp_path / "b", disc_cotrain=True)
    tr2.disc.unfreeze()
    tr2.load_checkpoint(tmp_path / "ckpt")
    assert tr2.step == 1 and tr2.sched.state_dict() == tr.sched.state_dict()
    m1, m2 = tr.train_step(), tr2.train_step()
    drop = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}
    assert drop(m1) == drop(m2)
    for a, b in ((tr.policy, tr2.policy), (tr.disc, tr2.disc)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


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


def test_term_gradient_norms_split_the_step_gradient(tiny_world, tmp_path):
    """grad/pg_norm and grad/sft_norm are the norms of the two parts of the step's gradient (before
    clipping): they add up with their cosine to the total norm, and the SFT part equals the gradient of an
    SFT-only run on the same demonstrations (same seed, same step)."""
    m = make_trainer(tiny_world, "uniapl", tmp_path / "u", w_sft=1.0).train_step()
    pg, sft, cos = m["grad/pg_norm"], m["grad/sft_norm"], m["grad/cos_pg_sft"]
    assert pg > 0 and sft > 0 and -1 <= cos <= 1
    assert math.isclose(m["train/grad_norm"] ** 2, pg ** 2 + sft ** 2 + 2 * cos * pg * sft, rel_tol=1e-5)
    only_sft = make_trainer(tiny_world, "sft", tmp_path / "s").train_step()
    assert "grad/sft_norm" not in only_sft  # one term: nothing to split
    assert math.isclose(only_sft["train/grad_norm"], sft, rel_tol=1e-4)
    off = make_trainer(tiny_world, "uniapl", tmp_path / "o", term_grad_norms=False).train_step()
    assert "grad/pg_norm" not in off


def test_a_sft_rolls_out_on_its_own_sft_prompts(tiny_world, tmp_path):
    """A-SFT's rollouts are for the first batch_rl prompts of the step's SFT batch; GRPO's come from the RL
    stream (a different set of prompts at the same step)."""
    seen = {}
    for method in ("a_sft", "grpo"):
        tr = make_trainer(tiny_world, method, tmp_path / method)
        real = tr.engine.generate

        def recording(prompts, *a, _method=method, _real=real, **k):
            seen[_method] = prompts
            return _real(prompts, *a, **k)
        tr.engine.generate = recording
        tr.train_step()
        cfg = tr.cfg
        sft_idx = tr._indices(0, cfg.batch_sft, stream=1)[: cfg.batch_rl]
        rl_idx = tr._indices(0, cfg.batch_rl, stream=0)
        want = sft_idx if method == "a_sft" else rl_idx
        assert seen[method] == [tr.prompt_ids[i] for i in want for _ in range(cfg.group_size)]
    assert seen["a_sft"] != seen["grpo"]
    with pytest.raises(Exception, match="rolls out on its SFT prompts"):
        make_trainer(tiny_world, "a_sft", tmp_path / "bad", batch_rl=8, batch_sft=4)


def test_only_passing_filters_the_sft_pool_not_the_rl_prompts(tiny_world, tmp_path):
    """With a separate SFT pool (teacher_demos.only_passing), SFT batches come from it and rollouts from every
    prompt; without one, both streams index the same rows in the same order as before."""
    p = load_params(tiny_world / "params.yaml")
    demos = [d for d in read_jsonl(tiny_world / "data/teacher_demos.jsonl") if d["sample"] == 0]  # one per prompt
    passing = demos[::3]  # stands in for the passing subset
    cfg = run_config(p, "uniapl", "student-s", 0, {})
    tok = load_tokenizer(tiny_world / "models/student-s")
    disc = Discriminator.load(tiny_world / "models/discriminator")
    tr = Trainer(cfg, load_policy(tiny_world / "models/student-s"), tok, demos, tmp_path, discriminator=disc,
                 sft_demos=passing)
    sft_idx = tr._indices(0, cfg.batch_sft, stream=1)
    rl_idx = tr._indices(0, cfg.batch_rl, stream=0)
    assert all(i < len(passing) for i in sft_idx) and tr.sft_rows is passing
    assert {tr.demos[i]["prompt"] for i in rl_idx} - {d["prompt"] for d in passing}  # RL reaches beyond them
    same = make_trainer(tiny_world, "uniapl", tmp_path / "same")
    assert same.sft_order is same.order and same.sft_rows is same.demos
    with pytest.raises(ValueError, match="SFT pool is empty"):
        Trainer(cfg, load_policy(tiny_world / "models/student-s"), tok, demos, tmp_path / "e", discriminator=disc,
                sft_demos=[])


def test_validation_during_training_changes_no_bits(tiny_world, tmp_path):
    """Greedy validation evaluations (eval_every) are logged at their steps and the last one, and leave the run's
    weights bit-identical to a run without them (no random state touched)."""
    val = read_jsonl(tiny_world / "data/world/validation.jsonl")
    p = load_params(tiny_world / "params.yaml")
    tok = load_tokenizer(tiny_world / "models/student-s")
    demos = read_jsonl(tiny_world / "data/teacher_demos.jsonl")
    states, hists = [], []
    for every in (0, 2):
        cfg = run_config(p, "grpo", "student-s", 0, {"steps": 3, "eval_every": every, "eval_prompts": 6})
        tr = Trainer(cfg, load_policy(tiny_world / "models/student-s"), tok, demos, tmp_path / str(every),
                     val_rows=val)
        tr.fit(progress=False)
        states.append(tr.policy.state_dict())
        hists.append([json.loads(x) for x in (tmp_path / str(every) / "history.jsonl").read_text().splitlines()])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert [("val/prompt_strict" in h) for h in hists[1]] == [False, True, True]  # step 2, and the last (3)
    assert not any("val/prompt_strict" in h for h in hists[0])
    assert 0 <= hists[1][-1]["val/prompt_strict"] <= 1
    with pytest.raises(ValueError, match="validation prompts"):
        Trainer(run_config(p, "grpo", "student-s", 0, {"eval_every": 1}), tr.policy, tok, demos, tmp_path / "x")


def test_demo_pools_rl_every_prompt_sft_the_passing_samples():
    from uniapl.demos import demo_pools
    rows = [{"key": "a", "prompt": "A", "response": "a0", "sample": 0, "pass": False},
            {"key": "a", "prompt": "A", "response": "a1", "sample": 1, "pass": True},
            {"key": "b", "prompt": "B", "response": "b0", "sample": 0, "pass": False},
            {"key": "b", "prompt": "B", "response": "b1", "sample": 1, "pass": False},
            {"key": "c", "prompt": "C", "response": "c0", "sample": 0, "pass": True}]
    rl, sft = demo_pools(rows, only_passing=True)
    assert [r["key"] for r in rl] == ["a", "b", "c"]  # every prompt, never filtered
    assert [r["response"] for r in rl] == ["a1", "b0", "c0"]  # reference: the first passing sample
    assert [r["alt_response"] for r in rl] == ["a0", "b1", None]  # the co-trained discriminator's positive
    assert [r["response"] for r in sft] == ["a1", "c0"]
    _, sft_all = demo_pools(rows, only_passing=False)
    assert [r["response"] for r in sft_all] == ["a0", "b0", "c0"]  # each prompt's first sample
