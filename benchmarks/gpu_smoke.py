"""End-to-end smoke test of the pipeline on one device (a GPU, or the CPU with ``--tiny``).

Tiny but real components, all built in-process (no files needed, no network):

  1. world: prompts + expert / student-writer corpora (``uniapl.world``, settings from params.yaml with
     smaller sizes, validated by ``uniapl.config.load_params``), the BPE tokenizer (``train_tokenizer``);
  2. teacher and student tiny Qwen3s (``build_policy`` with params.yaml's ``ModelSpec``s), pretrained
     briefly on the device with ``supervised.train_lm`` (it moves each batch to the model's device and
     autocasts on that device's type; the H100 run of 2026-11-28 confirmed it trains there);
  3. teacher demonstrations with ``rollout.HFEngine`` on the device (bf16 autocast on cuda), plus a
     rollout determinism check (the same seeds twice -> identical responses);
  4. a tiny discriminator (``Discriminator.from_config``) trained with ``train_contrastive`` on the device;
  5. ``trainer.Trainer.fit`` for every method of ``uniapl.methods.METHODS`` (a few steps each, from the
     same pretrained student), then ``evaluate.evaluate_model`` on in-domain prompts.

Writes ``OUT/gpu_smoke.json`` (rewritten after each phase, so a timeout keeps what was done) and
prints a compact summary. Scratch files go to a temporary directory, not to OUT.

    python3 benchmarks/gpu_smoke.py --device cuda --out OUT          # GPU (expected 1-2 minutes on an H100)
    .venv/bin/python benchmarks/gpu_smoke.py --device cpu --tiny --out /tmp/smoke   # CPU check
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for p in (REPO / "src", REPO):  # uniapl (when not installed) and the experiments' helpers
    if str(p) not in sys.path:
        sys.path.append(str(p))

T_START = time.time()
WORK = Path(tempfile.mkdtemp(prefix="uniapl_gpu_smoke_"))
# A fresh NLTK cache: exercises uniapl._punkt's offline build of punkt_tab (before uniapl.ifeval loads).
os.environ.setdefault("UNIAPL_NLTK_DATA", str(WORK / "nltk_data"))

import torch  # noqa: E402
import transformers  # noqa: E402

from uniapl import ifeval, world  # noqa: E402
from uniapl.config import TrainConfig, load_params  # noqa: E402
from uniapl.discriminator import Discriminator, pairwise_accuracy, train_contrastive  # noqa: E402
from uniapl.evaluate import evaluate_model  # noqa: E402
from uniapl.methods import METHODS  # noqa: E402
from uniapl.models import build_policy, encode_prompt, encode_response, n_params, tiny_qwen3_config, train_tokenizer  # noqa: E402,E501
from uniapl.rollout import HFEngine, row_seed  # noqa: E402
from uniapl.supervised import train_lm  # noqa: E402
from uniapl.trainer import Trainer  # noqa: E402

from experiments.world import pass_rates  # noqa: E402


def pass_rate(rows: list[dict], texts: list[str]) -> float:
    """Share of ``texts`` passing every instruction of their row (strict), as the world stage counts it."""
    return pass_rates({"all": (rows, texts)}, workers=1)["all"]


T_IMPORTS = time.time() - T_START

# Sizes: GPU (default) and --tiny (the CPU check). Same code path either way.
FULL = dict(n_train=400, n_in_domain=50, n_ood=8, vocab=1024, teacher_steps=300, student_steps=200,
            pre_batch=32, max_len=256, demo_tokens=64, disc_prompts=120, disc_steps=60, disc_batch=16,
            disc_max_len=256, steps=3, batch_rl=8, group_size=8, batch_sft=16, max_new_tokens=64,
            eval_prompts=50, eval_tokens=64, eval_sampled=1, det_prompts=64)
TINY = dict(n_train=96, n_in_domain=10, n_ood=4, vocab=512, teacher_steps=12, student_steps=8,
            pre_batch=8, max_len=160, demo_tokens=24, disc_prompts=24, disc_steps=4, disc_batch=8,
            disc_max_len=160, steps=2, batch_rl=2, group_size=4, batch_sft=4, max_new_tokens=24,
            eval_prompts=10, eval_tokens=24, eval_sampled=1, det_prompts=8)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def short_tb(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:]).strip()[-1500:]


class Report:
    def __init__(self, out: Path):
        self.path = out / "gpu_smoke.json"
        self.data: dict = {}
        out.mkdir(parents=True, exist_ok=True)

    def __setitem__(self, k, v):
        self.data[k] = v
        self.flush()

    def __getitem__(self, k):
        return self.data[k]

    def flush(self):
        self.data["total_seconds"] = round(time.time() - T_START, 2)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def checkpoint_probe(tr, path: Path) -> str:
    """``Trainer.save_checkpoint`` then ``load_checkpoint``: "ok" or the error's first line."""
    try:
        tr.save_checkpoint(path)
        tr.load_checkpoint(path)
        return "ok"
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())
        return f"{type(e).__name__}: {msg[:160]}"


