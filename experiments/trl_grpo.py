"""Stage `trl_grpo`: the GRPO baseline trained by TRL's ``GRPOTrainer`` instead of our trainer, on the same
world, student, prompts, reward, group size, learning rate and number of rollouts -> runs/<student>/trl_grpo/seed<k>/.

Why: "is your GRPO GRPO?" The claim "Our GRPO matches TRL's GRPOTrainer" (``uniapl.claims``) compares these
runs with the ``grpo`` runs, paired over seeds and test prompts.

What is the same as our ``grpo`` run (every value read from the run's own config, ``run_config(params, "grpo")``
with the selected settings): the RL prompt pool (``demos.demo_pools``: every prompt once), the chat-template
prompt, ``batch_rl`` prompts x ``group_size`` completions per optimizer step, ``steps`` steps, rollouts sampled
at ``temperature`` up to ``max_new_tokens``, the binary IFEval verifier reward (``ifeval.verifier_reward``, zero
for a completion cut at the cap), group advantages scaled by the group std (``scale_std``), the clip
(``clip_low`` / ``clip_high`` as ``epsilon`` / ``epsilon_high``), ``beta``, one pass per batch (``ppo_epochs``),
the loss aggregation (``agg`` -> ``loss_type``), AdamW (lr, betas 0.9/0.95, no weight decay), the gradient clip,
a linear warm-up of ``warmup`` steps then constant, fp32. What differs: TRL's own sampler (``model.generate``) and
data order (its ``RepeatSampler`` seeded with the run's seed), and its warm-up starts at lr 0 (ours at
lr/warmup). The validation curve (greedy, every ``eval_every`` steps) and the final evaluation are ours, as
for every run.

    python experiments/trl_grpo.py --student student-s --seed 0 --selected results/selection
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from uniapl.config import load_params, run_config
from uniapl.demos import demo_pools
from uniapl.errors import MissingPathError, UserError, run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, run_metadata, write_json

LOSS_TYPE = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}
"""Our ``agg`` -> TRL's ``loss_type`` (the same normalisations; see ``TrainConfig.agg``)."""
EVAL_KEYS = ("key", "prompt", "instruction_id_list", "kwargs")


