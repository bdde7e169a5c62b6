"""Stage `train`: one run = one method on one student with one seed -> runs/<student>/<slug>/seed<k>/.

Examples:
  python experiments/train.py --method uniapl --student student-s --seed 0
  python experiments/train.py --method grpo --init-from runs/student-s/sft/seed0/model --name sft-then-grpo
  python experiments/train.py --method uniapl --set lambda_adv=0.5 --name uniapl_lam0.5
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from uniapl.config import deep_merge, load_params, run_config
from uniapl.demos import demo_pools
from uniapl.discriminator import Discriminator
from uniapl.errors import MissingPathError, UserError, run_stage
from uniapl.io import atomic_path, exit_fast, read_jsonl, run_metadata, write_json
from uniapl.methods import METHODS
from uniapl.models import load_policy, load_tokenizer
from uniapl.rollout import build_vllm_engine
from uniapl.selection import candidate
from uniapl.trainer import Trainer


def parse_sets(items: list[str]) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise UserError(f"--set {it!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out


EVAL_KEYS = ("key", "prompt", "instruction_id_list", "kwargs")
"""What the evaluation reads of each test prompt (``evaluate.evaluate_model``)."""


def require_dir(path: str, made_by: str) -> None:
    """Fail early (before any training) on an input directory that is not there."""
    if not Path(path).is_dir():
        raise MissingPathError(f"{path}: no such directory ({made_by})")


def param_digest(model: torch.nn.Module) -> dict:
    """sha256 of every parameter's bytes (by name; tied weights once) and their float64 sum."""
    h, total = hashlib.sha256(), 0.0
    for name, p in sorted(model.named_parameters()):
        t = p.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
        total += float(t.double().sum())
    return {"sha256": h.hexdigest(), "sum": total}


def discard_stale_checkpoint(out: Path, config: dict) -> None:
    """A checkpoint resumes only the run that wrote it: one left by a different config is removed
    (``steps`` may differ: extending a run continues it)."""
    stamp = out / "checkpoint_config.json"
    text = json.dumps({k: v for k, v in config.items() if k != "steps"}, sort_keys=True, default=str)
    if (out / "checkpoint").exists() and (not stamp.exists() or stamp.read_text() != text):
        print(f"{out}: removing a checkpoint written with a different config")
        shutil.rmtree(out / "checkpoint")
        (out / "history.jsonl").unlink(missing_ok=True)
    stamp.write_text(text)


def rollouts_per_step(cfg) -> int:
    """Rollouts one optimizer step samples (0 for methods without rollouts): the compute-matching unit."""
    return cfg.batch_rl * cfg.group_size if METHODS[cfg.method].uses_rollouts else 0


