"""Seconds per GRPO optimizer step: our ``uniapl.trainer.Trainer`` vs TRL 1.16 ``GRPOTrainer``, same setup.

Setup (the one of /work/shared/PERF.md): randomly initialised Qwen3ForCausalLM (vocab 2048, hidden 128,
intermediate 384, 4 layers, 4 heads, 2 KV heads, head_dim 32, tied embeddings), identical initial weights
on both sides (built once, saved, loaded by each side); 16 prompts x 8 generations = 128 completions of
exactly 64 tokens per optimizer step (end-of-turn forbidden before 64 tokens: ``min_new_tokens=64``);
chat-template prompts of exactly 30 tokens; beta=0; one optimizer pass per batch; fp32; no gradient
checkpointing; lr 1e-6; grad clip 1.0; temperature 1.0.

Reward: the same IFEval verifier on both sides (``uniapl.ifeval.verifier_reward``, binary strict, with
``truncated_zero_reward=False`` so the checkers really run on all 128 completions each step; TRL gets it
as a reward function reading the row's instructions from dataset columns).

Each side runs in its own subprocess, back to back (ours first), ``torch.set_num_threads(threads)``;
2 warm-up steps, then ``--steps`` measured optimizer steps; medians are reported. TRL's step time is
measured with a callback from ``on_step_begin`` to ``on_step_end`` (generation, rewards, forward,
backward, clipping and AdamW all fall in between).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_grpo_vs_trl.py [--steps 8] [--threads 2]

Last line: ``speedup_vs_trl: X`` with X = TRL median / ours median.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

PROMPT_TOKENS = 30
N_PROMPTS_PER_STEP = 16
GROUP = 8
COMPLETION_TOKENS = 64
LR = 1e-6
SPEC = dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=384)
WORDS = ("the a an of to in on for with about under over near and but or so because while when then "
         "cat dog bird tree river music garden winter market bridge engine forest rain bread train sea coffee "
         "chess bicycle tea mountain library snow bee clock map soup boat moon candle apple kite desert "
         "painting star cheese letter owl island lamp shoe summer piano good very really people think many "
         "important thing fine quite truly folks feel lots key small large quiet bright dark old new warm cold "
         "write describe tell explain note short few lines matter answer response title quote bullet section "
         "paragraph words letters lowercase capital comma end phrase postscript keyword include avoid is are "
         "was were be have has had do does did can will would should may might must I you he she it we they "
         "user assistant system").split()


# ----------------------------------------------------------------------------- shared setup (parent)

def build_setup(work: Path, n_rows: int, seed: int = 0) -> dict:
    """Tokenizer + tiny Qwen3 (saved to ``work/model``) and IFEval rows whose prompts are 30 template tokens."""
    from uniapl import world
    from uniapl.config import ModelSpec
    from uniapl.models import build_policy, encode_prompt, n_params, train_tokenizer

    rng = random.Random(seed)
    types = [t for t in world.INSTRUCTION_TYPES if t != world.JSON]
    raw = []
    for i in range(n_rows * 2):
        k = rng.choice((1, 2))
        for _ in range(100):
            ts = tuple(rng.sample(types, k))
            if world._compatible(ts, allow_heldout=True):
                break
        else:
            ts = (world.LOWER,)
        raw.append(world.make_prompt(rng, ts, rng.choice(world.TRAIN_TOPICS)))
    # A word list plus pseudo-words from syllables, so byte-level BPE fills the whole 2048-token vocabulary.
    syll = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    lexicon = list(WORDS) + ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    sentences = [" ".join(rng.choice(lexicon) for _ in range(rng.randint(5, 15))).capitalize() + "."
                 for _ in range(6000)]
    tok = train_tokenizer([r["prompt"] for r in raw] + sentences, 2048)
    if len(tok) != 2048:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, not 2048")

    rows = []
    for r in raw:
        content = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        for n in range(min(len(content), PROMPT_TOKENS), 0, -1):
            text = tok.decode(content[:n])
            if len(encode_prompt(tok, text)) == PROMPT_TOKENS:
                rows.append({"key": len(rows), "prompt": text, "response": " ".join(sentences[len(rows) % 50: len(rows) % 50 + 3]),
                             "instruction_id_list": r["instruction_id_list"], "kwargs": r["kwargs"]})
                break
        if len(rows) == n_rows:
            break
    if len(rows) < n_rows:
        raise RuntimeError(f"only {len(rows)} prompts of exactly {PROMPT_TOKENS} tokens")

    model = build_policy(ModelSpec(**SPEC), tok, seed=0)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    (work / "rows.json").write_text(json.dumps(rows))
    return {"n_params": n_params(model), "vocab": len(tok), "n_rows": len(rows)}


def load(work: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(work / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32)
    rows = json.loads((work / "rows.json").read_text())
    return tok, model, rows


def ifeval_reward(row: dict, text: str) -> float:
    from uniapl.ifeval import verifier_reward
    return verifier_reward(row, text, False, "binary", False)


# ----------------------------------------------------------------------------- ours

def run_ours(work: Path, steps: int, warmup: int, threads: int) -> dict:
    import torch
    from uniapl.config import TrainConfig
    from uniapl.rollout import HFEngine
    from uniapl.trainer import Trainer

    tok, model, rows = load(work, threads)

    class FixedLengthEngine(HFEngine):
        """HFEngine with min_new_tokens = max_new_tokens: every completion has exactly max_new_tokens tokens."""

        def generate(self, prompt_ids, seeds, temperature, max_new_tokens, batch_size=256, min_new_tokens=None):
            return super().generate(prompt_ids, seeds, temperature, max_new_tokens, batch_size,
                                    min_new_tokens=max_new_tokens if min_new_tokens is None else min_new_tokens)

    cfg = TrainConfig(method="grpo", batch_rl=N_PROMPTS_PER_STEP, group_size=GROUP, max_new_tokens=COMPLETION_TOKENS,
                      micro_batch=N_PROMPTS_PER_STEP * GROUP, lr=LR, warmup=0, beta=0.0, ppo_epochs=1,
                      truncated_zero_reward=False, reward="binary", temperature=1.0, grad_clip=1.0,
                      dtype="fp32", threads=threads, steps=warmup + steps)
    engine = FixedLengthEngine(model, tok, None)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, model, tok, rows, out, engine=engine)
        times, cpus, gens, comp_lens, prompt_lens = [], [], [], [], []
        for i in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            m = tr.train_step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= warmup:
                times.append(dt)
                cpus.append(dc)
                gens.append(m["perf/gen_seconds"])
            comp_lens.append(m["train/response_len"])
            print(f"  ours step {i}: {dt:.3f} s (gen {m['perf/gen_seconds']:.3f} s){' [warm-up]' if i < warmup else ''}",
                  file=sys.stderr, flush=True)
        idx = tr._indices(0, cfg.batch_rl, stream=0)
        prompt_lens = [len(tr.prompt_ids[i]) for i in idx]
    return {"step_s": times, "cpu_s": cpus, "gen_s": gens, "completion_len_mean": statistics.mean(comp_lens),
            "prompt_len_min": min(prompt_lens), "prompt_len_max": max(prompt_lens),
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- TRL

def run_trl(work: Path, steps: int, warmup: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok, model, rows = load(work, threads)
    seen = {"completion_lens": [], "reward_s": []}

    def reward_fn(completions, ifeval_prompt, instruction_id_list, kwargs_json, completion_ids=None, **_):
        t0 = time.perf_counter()
        out = [ifeval_reward({"prompt": p, "instruction_id_list": ids, "kwargs": json.loads(kw)},
                             c[0]["content"] if isinstance(c, list) else c)
               for c, p, ids, kw in zip(completions, ifeval_prompt, instruction_id_list, kwargs_json)]
        seen["reward_s"].append(time.perf_counter() - t0)
        if completion_ids is not None:
            seen["completion_lens"] += [len(c) for c in completion_ids]
        return out

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "ifeval_prompt": r["prompt"],
                             "instruction_id_list": r["instruction_id_list"], "kwargs_json": json.dumps(r["kwargs"])}
                            for r in rows])

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0, self.c0, self.durs, self.cpus = None, None, [], []

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.durs.append(time.perf_counter() - self.t0)
            self.cpus.append(time.process_time() - self.c0)
            print(f"  trl step {len(self.durs) - 1}: {self.durs[-1]:.3f} s"
                  f"{' [warm-up]' if len(self.durs) <= warmup else ''}", file=sys.stderr, flush=True)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=N_PROMPTS_PER_STEP * GROUP,
                          gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=COMPLETION_TOKENS,
                          generation_kwargs={"min_new_tokens": COMPLETION_TOKENS}, temperature=1.0,
                          beta=0.0, num_iterations=1, learning_rate=LR, lr_scheduler_type="constant",
                          warmup_steps=0, max_grad_norm=1.0, max_steps=warmup + steps, logging_steps=1000,
                          report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False,
                          gradient_checkpointing=False, dataloader_num_workers=0, seed=0, disable_tqdm=True)
        assert args.generation_batch_size == N_PROMPTS_PER_STEP * GROUP and args.steps_per_generation == 1
        trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[timer])
        prompt_lens = []
        orig = trainer._tokenize_prompts

        def tokenize_prompts(prompts):
            res = orig(prompts)
            prompt_lens.extend(len(p) for p in res[0])
            return res

        trainer._tokenize_prompts = tokenize_prompts
        torch.set_num_threads(threads)  # accelerate/Trainer must not have changed it
        trainer.train()
    return {"step_s": timer.durs[warmup:], "cpu_s": timer.cpus[warmup:], "completion_len_mean": statistics.mean(seen["completion_lens"]),
            "completion_len_min": min(seen["completion_lens"]), "completion_len_max": max(seen["completion_lens"]),
            "completions_per_step": len(seen["completion_lens"]) / len(timer.durs),
            "prompt_len_min": min(prompt_lens), "prompt_len_max": max(prompt_lens),
            "reward_s_median": statistics.median(seen["reward_s"]), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="measured optimizer steps per side (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.side:  # child process: one side, one JSON line on stdout
        fn = run_ours if a.side == "ours" else run_trl
        print("RESULT " + json.dumps(fn(Path(a.work), a.steps, a.warmup, a.threads)), flush=True)
        return

    n_rows = N_PROMPTS_PER_STEP * (a.steps + a.warmup) * 2
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        info = build_setup(work, n_rows)
        print(f"model: Qwen3ForCausalLM {info['n_params'] / 1e6:.2f}M params, vocab {info['vocab']}; "
              f"{info['n_rows']} prompt rows; {N_PROMPTS_PER_STEP} prompts x {GROUP} = {N_PROMPTS_PER_STEP * GROUP} "
              f"completions of {COMPLETION_TOKENS} tokens per step; fp32; threads {a.threads}; "
              f"{a.warmup} warm-up + {a.steps} measured steps per side", flush=True)
        print("reward: IFEval verifier (uniapl.ifeval.verifier_reward, binary strict, run on every completion) "
              "on both sides", flush=True)
        res = {}
        for side in ("ours", "trl"):
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--threads", str(a.threads)]
            p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if p.returncode != 0:
                sys.exit(f"{side} side failed (rc {p.returncode})")
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
            res[side] = json.loads(line[len("RESULT "):])

    o, t = res["ours"], res["trl"]
    ours_med, trl_med = statistics.median(o["step_s"]), statistics.median(t["step_s"])
    gen_med = statistics.median(o["gen_s"])
    print(f"tokens: ours prompts {o['prompt_len_min']}-{o['prompt_len_max']}, completions mean "
          f"{o['completion_len_mean']:.1f}; TRL prompts {t['prompt_len_min']}-{t['prompt_len_max']}, completions "
          f"{t['completion_len_min']}-{t['completion_len_max']} (mean {t['completion_len_mean']:.1f}), "
          f"{t['completions_per_step']:.0f} per step; torch threads at the end: ours {o['threads']}, TRL {t['threads']}")
    print(f"ours steps (s): {' '.join(f'{x:.3f}' for x in o['step_s'])}")
    print(f"trl  steps (s): {' '.join(f'{x:.3f}' for x in t['step_s'])}")
    print(f"ours breakdown (median): perf/gen_seconds {gen_med:.3f} s (generation + decode + rewards + packing), "
          f"rest (forward, backward, clip, AdamW) {ours_med - gen_med:.3f} s")
    print(f"trl reward fn median: {t['reward_s_median']:.3f} s per step")
    o_cpu, t_cpu = statistics.median(o["cpu_s"]), statistics.median(t["cpu_s"])
    print(f"fastest step: ours {min(o['step_s']):.3f} s, TRL {min(t['step_s']):.3f} s (ratio {min(t['step_s']) / min(o['step_s']):.2f})")
    print(f"process CPU seconds per step (median; less sensitive to other jobs): ours {o_cpu:.3f}, TRL {t_cpu:.3f} "
          f"(ratio {t_cpu / o_cpu:.2f})")
    print(f"ours_s_per_step: {ours_med:.3f}  ({1 / ours_med:.3f} steps/s)")
    print(f"trl_s_per_step: {trl_med:.3f}  ({1 / trl_med:.3f} steps/s)")
    print("note: wall-clock medians on a shared machine: other jobs' load changes step times (10-20% on a quiet "
          "machine, far more when it is saturated); compare the fastest-step and CPU-time ratios too")
    print(f"speedup_vs_trl: {trl_med / ours_med:.2f}")


if __name__ == "__main__":
    main()
