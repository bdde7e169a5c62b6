"""experiments/trl_grpo.py: TRL's GRPOTrainer on our run config (the baseline check of `uniapl.claims`)."""

import json
import shutil
import sys

import pytest

from conftest import ROOT, run

sys.path.insert(0, str(ROOT / "experiments"))


def test_grpo_config_mirrors_our_run_config():
    from trl_grpo import trl_args

    from uniapl.config import load_params, run_config

    cfg = run_config(load_params(ROOT / "params.yaml"), "grpo", "student-s", 3, {"lr": 3e-4})
    g = trl_args(cfg, "/tmp/unused")
    assert g.per_device_train_batch_size == cfg.batch_rl * cfg.group_size and g.num_generations == cfg.group_size
    assert g.generation_batch_size == cfg.batch_rl * cfg.group_size  # one generation per optimizer step
    assert (g.max_completion_length, g.temperature, g.learning_rate, g.max_steps, g.seed) == (
        cfg.max_new_tokens, cfg.temperature, 3e-4, cfg.steps, 3)
    assert (g.epsilon, g.epsilon_high, g.beta, g.num_iterations) == (cfg.clip_low, cfg.clip_high, 0.0, 1)
    assert g.loss_type == "dapo" and g.scale_rewards == "group" and not g.mask_truncated_completions
    assert (g.adam_beta1, g.adam_beta2, g.weight_decay, g.max_grad_norm) == (0.9, 0.95, 0.0, cfg.grad_clip)
    assert g.warmup_steps == cfg.warmup and getattr(g.lr_scheduler_type, "value", None) == "constant_with_warmup"


@pytest.mark.slow
def test_trl_run_writes_what_the_claims_read(tiny_world, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(tiny_world, d, ignore=shutil.ignore_patterns("runs", "results"))
    (d / "experiments" / "trl_grpo.py").write_text((ROOT / "experiments/trl_grpo.py").read_text())
    params = (d / "params.yaml").read_text().replace("eval_every: 0", "eval_every: 1")
    (d / "params.yaml").write_text(params)
    run(["experiments/trl_grpo.py", "--seed", "0", "--steps", "2"], d)
    run_dir = d / "runs/student-s/trl_grpo/seed0"
    assert (run_dir / "model" / "model.safetensors").exists() and not (run_dir / "trl_output").exists()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["config"]["trainer"] == "trl.GRPOTrainer" and meta["config"]["grpo_config"]["loss_type"] == "dapo"
    hist = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 1] and all(0 <= h["train/reward_mean"] <= 1 for h in hist)
    v = json.loads((d / "results/eval/runs/student-s/trl_grpo/seed0/validation.json").read_text())
    assert v["steps"] == [1, 2] and len(v["prompt_strict"]) == 2 and v["budget"]["rollouts"] == 2 * 2 * 2
    ev = json.loads((d / "results/eval/runs/student-s/trl_grpo/seed0/in_domain.json").read_text())
    assert ev["n"] == 12
    rows = [json.loads(x) for x in (d / "results/eval/runs/student-s/trl_grpo/seed0/in_domain.jsonl").read_text().splitlines()]
    assert all("pass" in r for r in rows)
    assert (run_dir / "dvclive" / "plots" / "metrics" / "train" / "reward_mean.tsv").exists()