def trl_args(cfg, out: str):
    """The GRPOConfig of our run config ``cfg`` (see the module docstring)."""
    from trl import GRPOConfig
    if cfg.agg not in LOSS_TYPE:
        raise UserError(f"train.agg {cfg.agg!r} has no TRL loss_type")
    return GRPOConfig(
        output_dir=out, per_device_train_batch_size=cfg.batch_rl * cfg.group_size, gradient_accumulation_steps=1,
        num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=1.0, top_k=0, beta=cfg.beta, epsilon=cfg.clip_low, epsilon_high=cfg.clip_high,
        num_iterations=cfg.ppo_epochs, loss_type=LOSS_TYPE[cfg.agg], scale_rewards="group" if cfg.scale_std else "none",
        mask_truncated_completions=False, learning_rate=cfg.lr, lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=cfg.grad_clip,
        max_steps=cfg.steps, logging_steps=1, report_to=[], save_strategy="no", use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
        dataloader_num_workers=0, seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True,
        log_completions=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--student", default="student-s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--selected", default=None, help="results/selection: start from grpo.json's chosen settings")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps (benchmarks, smoke runs)")
    ap.add_argument("--models", default="models")
    ap.add_argument("--demos", default="data/teacher_demos.jsonl")
    a = ap.parse_args()

    params = load_params(a.params)
    extra = {}
    if a.selected is not None:
        sel = Path(a.selected) / "grpo.json"
        if not sel.is_file():
            raise MissingPathError(f"{sel}: no such file (run `dvc repro choose` first, or check --selected)")
        extra = json.loads(sel.read_text()).get("chosen") or {}
    if a.steps is not None:
        extra["steps"] = a.steps
    cfg = run_config(params, "grpo", a.student, a.seed, extra)
    if cfg.ppo_epochs != 1 or cfg.beta != 0:
        raise UserError("trl_grpo mirrors one on-policy pass without a reference model (train.ppo_epochs 1, beta 0)")
    for split in ("in_domain", "ood", "validation"):
        read_jsonl(f"data/world/{split}.jsonl", keys=EVAL_KEYS)
    read_jsonl("data/world/base_heldout.jsonl", keys=("prompt", "response"))
    samples = read_jsonl(a.demos, keys=("prompt", "response", "pass", "instruction_id_list", "kwargs"))
    demos, _ = demo_pools(samples, params.teacher_demos.only_passing)
    val_rows = read_jsonl("data/world/validation.jsonl", keys=EVAL_KEYS)[:cfg.eval_prompts]
    src = f"{a.models}/{cfg.student}"
    if not Path(src).is_dir():
        raise MissingPathError(f"{src}: no such directory (run `dvc repro pretrain@{cfg.student}` first)")

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from uniapl import ifeval
    from uniapl.evaluate import evaluate_and_score, evaluate_model
    from uniapl.models import load_policy, load_tokenizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(src)
    policy = load_policy(src)
    name = f"runs/{a.student}/trl_grpo/seed{a.seed}"
    out = Path(name)
    out.mkdir(parents=True, exist_ok=True)
    eos = tok.eos_token_id

    def reward_fn(completions, completion_ids, ifeval_prompt, instruction_id_list, kwargs_json, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        trunc = [len(ids) >= cfg.max_new_tokens and (not ids or ids[-1] != eos) for ids in completion_ids]
        return [ifeval.verifier_reward({"prompt": p, "instruction_id_list": i, "kwargs": json.loads(k)}, t, tr,
                                       cfg.reward, cfg.truncated_zero_reward)
                for t, tr, p, i, k in zip(texts, trunc, ifeval_prompt, instruction_id_list, kwargs_json)]

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": d["prompt"]}], "ifeval_prompt": d["prompt"],
                             "instruction_id_list": d["instruction_id_list"], "kwargs_json": json.dumps(d["kwargs"])}
                            for d in demos])
    history: list[dict] = []
    from dvclive import Live
    live = Live(str(out / "dvclive"), save_dvc_exp=False, dvcyaml=None, report=None)

    class Curves(TrainerCallback):
        """Per step: TRL's logged reward and length; every eval_every steps: our greedy validation."""

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                history.append({"step": state.global_step - 1, "train/reward_mean": logs["reward"],
                                "train/response_len": logs.get("completions/mean_length", 0.0)})

        def on_step_end(self, args, state, control, model=None, **kw):
            s = state.global_step
            if cfg.eval_every and (s % cfg.eval_every == 0 or s == cfg.steps):
                was = policy.training
                policy.eval()
                with torch.no_grad():
                    m, _ = evaluate_model(policy, tok, val_rows, cfg.max_new_tokens, 0, 1.0, 0, batch_size=len(val_rows))
                policy.train(was)
                self.pending = {"val/prompt_strict": m["prompt_strict"], "val/inst_strict": m["inst_strict"]}
                print(f"{out}: step {s} validation prompt_strict {m['prompt_strict']:.3f}", flush=True)
            else:
                self.pending = None

        def on_step_begin(self, args, state, control, **kw):
            self._attach()

        def on_train_end(self, args, state, control, **kw):
            self._attach()

        def _attach(self):  # the step's log arrives after on_step_end: join the validation to it, then log it
            p = getattr(self, "pending", None)
            if p and history:
                history[-1].update(p)
            self.pending = None
            if history and history[-1]["step"] == live.step:
                for k, v in history[-1].items():
                    if k != "step":
                        live.log_metric(k, v)
                live.next_step()

    t0 = time.time()
    with atomic_path(out / "trl_output") as tmp:
        args = trl_args(cfg, str(tmp))
        trainer = GRPOTrainer(model=policy, reward_funcs=[reward_fn], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[Curves()])
        torch.set_num_threads(cfg.threads)
        trainer.train()
    train_seconds = time.time() - t0
    policy = trainer.model
    (out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    with atomic_path(out / "model") as tmp:
        policy.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    meta = run_metadata(cfg.seed, {**cfg.model_dump(), "trainer": "trl.GRPOTrainer",
                                   "grpo_config": {k: v for k, v in args.to_dict().items() if k != "output_dir"}})
    write_json(out / "metrics.json", {"method": "trl_grpo", "student": cfg.student, "seed": cfg.seed, "steps": cfg.steps,
                                      "seconds": round(train_seconds, 1), "final": history[-1] if history else {},
                                      **{k: meta[k] for k in ("git_revision", "versions")}})
    write_json(out / "run.json", meta)
    live.end()
    shutil.rmtree(out / "trl_output", ignore_errors=True)
    final = load_policy(str(out / "model"))
    n_runs = params.evaluate.n_sampled if params.evaluate.n_sampled_runs is None else params.evaluate.n_sampled_runs
    evaluate_and_score(params, final, tok, name, teacher_dir=f"{a.models}/teacher", n_sampled=n_runs)
    per_step = cfg.batch_rl * cfg.group_size
    pts = [h for h in history if "val/prompt_strict" in h]
    write_json(Path("results/eval") / name / "validation.json", {
        "metric": "prompt_strict", "split": "validation", "n_prompts": len(val_rows),
        "steps": [h["step"] + 1 for h in pts], "rollouts": [(h["step"] + 1) * per_step for h in pts],
        "prompt_strict": [h["val/prompt_strict"] for h in pts], "reward": [h["train/reward_mean"] for h in history],
        "budget": {"steps": cfg.steps, "rollouts": cfg.steps * per_step, "demonstrations": 0,
                   "rollout_tokens": round(sum(h["train/response_len"] for h in history) * per_step),
                   "train_seconds": round(train_seconds, 1)}})
    print(f"{out}: TRL GRPO done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("WANDB_DISABLED", "true")
    run_stage(main)
    exit_fast()