def sample_texts(engine: HFEngine, tok, prompts: list[str], seed: int, max_new_tokens: int):
    ids = [encode_prompt(tok, p) for p in prompts]
    out = engine.generate(ids, [row_seed(seed, 0, i) for i in range(len(ids))], 1.0, max_new_tokens)
    return out, [tok.decode(r, skip_special_tokens=True) for r in out.response_ids]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--out", required=True, help="directory for gpu_smoke.json")
    ap.add_argument("--tiny", action="store_true", help="small settings (the CPU check)")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of uniapl.methods.METHODS (default: all)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 on cpu, where 2 threads on 2 shared cores ran 10x slower; 4 on cuda)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=INT", help="override a size setting, e.g. steps=5")
    a = ap.parse_args()

    S = dict(TINY if a.tiny else FULL)
    for item in a.set:
        k, _, v = item.partition("=")
        if k not in S or not v.lstrip("-").isdigit():
            ap.error(f"--set expects KEY=INT with KEY one of {sorted(S)}, got {item!r}")
        S[k] = int(v)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    a.threads = a.threads or (1 if device.type == "cpu" else 4)
    torch.set_num_threads(a.threads)
    amp = torch.bfloat16 if device.type == "cuda" else None  # params.yaml: fp32 on this project's CPUs
    methods = a.methods or list(METHODS)
    R = Report(Path(a.out))
    R["env"] = {
        "device": a.device, "tiny": a.tiny,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "python": platform.python_version(), "autocast": str(amp), "threads": a.threads,
        "import_seconds": round(T_IMPORTS, 2), "settings": S,
    }
    timings: dict[str, float] = {}
    R["timings"] = timings
    losses_finite: dict[str, bool] = {}
    R["losses_finite"] = losses_finite
    errors: dict[str, str] = {}
    R["errors"] = errors

    def phase(name):
        class _P:
            def __enter__(self):
                sync(device)
                self.t = time.time()

            def __exit__(self, *exc):
                sync(device)
                timings[name] = round(time.time() - self.t, 3)
                R.flush()
                print(f"[{time.time() - T_START:6.1f}s] {name}: {timings[name]:.2f}s", flush=True)
        return _P()

    # 1. world + tokenizer -----------------------------------------------------------------------
    with phase("world"):
        params = load_params(REPO / "params.yaml", overrides={"world": {
            "n_train": S["n_train"], "n_in_domain": S["n_in_domain"], "n_ood": S["n_ood"], "n_heldout_base": 4}})
        cfg = params.world
        splits = world.build_splits(cfg)
        rng = random.Random(cfg.seed + 1)
        train = splits["train"]
        expert = [world.expert_response(r, rng) for r in train]
        student_text = [world.student_response(r, rng, cfg.follow_prob["student-s"]) for r in train]
        R["world"] = {"n": {k: len(v) for k, v in splits.items()}, "expert_pass": pass_rate(train, expert),
                      "student_writer_pass": pass_rate(train, student_text)}
    with phase("tokenizer"):
        texts = [r["prompt"] for rows in splits.values() for r in rows] + expert + student_text
        tok = train_tokenizer(texts, S["vocab"])
        n_exp = sorted(len(encode_response(tok, t)) for t in expert)
        R["world"].update(vocab=len(tok), expert_tokens_median=n_exp[len(n_exp) // 2], expert_tokens_max=n_exp[-1],
                          expert_fit_in_rollout_cap=sum(n <= S["max_new_tokens"] for n in n_exp) / len(n_exp))

    # 2. teacher and student ----------------------------------------------------------------------
    specs = {"teacher": params.pretrain.models["teacher"].model_copy(update={"steps": S["teacher_steps"]}),
             "student-s": params.pretrain.models["student-s"].model_copy(update={"steps": S["student_steps"]})}
    corpora = {"teacher": list(zip([r["prompt"] for r in train], expert)),
               "student-s": list(zip([r["prompt"] for r in train], student_text))}
    models, pre = {}, {}
    for name, spec in specs.items():
        with phase(f"pretrain_{name}"):
            m = build_policy(spec, tok, seed=params.pretrain.seed).to(device)
            ls = train_lm(m, tok, corpora[name], spec.steps, spec.lr, S["pre_batch"], min(spec.warmup, spec.steps // 3),
                          params.pretrain.seed, S["max_len"], autocast_dtype=amp)
            models[name] = m
            pre[name] = {"params": n_params(m), "steps": spec.steps, "first_loss": ls[0], "final_loss": ls[-1]}
            losses_finite[f"pretrain_{name}"] = all(math.isfinite(x) for x in ls)
        R["pretrain"] = pre

    # 3. teacher demos + determinism --------------------------------------------------------------
    teacher, student = models["teacher"], models["student-s"]
    t_engine = HFEngine(teacher, tok, amp)
    with phase("teacher_demos"):
        prompts = [r["prompt"] for r in train]
        out, demo_texts = sample_texts(t_engine, tok, prompts, 0, S["demo_tokens"])
        demos = []
        for r, text, ids, tr in zip(train, demo_texts, out.response_ids, out.truncated.tolist()):
            strict, _ = ifeval.check_response(r["prompt"], r["instruction_id_list"], r["kwargs"], text)
            demos.append({"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
                          "kwargs": r["kwargs"], "response": text, "n_tokens": len(ids), "truncated": tr,
                          "pass": all(strict)})
        n_tok = sum(len(x) for x in out.response_ids)
        R["teacher_demos"] = {"n": len(demos), "pass_rate": sum(d["pass"] for d in demos) / len(demos),
                              "truncated": sum(d["truncated"] for d in demos) / len(demos),
                              "mean_tokens": n_tok / len(demos),
                              "logprobs_finite": all(bool(torch.isfinite(lp).all()) for lp in out.logprobs)}
    R["teacher_demos"]["tokens_per_second"] = round(n_tok / max(timings["teacher_demos"], 1e-9), 1)
    with phase("determinism"):
        sub = prompts[: S["det_prompts"]]
        o1, _ = sample_texts(t_engine, tok, sub, 7, S["demo_tokens"])
        o2, _ = sample_texts(t_engine, tok, sub, 7, S["demo_tokens"])
        # A different batch layout (two halves) with the same row seeds: equal in exact arithmetic; on a GPU
        # bf16 kernels may pick other tilings per batch size, so this one is informative only.
        ids = [encode_prompt(tok, p) for p in sub]
        seeds = [row_seed(7, 0, i) for i in range(len(ids))]
        o3 = t_engine.generate(ids, seeds, 1.0, S["demo_tokens"], batch_size=max(1, len(ids) // 2))
        g1 = t_engine.generate(ids, None, 0.0, S["demo_tokens"])
        g2 = t_engine.generate(ids, None, 0.0, S["demo_tokens"])
        R["determinism"] = {
            "n": len(sub),
            "same_seeds_identical": o1.response_ids == o2.response_ids,
            "same_seeds_logprobs_max_abs_diff": max(float((x - y).abs().max()) if len(x) else 0.0
                                                    for x, y in zip(o1.logprobs, o2.logprobs)),
            "greedy_identical": g1.response_ids == g2.response_ids,
            "other_batch_layout_identical_rows": sum(x == y for x, y in zip(o1.response_ids, o3.response_ids)),
        }

    # 4. discriminator ----------------------------------------------------------------------------
    with phase("discriminator"):
        drng = random.Random(0)
        rows = drng.sample(demos, min(S["disc_prompts"], len(demos)))
        dprompts = [r["prompt"] for r in rows]
        _, second = sample_texts(t_engine, tok, dprompts, 101, S["demo_tokens"])
        _, negs = sample_texts(HFEngine(student, tok, amp), tok, dprompts, 202, S["demo_tokens"])

        def corrupt(text: str) -> str:
            w = text.split(" ")
            drng.shuffle(w)
            return " ".join(w)

        triples = [{"prompt": r["prompt"], "reference": r["response"], "positive": second[i],
                    "negative": corrupt(r["response"]) if i % 2 else negs[i], "kind": ("student", "corrupted")[i % 2]}
                   for i, r in enumerate(rows)]
        n_test = max(4, len(triples) // 5)
        test, dtrain = triples[:n_test], triples[n_test:]
        d = params.discriminator
        dcfg = tiny_qwen3_config(d, len(tok), pad_token_id=None, eos_token_id=None, max_positions=1024,
                                 tie_word_embeddings=False)  # as experiments/discriminator.py: a score head
        torch.manual_seed(d.seed)
        disc = Discriminator.from_config(dcfg, tok, style="embedded", max_length=S["disc_max_len"]).to(device)
        hist = []
        final = train_contrastive(disc, dtrain, steps=S["disc_steps"], lr=d.lr, batch_size=S["disc_batch"],
                                  seed=d.seed, log_every=1, callback=lambda s, m: hist.append(m["loss"]))
        R["discriminator"] = {"n_train": len(dtrain), "n_test": len(test), "steps": S["disc_steps"],
                              "first_loss": hist[0], "final_loss": final["loss"],
                              "train_pairwise_accuracy": final.get("pairwise_accuracy"),
                              "heldout_pairwise_accuracy": pairwise_accuracy(disc, test),
                              "frozen": disc.frozen, "device": str(disc.device)}
        losses_finite["discriminator"] = all(math.isfinite(x) for x in hist)

    # 5. every method -----------------------------------------------------------------------------
    runs: dict[str, dict] = {}
    R["methods"] = runs
    base_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    last_policy = None
    for mname in methods:
        t0 = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            policy = copy.deepcopy(student)
            policy.load_state_dict(base_state)
            tcfg = TrainConfig(method=mname, dtype="bf16" if device.type == "cuda" else "fp32", steps=S["steps"],
                               batch_rl=S["batch_rl"], group_size=S["group_size"], batch_sft=S["batch_sft"],
                               max_new_tokens=S["max_new_tokens"], threads=a.threads, device=a.device,
                               checkpoint_every=S["steps"])
            needs_disc = METHODS[mname].adv != "none"
            run_dir = WORK / "runs" / mname
            tr = Trainer(tcfg, policy, tok, demos, run_dir, discriminator=disc if needs_disc else None)
            # The loop of Trainer.fit without its checkpointing (probed separately below: fit saves at
            # the last step and a checkpoint failure would hide the training results).
            hist = []
            while tr.step < tcfg.steps:
                hist.append(tr.train_step())
            sync(device)
            last = hist[-1]
            loss_keys = sorted({k for h in hist for k in h if k.startswith("loss/")})
            ok = all(finite(h[k]) for h in hist for k in loss_keys if k in h)
            losses_finite[f"method_{mname}"] = ok
            runs[mname] = {
                "ok": True, "seconds": round(time.time() - t0, 3),
                "step_seconds": [round(h["perf/step_seconds"], 4) for h in hist],
                "gen_seconds": [round(h["perf/gen_seconds"], 4) for h in hist],
                "checkpoint": checkpoint_probe(tr, run_dir / "checkpoint"),
                "final": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in last.items()},
            }
            if device.type == "cuda":
                runs[mname]["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            last_policy = policy
        except Exception as e:  # noqa: BLE001 - recorded, the other methods still run
            runs[mname] = {"ok": False, "seconds": round(time.time() - t0, 3), "error": short_tb(e)}
            errors[f"method_{mname}"] = short_tb(e)
            losses_finite[f"method_{mname}"] = False
        R.flush()
        r = runs[mname]
        print(f"[{time.time() - T_START:6.1f}s] {mname:14s} "
              + (f"steps {r['step_seconds']} reward {r['final'].get('train/reward_mean', float('nan')):.3f}"
                 if r["ok"] else f"FAILED: {r['error'].splitlines()[-1]}"), flush=True)

    # 6. evaluation -------------------------------------------------------------------------------
    with phase("evaluate"):
        model = last_policy if last_policy is not None else student
        rows = splits["in_domain"][: S["eval_prompts"]]
        try:
            metrics, out_rows = evaluate_model(model, tok, rows, S["eval_tokens"], S["eval_sampled"], 1.0, 1234,
                                               batch_size=len(rows))
            R["evaluate"] = {"n": len(out_rows), **{k: (round(v, 4) if isinstance(v, float) else v)
                                                    for k, v in metrics.items()}}
        except Exception as e:  # noqa: BLE001
            errors["evaluate"] = short_tb(e)
            R["evaluate"] = {"ok": False}

    if device.type == "cuda":
        R["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    R["all_losses_finite"] = all(losses_finite.values())
    R["ok"] = (not errors and R["all_losses_finite"] and R["determinism"]["same_seeds_identical"]
               and all(r["ok"] for r in runs.values()))
    R.flush()

    # summary -------------------------------------------------------------------------------------
    env = R["env"]
    print(f"\n== gpu_smoke: {env['device_name']} | torch {env['torch']} (cuda {env['cuda']}) | "
          f"transformers {env['transformers']} | python {env['python']}")
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print(f"teacher demos: pass {R['teacher_demos']['pass_rate']:.2f}, {R['teacher_demos']['tokens_per_second']} tok/s; "
          f"determinism: same seeds identical={R['determinism']['same_seeds_identical']}, "
          f"greedy identical={R['determinism']['greedy_identical']}, other layout "
          f"{R['determinism']['other_batch_layout_identical_rows']}/{R['determinism']['n']} rows")
    print(f"discriminator: loss {R['discriminator']['first_loss']:.3f} -> {R['discriminator']['final_loss']:.3f}, "
          f"heldout acc {R['discriminator']['heldout_pairwise_accuracy']:.2f}")
    for mname, r in runs.items():
        if r["ok"]:
            f = r["final"]
            extra = " ".join(f"{k.split('/')[-1]}={f[k]:.3f}" for k in ("loss/sft", "loss/grpo", "loss/adv",
                                                                        "train/reward_mean", "train/grad_norm") if k in f)
            print(f"  {mname:14s} step s {r['step_seconds']}  {extra}  checkpoint: {r['checkpoint'][:60]}")
        else:
            print(f"  {mname:14s} FAILED {r['error'].splitlines()[-1]}")
    print(f"evaluate: {R['evaluate']}")
    print(f"all losses finite: {R['all_losses_finite']}; errors: {list(errors) or 'none'}; "
          f"total {time.time() - T_START:.1f}s; OK={R['ok']}")
    return 0 if R["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