def validation_curve(out: Path, cfg, per_step: int) -> dict:
    """The run's greedy validation accuracy against optimizer steps and rollouts (from its history), and its
    budget: steps, rollouts, SFT demonstrations and rollout tokens seen."""
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x.strip()]
    pts = [h for h in hist if "val/prompt_strict" in h]
    return {"metric": "prompt_strict", "split": "validation", "n_prompts": cfg.eval_prompts,
            "steps": [h["step"] + 1 for h in pts], "rollouts": [(h["step"] + 1) * per_step for h in pts],
            "prompt_strict": [h["val/prompt_strict"] for h in pts],
            "budget": {"steps": cfg.steps, "rollouts": cfg.steps * per_step,
                       "demonstrations": cfg.steps * cfg.batch_sft if METHODS[cfg.method].uses_sft else 0,
                       "rollout_tokens": round(sum(h.get("train/response_len", 0.0) for h in hist) * per_step),
                       "train_seconds": round(sum(h.get("perf/step_seconds", 0.0) for h in hist), 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--method", default=None, choices=sorted(METHODS), help="required unless --candidate")
    ap.add_argument("--student", default="student-s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="run name (default: the method); output runs/<student>/<name>/seed<k>")
    ap.add_argument("--init-from", default=None, help="model directory of an earlier run (staged pipelines)")
    ap.add_argument("--set", nargs="*", default=[], help="train overrides, key=value")
    ap.add_argument("--evaluate", action="store_true",
                    help="then evaluate the final model (IFEval, teacher-scored log-probs, held-out ppl) "
                         "into results/eval|logp|ppl/runs/<student>/<name>/seed<k>")
    ap.add_argument("--selected", default=None,
                    help="directory of the `choose` stage (results/selection): start from <dir>/<method>.json's chosen "
                         "settings (--set overrides them)")
    ap.add_argument("--candidate", default=None,
                    help="a selection candidate (params selection.grid.<id>): method, student, seed and settings from "
                         "there; output runs/select/<id>, its validation curve results/select/<id>.json, no test split")
    ap.add_argument("--keep-checkpoint", action="store_true", help="keep the last checkpoint after a finished run")
    ap.add_argument("--models", default="models")
    ap.add_argument("--demos", default="data/teacher_demos.jsonl")
    ap.add_argument("--discriminator", default="models/discriminator")
    ap.add_argument("--out", default=None)
    ap.add_argument("--deepspeed", action="store_true", help="run under DeepSpeed (launch with torchrun/deepspeed)")
    ap.add_argument("--ds-config", default=None,
                    help="with --deepspeed: a DeepSpeed JSON merged over the built-in config (e.g. ZeRO-3 settings)")
    a = ap.parse_args()

    params = load_params(a.params)
    extra = parse_sets(a.set)
    if a.candidate is not None:
        # the candidate's method, student (selection.student), seed (selection.seed) and settings
        a.method, a.student, a.seed, cand = candidate(params, a.candidate)
        a.name, a.out, a.evaluate = a.candidate, a.out or f"runs/select/{a.candidate}", False
        extra = {**cand, **extra}
    if a.method is None:
        raise UserError("--method is required (or --candidate)")
    if a.selected is not None:
        sel = Path(a.selected) / f"{a.method}.json"
        if not sel.is_file():
            raise MissingPathError(f"{sel}: no such file (run `dvc repro choose` first, or check --selected)")
        extra = {**(json.loads(sel.read_text()).get("chosen") or {}), **extra}
    if a.init_from:
        extra["init_from"] = a.init_from
    if a.deepspeed:
        extra["distributed"] = "deepspeed"
    cfg = run_config(params, a.method, a.student, a.seed, extra)
    adv = METHODS[cfg.method].adv != "none"
    if adv and params.discriminator.source != "polar":
        require_dir(a.discriminator, "run `dvc repro discriminator` first, or check --discriminator")
    if a.evaluate:
        require_dir(f"{a.models}/teacher", "run `dvc repro pretrain@teacher` first, or check --models")
        # the evaluation's inputs, checked before training (a bad file would otherwise fail after the run)
        for split, keys in (("in_domain", EVAL_KEYS), ("ood", EVAL_KEYS), ("base_heldout", ("prompt", "response"))):
            read_jsonl(f"data/world/{split}.jsonl", keys=keys)
    # Inputs are read (and checked) before anything is written or loaded.
    samples = read_jsonl(a.demos, keys=("prompt", "response", "pass")
                         + (("instruction_id_list", "kwargs") if METHODS[cfg.method].uses_rollouts else ()))
    # RL: every prompt once (reference: a passing teacher sample); SFT: the passing samples (only_passing)
    demos, sft_demos = demo_pools(samples, params.teacher_demos.only_passing)
    # the validation curve (plateau criterion, selection): the world's validation split, never a test split
    val_rows = read_jsonl("data/world/validation.jsonl", keys=EVAL_KEYS) if cfg.eval_every else None
    src = cfg.init_from or f"{a.models}/{cfg.student}"
    tok = load_tokenizer(src)  # a missing model directory fails here, naming it
    name = a.name or a.method
    out = Path(a.out or f"runs/{a.student}/{name}/seed{a.seed}")
    out.mkdir(parents=True, exist_ok=True)
    discard_stale_checkpoint(out, cfg.model_dump())
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.distributed == "deepspeed" and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    policy = load_policy(src).to(device)
    disc = None
    if adv:
        dcfg = params.discriminator
        disc = (Discriminator.from_polar(dcfg.polar_model, trust_remote_code=dcfg.trust_remote_code)
                if dcfg.source == "polar" else Discriminator.load(a.discriminator, frozen=not cfg.disc_cotrain, device=device))
        if cfg.disc_cotrain:
            disc.unfreeze()
    ref = load_policy(src).to(device).eval() if cfg.beta > 0 else None
    engine = None
    if cfg.rollout_engine == "vllm" and METHODS[cfg.method].uses_rollouts:
        # colocated in this process, loaded from the policy's directory; synced before each step's rollouts
        engine = build_vllm_engine(cfg, src, tok)
    trainer = Trainer(cfg, policy, tok, demos, out, discriminator=disc, ref_policy=ref, engine=engine,
                      sft_demos=sft_demos, val_rows=val_rows)
    init_digest = None
    if cfg.distributed == "deepspeed":
        # Launch: torchrun --nproc_per_node N experiments/train.py --deepspeed ... (or the deepspeed launcher).
        # CPU: DeepSpeed's CPU accelerator defaults to oneCCL; gloo is forced here.
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
        init_digest = param_digest(policy)  # before ZeRO-3 partitions the weights
        # Our torch AdamW is the ZeRO client optimizer (works on CPU without compiled ops); weights and
        # optimizer states stay fp32 (bf16 only as autocast, as in the single-process path).
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "gradient_clipping": cfg.grad_clip, "zero_optimization": {"stage": cfg.zero_stage},
                     "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
        if cfg.dtype == "bf16":  # else DeepSpeed's engine.forward turns the trainer's CUDA autocast off
            ds_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
        if a.ds_config:
            ds_config = deep_merge(ds_config, json.loads(Path(a.ds_config).read_text()))
        trainer.use_deepspeed(ds_config)
    live = None
    if trainer.rank == 0:
        from dvclive import Live
        live = Live(str(out / "dvclive"), resume=(out / "checkpoint").exists(), save_dvc_exp=False,
                    dvcyaml=None, report=None)
    t0 = time.time()
    last = trainer.fit(live)
    with trainer.gathered_policy() as full:  # ZeRO-3: gathers the partitioned weights (every rank takes part)
        if cfg.distributed == "deepspeed":  # every rank: a digest of its full weights (ranks must agree)
            write_json(out / f"rank{trainer.rank}.json", {"rank": trainer.rank, "world": trainer.world,
                                                        "zero_stage": cfg.zero_stage, "init": init_digest,
                                                        "final": param_digest(full)})
        if trainer.rank == 0:
            with atomic_path(out / "model") as tmp:
                full.save_pretrained(str(tmp), safe_serialization=True)  # DeepSpeed wraps, not replaces
                tok.save_pretrained(str(tmp))
    if trainer.rank == 0:
        meta = run_metadata(cfg.seed, cfg.model_dump())
        write_json(out / "metrics.json", {"method": cfg.method, "student": cfg.student, "seed": cfg.seed,
                                          "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
                                          "final": last, **{k: meta[k] for k in ("git_revision", "versions")}})
        write_json(out / "run.json", meta)
        live.end()
    print(f"{out}: {cfg.method} done in {time.time() - t0:.0f}s")
    if a.candidate is not None and trainer.rank == 0:
        write_json(Path("results/select") / f"{a.candidate}.json",
                   {"candidate": a.candidate, "method": cfg.method, **validation_curve(out, cfg, rollouts_per_step(cfg))})
    if trainer.rank == 0 and not a.keep_checkpoint:  # finished: nothing to resume (saves disk)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    if a.evaluate and trainer.rank == 0:
        from uniapl.evaluate import evaluate_and_score
        t1 = time.time()
        n_runs = params.evaluate.n_sampled_runs
        n_runs = params.evaluate.n_sampled if n_runs is None else n_runs
        final = load_policy(str(out / "model")).to(device)  # the saved model (also right under ZeRO-3)
        model_name = f"runs/{a.student}/{name}/seed{a.seed}"
        evaluate_and_score(params, final, tok, model_name, teacher_dir=f"{a.models}/teacher", n_sampled=n_runs)
        write_json(Path("results/eval") / model_name / "validation.json", validation_curve(out, cfg, rollouts_per_step(cfg)))
        print(f"{out}: evaluated in {time.time() - t1:.0f}s")


if __name__ == "__main__":
    run_stage(main)  # a user's mistake: `error: <message>` and exit 2, no traceback
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank leaves the process group, then skips the interpreter's teardown like a single process:
        # tearing down with gloo/DeepSpeed's comm threads alive aborted a finished rank ("terminate called
        # without an active exception", exit -6) in a clean-clone CI run on 2026-11-29.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    exit_fast()
