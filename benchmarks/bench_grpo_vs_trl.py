"""Seconds per GRPO optimizer step: our ``uniapl.trainer.Trainer`` vs TRL 1.16 ``GRPOTrainer``, same setup,
with each side's step split into phases, model FLOP/s against this CPU's measured matmul peak, and the host.

Setup (the one of /work/shared/PERF.md): randomly initialised Qwen3ForCausalLM (vocab 2048, hidden 128,
intermediate 384, 4 layers, 4 heads, 2 KV heads, head_dim 32, tied embeddings), identical initial weights
on both sides (built once, saved, loaded by each side); 16 prompts x 8 generations = 128 completions of
exactly 64 tokens per optimizer step (end-of-turn forbidden before 64 tokens: ``min_new_tokens=64``);
chat-template prompts of exactly 30 tokens; beta=0; one optimizer pass per batch; ``--dtype`` (default
fp32: weights and optimizer in fp32, bf16: the same with bf16 autocast on both sides); no gradient
checkpointing; lr 1e-6; grad clip 1.0; temperature 1.0.

Reward: the same IFEval verifier on both sides (``uniapl.ifeval.verifier_reward``, binary strict, with
``truncated_zero_reward=False`` so the checkers really run on all 128 completions each step; TRL gets it
as a reward function reading the row's instructions from dataset columns).

Each side runs in its own subprocess, back to back (ours first), ``torch.set_num_threads(threads)``;
2 warm-up steps, then ``--steps`` measured optimizer steps; medians are reported. TRL's step time is
measured with a callback from ``on_step_begin`` to ``on_step_end`` (generation, rewards, forward,
backward, clipping and AdamW all fall in between).

Output, top to bottom:
* ``host:`` CPU model, the flags avx2/avx512f/avx512_bf16/amx_bf16/amx_tile from /proc/cpuinfo, torch
  version and kernel level, thread count; ``peak_gflops_fp32`` and ``peak_gflops_bf16``: a square
  ``torch.matmul`` with the bench's thread count (the largest of 512/1024/2048 that runs in about 0.3 s at
  most, median of 7);
* ``precision ours:`` / ``precision TRL:`` each side's setting (ours ``TrainConfig.dtype``, TRL
  ``GRPOConfig.bf16/fp16`` and accelerate's mixed precision) and the dtype actually computed in (a
  forward hook on layer 0's q_proj and on the LM head, during the first warm-up step, in generation and
  in the training forward); ``precision check`` says they agree, or the bench exits with an error when the two sides
  differ or differ from ``--dtype``;
* per-phase medians (s per step), from timing wrappers put around each side's own functions (nothing in
  ``src/uniapl`` or TRL is edited; a call inside another timed call is charged to its own phase only):
  generation; reward (the verifier, and the rest of rollout preparation: decoding, advantages, packing or
  padding); log-prob forwards without gradient (old/reference policy: none here on either side, beta=0 and
  one pass); the training forward; backward (``torch.autograd.backward``); optimizer (gradient clipping
  and ``Optimizer.step``, by torch's global optimizer hooks); loss and bookkeeping; other (the rest of the
  step). ``phase coverage`` lines say which functions make up each phase on each side;
* analytic model FLOPs per step (``_perf.grpo_step_flops``: 2 x matmul weights x tokens for the decoder,
  the LM head on the 64 scored positions, attention's two matmuls over the causal (query, key) pairs;
  generation = prefill + one decode step per sampled token but the last; backward = 2 x training forward)
  and each side's FLOP/s, per step and per phase, with its share of the measured peak in ``--dtype``;
* the old summary lines (step times, fastest step, CPU seconds) and, last, ``speedup_vs_trl: X`` with
  X = TRL median / ours median.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_grpo_vs_trl.py [--steps 8] [--threads 2]
        [--dtype fp32|bf16] [--summary results/bench/NAME.json]

``--summary`` also writes everything as JSON (host, peaks, precision, per-step times and phases, FLOPs).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _perf import (Dims, PhaseClock, as_jsonable, body_matmul_params, format_host, grpo_step_flops,  # noqa: E402
                   head_matmul_params, host_info, matmul_peak_gflops, phase_medians)

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}


def _offline_env() -> None:
    """Nothing is downloaded: set in main() and in each side's subprocess, not at import (a test imports
    this module's helpers)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)

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
    dims = Dims.from_config(model.config)
    return {"n_params": n_params(model), "vocab": len(tok), "n_rows": len(rows), "dims": dims,
            "body_params": body_matmul_params(dims), "head_params": head_matmul_params(dims)}


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



# ----------------------------------------------------------------------------- instrumentation (children)

# Phases in print order: (key, label). Each side maps its own functions onto these keys (see COVERAGE).
PHASES = (("generation", "generation"),
          ("verifier", "reward: IFEval verifier"),
          ("prep", "reward: rest of rollout prep"),
          ("logp_nograd", "log-prob fwd, no grad (old/ref)"),
          ("train_forward", "log-prob fwd, training"),
          ("backward", "backward"),
          ("optimizer", "optimizer (clip + step)"),
          ("loss", "loss + bookkeeping"),
          ("other", "other (rest of the step)"))
COVERAGE = {
    "ours": "generation = engine.generate (HFEngine + min_new_tokens: prefill, 64 sampled tokens, token lists); "
            "verifier = uniapl.ifeval.verifier_reward calls; prep = the rest of Trainer._rollouts (decode, "
            "advantages, pack); log-prob fwd = uniapl.trainer.sequence_logprobs (no grad: old/ref passes, "
            "none here; training: decoder + LM head on response positions + log-softmax/entropy); backward = "
            "torch.autograd.backward; optimizer = clip_grad_norm_ + AdamW.step; loss = the rest of "
            "Trainer._accumulate (objective, metrics); other = the rest of Trainer.train_step (zero_grad, "
            "scheduler, metrics)",
    "trl": "generation = GRPOTrainer._generate_single_turn (left-pad, unwrapped_model.generate, EOS masking); "
           "verifier = the reward function; prep = the rest of _generate_and_score_completions (prompt "
           "tokenization with the chat template, decoding, padding, advantages, metrics); log-prob fwd = "
           "_get_per_token_logps_and_entropies (no grad: old/ref passes, none here; training: decoder + fused "
           "LM head log-probs/entropy on completion positions); backward = torch.autograd.backward "
           "(accelerator.backward); optimizer = Trainer._clip_grad_norm + AdamW.step (fused); loss = the "
           "rest of compute_loss; other = the rest between on_step_begin and on_step_end (training_step, "
           "_prepare_inputs' shuffle/split, zero_grad, scheduler, callbacks)",
}


def instrument_common(clock: PhaseClock) -> list:
    """Backward and optimizer timing shared by both sides; returns the hook handles."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    torch.autograd.backward = clock.wrap(torch.autograd.backward, "backward")
    return [register_optimizer_step_pre_hook(lambda *_: clock.push("optimizer")),
            register_optimizer_step_post_hook(lambda *_: clock.pop())]


def logp_phase() -> str:
    import torch
    return "train_forward" if torch.is_grad_enabled() else "logp_nograd"


class DtypeProbe:
    """The output dtype of layer 0's q_proj and of the LM head, by grad mode: what generation (no grad) and
    the training forward (grad) really compute in. Both linear layers, so both show autocast; the LM head is
    there because our fused Qwen3 forward (``uniapl.qwen3_fused``) uses q_proj's weight in a concatenated
    matmul and never calls the module. Attached for the first warm-up step only."""

    def __init__(self, model):
        import torch
        self.seen: dict[str, set] = {}

        def hook(mod, inp, out):
            key = "training" if torch.is_grad_enabled() else "no_grad"
            self.seen.setdefault(key, set()).add(str(out.dtype).replace("torch.", ""))

        self.handles = [model.model.layers[0].self_attn.q_proj.register_forward_hook(hook),
                        model.lm_head.register_forward_hook(hook)]

    def remove(self) -> dict:
        for h in self.handles:
            h.remove()
        return {k: sorted(v) for k, v in self.seen.items()}


# ----------------------------------------------------------------------------- ours

def run_ours(work: Path, steps: int, warmup: int, threads: int, dtype: str) -> dict:
    import torch
    import uniapl.ifeval as ifeval_mod
    import uniapl.trainer as trainer_mod
    from uniapl.config import TrainConfig
    from uniapl.models import autocast_dtype
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
                      dtype=dtype, threads=threads, steps=warmup + steps)
    engine = FixedLengthEngine(model, tok, autocast_dtype(cfg.dtype))
    clock = PhaseClock()
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, model, tok, rows, out, engine=engine)
        # Timing wrappers (this subprocess only): instance attributes and module globals the trainer looks up.
        engine.generate = clock.wrap(engine.generate, "generation")
        tr._rollouts = clock.wrap(tr._rollouts, "prep")
        tr._accumulate = clock.wrap(tr._accumulate, "loss")
        ifeval_mod.verifier_reward = clock.wrap(ifeval_mod.verifier_reward, "verifier")
        trainer_mod.sequence_logprobs = clock.wrap(trainer_mod.sequence_logprobs, logp_phase)
        torch.nn.utils.clip_grad_norm_ = clock.wrap(torch.nn.utils.clip_grad_norm_, "optimizer")
        instrument_common(clock)
        probe = DtypeProbe(model)
        observed = None
        times, cpus, gens, comp_lens, phases = [], [], [], [], []
        for i in range(warmup + steps):
            clock.take()
            t0, c0 = time.perf_counter(), time.process_time()
            m = tr.train_step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            ph = clock.take()
            if observed is None:
                observed = probe.remove()
            if i >= warmup:
                times.append(dt)
                cpus.append(dc)
                gens.append(m["perf/gen_seconds"])
                phases.append({**ph, "other": dt - sum(ph.values())})
            comp_lens.append(m["train/response_len"])
            print(f"  ours step {i}: {dt:.3f} s (gen {m['perf/gen_seconds']:.3f} s){' [warm-up]' if i < warmup else ''}",
                  file=sys.stderr, flush=True)
        idx = tr._indices(0, cfg.batch_rl, stream=0)
        prompt_lens = [len(tr.prompt_ids[i]) for i in idx]
        opt = tr.opt
    precision = {"setting": f"TrainConfig.dtype={cfg.dtype} (autocast {autocast_dtype(cfg.dtype) or 'none'})",
                 "dtype": cfg.dtype, "param_dtypes": sorted({str(p.dtype).replace('torch.', '') for p in model.parameters()}),
                 "observed": observed}
    return {"step_s": times, "cpu_s": cpus, "gen_s": gens, "phases": phases, "completion_len_mean": statistics.mean(comp_lens),
            "prompt_len_min": min(prompt_lens), "prompt_len_max": max(prompt_lens),
            "threads": torch.get_num_threads(), "precision": precision,
            "optimizer": f"{type(opt).__name__}(foreach={opt.defaults.get('foreach')}, fused={opt.defaults.get('fused')})"}


# ----------------------------------------------------------------------------- TRL

def run_trl(work: Path, steps: int, warmup: int, threads: int, dtype: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok, model, rows = load(work, threads)
    seen = {"completion_lens": [], "reward_s": []}
    clock = PhaseClock()

    def reward_fn(completions, ifeval_prompt, instruction_id_list, kwargs_json, completion_ids=None, **_):
        clock.push("verifier")
        t0 = time.perf_counter()
        out = [ifeval_reward({"prompt": p, "instruction_id_list": ids, "kwargs": json.loads(kw)},
                             c[0]["content"] if isinstance(c, list) else c)
               for c, p, ids, kw in zip(completions, ifeval_prompt, instruction_id_list, kwargs_json)]
        seen["reward_s"].append(time.perf_counter() - t0)
        clock.pop()
        if completion_ids is not None:
            seen["completion_lens"] += [len(c) for c in completion_ids]
        return out

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "ifeval_prompt": r["prompt"],
                             "instruction_id_list": r["instruction_id_list"], "kwargs_json": json.dumps(r["kwargs"])}
                            for r in rows])

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0, self.c0, self.durs, self.cpus, self.phases = None, None, [], [], []
            self.probe, self.observed = None, None

        def on_step_begin(self, args, state, control, **kw):
            clock.take()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.durs.append(time.perf_counter() - self.t0)
            self.cpus.append(time.process_time() - self.c0)
            ph = clock.take()
            self.phases.append({**ph, "other": self.durs[-1] - sum(ph.values())})
            if self.probe is not None:
                self.observed, self.probe = self.probe.remove(), None
            print(f"  trl step {len(self.durs) - 1}: {self.durs[-1]:.3f} s"
                  f"{' [warm-up]' if len(self.durs) <= warmup else ''}", file=sys.stderr, flush=True)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=N_PROMPTS_PER_STEP * GROUP,
                          gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=COMPLETION_TOKENS,
                          generation_kwargs={"min_new_tokens": COMPLETION_TOKENS}, temperature=1.0,
                          beta=0.0, num_iterations=1, learning_rate=LR, lr_scheduler_type="constant",
                          warmup_steps=0, max_grad_norm=1.0, max_steps=warmup + steps, logging_steps=1000,
                          report_to=[], save_strategy="no", use_cpu=True, bf16=dtype == "bf16", fp16=False,
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
        # Timing wrappers (this subprocess only), on the trainer instance.
        trainer._generate_and_score_completions = clock.wrap(trainer._generate_and_score_completions, "prep")
        trainer._generate_single_turn = clock.wrap(trainer._generate_single_turn, "generation")
        trainer._get_per_token_logps_and_entropies = clock.wrap(trainer._get_per_token_logps_and_entropies, logp_phase)
        trainer.compute_loss = clock.wrap(trainer.compute_loss, "loss")
        trainer._clip_grad_norm = clock.wrap(trainer._clip_grad_norm, "optimizer")
        instrument_common(clock)
        timer.probe = DtypeProbe(model)
        torch.set_num_threads(threads)  # accelerate/Trainer must not have changed it
        trainer.train()
        opt = trainer.optimizer
        while hasattr(opt, "optimizer"):  # accelerate's AcceleratedOptimizer
            opt = opt.optimizer
        mp = str(trainer.accelerator.mixed_precision)
    precision = {"setting": f"GRPOConfig bf16={args.bf16} fp16={args.fp16} (accelerate mixed_precision {mp})",
                 "dtype": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
                 "param_dtypes": sorted({str(p.dtype).replace('torch.', '') for p in model.parameters()}),
                 "observed": timer.observed}
    return {"step_s": timer.durs[warmup:], "cpu_s": timer.cpus[warmup:], "phases": timer.phases[warmup:],
            "completion_len_mean": statistics.mean(seen["completion_lens"]),
            "completion_len_min": min(seen["completion_lens"]), "completion_len_max": max(seen["completion_lens"]),
            "completions_per_step": len(seen["completion_lens"]) / len(timer.durs),
            "prompt_len_min": min(prompt_lens), "prompt_len_max": max(prompt_lens),
            "reward_s_median": statistics.median(seen["reward_s"]), "threads": torch.get_num_threads(),
            "precision": precision,
            "optimizer": f"{type(opt).__name__}(foreach={opt.defaults.get('foreach')}, fused={opt.defaults.get('fused')})"}


# ----------------------------------------------------------------------------- driver

TORCH_NAME = {"fp32": "float32", "bf16": "bfloat16"}


def check_precision(dtype: str, res: dict) -> list[str]:
    """Problems (empty: none) with the two sides' precision: setting, weights and the dtype computed in."""
    want, problems = TORCH_NAME[dtype], []
    for side in ("ours", "trl"):
        p = res[side]["precision"]
        if p["dtype"] != dtype:
            problems.append(f"{side}: set to {p['dtype']}, --dtype is {dtype}")
        if p["param_dtypes"] != ["float32"]:
            problems.append(f"{side}: weights in {p['param_dtypes']}, expected float32")
        obs = p["observed"] or {}
        for mode in ("no_grad", "training"):
            if obs.get(mode) != [want]:
                problems.append(f"{side}: {mode} forwards computed in {obs.get(mode)}, expected {want}")
    if res["ours"]["precision"]["observed"] != res["trl"]["precision"]["observed"]:
        problems.append("the two sides compute in different dtypes")
    return problems


def main() -> None:
    _offline_env()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="measured optimizer steps per side (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="precision of both sides: fp32, or bf16 autocast with fp32 weights and optimizer")
    ap.add_argument("--summary", help="also write everything as JSON to this file")
    ap.add_argument("--side", choices=("ours", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.side:  # child process: one side, one JSON line on stdout
        fn = run_ours if a.side == "ours" else run_trl
        print("RESULT " + json.dumps(fn(Path(a.work), a.steps, a.warmup, a.threads, a.dtype)), flush=True)
        return

    host = host_info(a.threads)
    print(format_host(host), flush=True)
    peaks = {dt: matmul_peak_gflops(dt, a.threads) for dt in ("fp32", "bf16")}
    for dt, pk in peaks.items():
        print(f"peak_gflops_{dt}: {pk['gflops']:.1f}  ({pk['n']}x{pk['n']} torch.matmul, median of {pk['reps']}, "
              f"{a.threads} threads)", flush=True)
    peak = peaks[a.dtype]["gflops"]

    n_rows = N_PROMPTS_PER_STEP * (a.steps + a.warmup) * 2
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        info = build_setup(work, n_rows)
        print(f"model: Qwen3ForCausalLM {info['n_params'] / 1e6:.2f}M params, vocab {info['vocab']}; "
              f"{info['n_rows']} prompt rows; {N_PROMPTS_PER_STEP} prompts x {GROUP} = {N_PROMPTS_PER_STEP * GROUP} "
              f"completions of {COMPLETION_TOKENS} tokens per step; {a.dtype}; threads {a.threads}; "
              f"{a.warmup} warm-up + {a.steps} measured steps per side", flush=True)
        print("reward: IFEval verifier (uniapl.ifeval.verifier_reward, binary strict, run on every completion) "
              "on both sides", flush=True)
        res = {}
        for side in ("ours", "trl"):
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--threads", str(a.threads), "--dtype", a.dtype]
            p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if p.returncode != 0:
                sys.exit(f"{side} side failed (rc {p.returncode})")
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
            res[side] = json.loads(line[len("RESULT "):])

    o, t = res["ours"], res["trl"]
    for side, r in (("ours", o), ("TRL", t)):
        pr = r["precision"]
        obs = pr["observed"] or {}
        print(f"precision {side}: {pr['setting']}; weights {'/'.join(pr['param_dtypes'])}; computed in (layer 0 "
              f"q_proj / LM head output) generation {'/'.join(obs.get('no_grad', ['?']))}, training forward "
              f"{'/'.join(obs.get('training', ['?']))}; optimizer {r['optimizer']}")
    problems = check_precision(a.dtype, res)
    if problems:
        print("PRECISION MISMATCH: " + "; ".join(problems), flush=True)
        sys.exit("precision mismatch between the two sides: the comparison is void")
    print(f"precision check: both sides run {a.dtype} (same setting, fp32 weights, same compute dtype): ok")

    ours_med, trl_med = statistics.median(o["step_s"]), statistics.median(t["step_s"])
    keys = [k for k, _ in PHASES]
    pm = {"ours": phase_medians(o["phases"], keys), "trl": phase_medians(t["phases"], keys)}
    print("phases (median over the measured steps, s per step)        ours      TRL")
    for k, label in PHASES:
        print(f"  {label:<56} {pm['ours'][k]:7.3f}  {pm['trl'][k]:7.3f}")
    print(f"  {'reward (verifier + rest of rollout prep)':<56} {pm['ours']['verifier'] + pm['ours']['prep']:7.3f}  "
          f"{pm['trl']['verifier'] + pm['trl']['prep']:7.3f}")
    print(f"  {'step (median)':<56} {ours_med:7.3f}  {trl_med:7.3f}")
    for side in ("ours", "trl"):
        print(f"phase coverage, {side}: {COVERAGE[side]}")
        missed = [k for k in ("generation", "verifier", "train_forward", "backward", "optimizer") if pm[side][k] <= 0]
        if missed:  # a renamed method or a changed call path: that time went to an outer phase or to "other"
            print(f"WARNING: {side}: no time seen in phase(s) {', '.join(missed)}: the timing wrappers no "
                  f"longer match the code; the split is wrong (the step times are not affected)")

    fl = grpo_step_flops(info["dims"], N_PROMPTS_PER_STEP * GROUP, PROMPT_TOKENS, COMPLETION_TOKENS)
    print(f"model FLOPs per step (analytic, the same for both sides; decoder matmuls 2 x {info['body_params']} "
          f"weights x tokens, LM head 2 x {info['head_params']} x {COMPLETION_TOKENS} scored positions, attention "
          f"q.k and p.v over causal pairs; embedding, norms, softmax not counted): generation "
          f"{fl['generation'] / 1e9:.2f} GFLOP (prefill {PROMPT_TOKENS} + {COMPLETION_TOKENS - 1} decode steps), "
          f"training forward {fl['train_forward'] / 1e9:.2f}, backward {fl['backward'] / 1e9:.2f} (2 x forward), "
          f"total {fl['total'] / 1e9:.2f} GFLOP")
    flops_summary = {}
    for side, med in (("ours", ours_med), ("trl", trl_med)):
        ph = pm[side]
        rates = {"step": fl["total"] / med,
                 "generation": fl["generation"] / ph["generation"] if ph["generation"] else float("nan"),
                 "train_forward": fl["train_forward"] / ph["train_forward"] if ph["train_forward"] else float("nan"),
                 "backward": fl["backward"] / ph["backward"] if ph["backward"] else float("nan")}
        flops_summary[side] = {k: v / 1e9 for k, v in rates.items()}
        print(f"model FLOP/s {side}: step {rates['step'] / 1e9:.1f} GFLOP/s ({100 * rates['step'] / 1e9 / peak:.1f}% "
              f"of peak_gflops_{a.dtype}); " + ", ".join(
                  f"{k.replace('_', ' ')} {rates[k] / 1e9:.1f} ({100 * rates[k] / 1e9 / peak:.1f}%)"
                  for k in ("generation", "train_forward", "backward")))

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
    if a.summary:
        summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "host": host,
                   "peak_gflops": {dt: pk["gflops"] for dt, pk in peaks.items()}, "peak_detail": peaks,
                   "dtype": a.dtype, "threads": a.threads, "steps": a.steps, "warmup": a.warmup,
                   "model": {k: info[k] for k in ("n_params", "vocab", "n_rows")}, "dims": info["dims"],
                   "model_flops_per_step": fl, "model_gflops_per_s": flops_summary, "phase_medians_s": pm,
                   "phase_coverage": COVERAGE, "ours_s_per_step": ours_med, "trl_s_per_step": trl_med,
                   "speedup_vs_trl": trl_med / ours_med, "sides": res}
        Path(a.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(a.summary).write_text(json.dumps(summary, indent=1, default=as_jsonable) + "\n")
    print(f"speedup_vs_trl: {trl_med / ours_med:.2f}")


if __name__ == "__main__":
    main()
