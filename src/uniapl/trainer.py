"""One training loop for every method: mixed SFT + GRPO + adversarial batches, single process or DeepSpeed.

Per step (see ``methods.py`` for which parts each method switches on):
  1. draw B_sft expert demonstrations and B_rl prompts (positions derived from the step: resumable);
  2. sample G rollouts per prompt with seeds from (seed, step, prompt index, sample index);
  3. verifier rewards (``ifeval.verifier_reward``; 0 for rollouts cut at the length cap) and discriminator
     scores, turned into group-normalised advantages;
  4. loss = w_sft*SFT + w_rl*GRPO + w_adv*ADV (``objectives.step_objective``), accumulated over
     micro-batches with global normalisers (log-probs: ``models.sequence_logprobs``);
  5. one optimizer step; metrics to DVCLive; a checkpoint every ``checkpoint_every`` steps (``checkpoint.py``).

Deviations from textbook GRPO, numbered (each is a setting):
  1. One optimizer pass per rollout batch by default (``ppo_epochs=1``), so old_logp = logp.detach() and
     the ratio is 1 (as TRL's default); clipping acts only when ``ppo_epochs > 1``. Logged: the ratio's
     ``train/ratio_mean`` and ``train/approx_kl``, and each term's ``train/clip_frac`` / ``adv/clip_frac``.
  2. No KL penalty by default (``beta=0``; DAPO, Dr.GRPO); k1/k2/k3 available.
  3. Asymmetric clipping (clip_high 0.28, DAPO's clip-higher) and token-mean aggregation by default.
  4. Rollouts truncated at the length cap get zero reward (``truncated_zero_reward``).
  5. The adversarial term is a second clipped policy-gradient term whose advantage is the group-normalised
     score of a frozen discriminator D(prompt, expert reference, rollout) [our reading of the paper].

Rollout engines (``rollout_engine``): ``hf`` decodes with the policy itself (``rollout.HFEngine``); ``vllm``
with a colocated in-process ``rollout.VLLMEngine`` built from the run's starting model directory
(``rollout.build_vllm_engine``, called by ``experiments/train.py``). Its weights are pushed (``sync_weights``,
the returned version checked to advance) before a step's generation whenever the policy may differ from
them: at the first step of every process (a resumed checkpoint's weights are not the directory's) and
after every optimizer step. vLLM's sampler and the trainer are two computations of the same policy, so
their log-probs differ by kernel rounding (and by more in bf16); ``vllm_is_cap`` turns on the truncated
importance-sampling correction (as TRL's ``vllm_importance_sampling_correction``, token level): each
token's loss in both policy-gradient terms is multiplied by w = min(exp(old_logp - sampler_logp), cap),
detached. With rollout_engine vllm the ratio's ``train/is_ratio_mean`` (uncapped) and
``train/is_capped_frac`` (share of tokens whose ratio exceeds the cap) are logged, the correction on or off.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from uniapl import checkpoint as C
from uniapl import ifeval
from uniapl import objectives as O
from uniapl.io import atomic_path
from uniapl.methods import METHODS
from uniapl.models import (Batch, autocast_dtype, decode_responses, encode_prompt, encode_response, pack,
                           sampler_logprobs, sequence_logprobs)
from uniapl.rollout import HFEngine, row_seed


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/inf; the message names the term and the step."""


def _term_grad_norms(policy, pg_grads: list) -> dict:
    """Norms of the policy-gradient part (``pg_grads``, the gradients before the SFT backward) and of the SFT
    part (the accumulated gradients minus it), and their cosine, in float64."""
    pg2 = sft2 = dot = 0.0
    for p, g_pg in zip(policy.parameters(), pg_grads):
        if p.grad is None:
            continue
        g_pg = torch.zeros_like(p.grad) if g_pg is None else g_pg
        g_sft = (p.grad - g_pg).double()
        g_pg = g_pg.double()
        pg2 += float((g_pg * g_pg).sum())
        sft2 += float((g_sft * g_sft).sum())
        dot += float((g_pg * g_sft).sum())
    cos = dot / math.sqrt(pg2 * sft2) if pg2 > 0 and sft2 > 0 else float("nan")
    return {"grad/pg_norm": math.sqrt(pg2), "grad/sft_norm": math.sqrt(sft2), "grad/cos_pg_sft": cos}


class _LazyEncoded:
    """``seq[i]`` = ``fn(rows[i])``, computed once on first access."""

    def __init__(self, rows: list[dict], fn):
        self.rows, self.fn, self.cache = rows, fn, {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        if i not in self.cache:
            self.cache[i] = self.fn(self.rows[i])
        return self.cache[i]


class Trainer:
    """Trains ``policy`` with ``cfg.method``. ``demos``: teacher demonstrations (prompt rows + response): the
    RL prompt pool, and the SFT pool unless ``sft_demos`` gives another one (``teacher_demos.only_passing``:
    SFT imitates the verifier-passing demonstrations only, while RL samples every prompt)."""

    def __init__(self, cfg, policy, tokenizer, demos: list[dict], out_dir: str | Path, discriminator=None,
                 ref_policy=None, engine=None, total_steps: int | None = None, log_fn=None,
                 sft_demos: list[dict] | None = None, val_rows: list[dict] | None = None):
        self.cfg, self.policy, self.tok, self.demos = cfg, policy, tokenizer, demos
        self.method = METHODS[cfg.method]
        self.out = Path(out_dir)
        self.disc, self.ref = discriminator, ref_policy
        self.total = total_steps or cfg.steps
        self.log_fn = log_fn
        self.rank, self.world = 0, 1
        self.ds_engine = None
        self.device = next(policy.parameters()).device
        if self.method.adv != "none" and discriminator is None:
            raise ValueError(f"method {cfg.method} needs a discriminator")
        self.amp = autocast_dtype(cfg.dtype)
        self.vllm = cfg.rollout_engine == "vllm"
        if self.vllm and self.method.uses_rollouts and not hasattr(engine, "sync_weights"):
            raise ValueError("rollout_engine=vllm: pass engine=rollout.build_vllm_engine(cfg, <model directory>, tokenizer)")
        if not self.vllm and cfg.vllm_is_cap is not None:
            raise ValueError("vllm_is_cap needs rollout_engine=vllm")
        self.engine = engine or HFEngine(policy, tokenizer, self.amp)
        self.weights_stale = True  # the engine's copy may differ from the policy (vllm): sync before generating
        self.weight_version: str | None = None  # the engine's weight version after the last sync
        self.opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        warm = max(1, cfg.warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.disc_opt = (torch.optim.AdamW(discriminator.parameters(), lr=cfg.disc_lr)
                         if cfg.disc_cotrain else None)
        # Pre-tokenise once: prompts and demonstrations are reused every epoch.
        # Tokenised on first use (a run touches steps*batch of them; chat templates are slow to render).
        self.prompt_ids = _LazyEncoded(demos, lambda d: encode_prompt(tokenizer, d["prompt"]))
        self.demo_ids = _LazyEncoded(demos, lambda d: encode_response(tokenizer, d["response"]))
        perm = list(range(len(demos)))
        random.Random(cfg.seed).shuffle(perm)
        self.order = perm
        # The SFT pool: the same rows (and order) as the RL pool, or its own list
        self.sft_rows, self.sft_prompt_ids, self.sft_demo_ids, self.sft_order = demos, self.prompt_ids, self.demo_ids, perm
        if sft_demos is not None and sft_demos is not demos:
            if self.method.uses_sft and not sft_demos:
                raise ValueError(f"{cfg.method}: the SFT pool is empty (no demonstration passed the verifier?)")
            self.sft_rows = sft_demos
            self.sft_prompt_ids = _LazyEncoded(sft_demos, lambda d: encode_prompt(tokenizer, d["prompt"]))
            self.sft_demo_ids = _LazyEncoded(sft_demos, lambda d: encode_response(tokenizer, d["response"]))
            self.sft_order = list(range(len(sft_demos)))
            random.Random(cfg.seed).shuffle(self.sft_order)
        self.val_rows = (val_rows or [])[: cfg.eval_prompts]
        if cfg.eval_every and not self.val_rows:
            raise ValueError("eval_every > 0 needs validation prompts (val_rows)")
        self.step = 0

    # ------------------------------------------------------------------ distribution
    def use_deepspeed(self, ds_config: dict) -> None:
        """Wrap the policy and our torch AdamW (a ZeRO "client optimizer") in a DeepSpeed engine.

        Call on every rank after ``deepspeed.init_distributed``. Settings forced here:
        ``managed_gradient_accumulation: false`` (a step makes a variable number of ``backward`` calls:
        rollout micro-batches, then SFT micro-batches; ``engine.step()`` is the boundary) and
        ``zero_allow_untested_optimizer``. Each rank must run the same number of forward/backward
        passes (ZeRO collectives), so ``batch_rl`` and ``batch_sft`` must divide by the world size.
        The LR scheduler stays ours: it acts on the param groups that ZeRO's wrapper shares with AdamW.
        """
        import deepspeed
        world = torch.distributed.get_world_size()
        for k in ("batch_rl", "batch_sft"):
            if getattr(self.cfg, k) % world:
                raise ValueError(f"{k}={getattr(self.cfg, k)} must be a multiple of the world size {world} "
                                 "(every rank must run the same micro-batches)")
        ds_config = {"managed_gradient_accumulation": False, "zero_allow_untested_optimizer": True, **ds_config}
        self.ds_engine, self.opt, _, _ = deepspeed.initialize(model=self.policy, optimizer=self.opt,
                                                              config=ds_config)
        self.rank, self.world = torch.distributed.get_rank(), world
        self.zero3 = self.ds_engine.zero_optimization_stage() == 3
        if self.disc_opt is not None and world > 1:  # GAIL ablation: average the discriminator's gradients
            for p in self.disc.parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(self._all_mean_grad)

    def _all_mean_grad(self, p: torch.Tensor) -> None:
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(self.world)

    @contextmanager
    def gathered_policy(self):
        """The policy with full parameters on every rank (ZeRO-3: gathered; collective, read-only)."""
        if self.ds_engine is None or not self.zero3:
            yield self.policy
            return
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(self.policy.parameters())):
            yield self.policy

    def _generation_context(self):
        """ZeRO-3: gather the weights once and lift DeepSpeed's fetch hooks for the decoding loop, so
        each rank decodes on its own (its own number of steps, no collective per token)."""
        if self.ds_engine is None or not self.zero3:
            return nullcontext()
        from deepspeed.runtime.zero import unwrap_model_for_generation
        return unwrap_model_for_generation(self.ds_engine)

    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _all_mean_metrics(self, metrics: dict) -> dict:
        """Metrics averaged over ranks (each rank holds an equal share of the batch)."""
        if self.world == 1:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        # on the policy's device: an NCCL process group reduces CUDA tensors only
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return {**metrics, **{k: float(v) / self.world for k, v in zip(keys, t.tolist())}}

    def _all_sum(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return float(t.item())

    # ------------------------------------------------------------------ data
    def _indices(self, step: int, n: int, stream: int) -> list[int]:
        """Dataset positions for ``step`` (a pure function of step: resuming needs no sampler state); stream 0
        indexes the RL pool, stream 1 the SFT pool."""
        order = self.order if stream == 0 else self.sft_order
        start = (step * n + stream * 7919) % len(order)
        idx = [order[(start + i) % len(order)] for i in range(n)]
        return idx[self.rank::self.world]

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        cfg, m, step = self.cfg, self.method, self.step
        w = m.weights(step, self.total, cfg)
        metrics: dict[str, float] = {f"weights/{k}": v for k, v in w.items()}
        t0 = time.time()
        roll_batch = None
        if m.uses_rollouts:
            roll_batch, roll_metrics = self._rollouts(step)
            metrics.update(roll_metrics)
        t_gen = time.time() - t0
        sft_batch = None
        if m.uses_sft and w["sft"] > 0:
            idx = self._indices(step, cfg.batch_sft, stream=1)
            sft_batch = Batch(*pack([self.sft_prompt_ids[i] for i in idx], [self.sft_demo_ids[i] for i in idx],
                                    self.tok.pad_token_id))
        model = self.ds_engine or self.policy
        model.train()
        for epoch in range(cfg.ppo_epochs):
            terms = self._accumulate(roll_batch, sft_batch, w, epoch)
            metrics.update(terms)
            if self.ds_engine is not None:
                self.ds_engine.step()
                gn = self.ds_engine.get_global_grad_norm()
                if gn is not None:
                    metrics["train/grad_norm"] = float(gn)
            else:
                gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                metrics["train/grad_norm"] = float(gn)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            self.weights_stale = True
        self.sched.step()
        if self.disc_opt is not None and roll_batch is not None:
            metrics.update(self._cotrain_disc(roll_batch))
        metrics["perf/step_seconds"] = time.time() - t0
        metrics["perf/gen_seconds"] = t_gen
        self.step += 1
        return self._all_mean_metrics(metrics)

    def _rollouts(self, step: int):
        cfg, G = self.cfg, self.cfg.group_size
        if self.method.rollout_prompts == "sft":  # A-SFT: rollouts for its own demonstrations' prompts
            idx = self._indices(step, cfg.batch_sft, stream=1)[: cfg.batch_rl // self.world]
            pool, pool_ids = self.sft_rows, self.sft_prompt_ids
        else:
            idx = self._indices(step, cfg.batch_rl, stream=0)
            pool, pool_ids = self.demos, self.prompt_ids
        prompts = [pool_ids[i] for i in idx for _ in range(G)]
        seeds = [row_seed(cfg.seed, step, i, g) for i in idx for g in range(G)]
        metrics = {}
        if self.vllm:
            metrics.update(self._sync_engine())
        with self._generation_context():
            out = self.engine.generate(prompts, seeds, cfg.temperature, cfg.max_new_tokens)
        texts = decode_responses(self.tok, out.response_ids)
        rows = [pool[i] for i in idx for _ in range(G)]
        trunc = out.truncated.tolist()
        rewards = torch.tensor([ifeval.verifier_reward(r, t, tr, cfg.reward, cfg.truncated_zero_reward)
                                for r, t, tr in zip(rows, texts, trunc)])
        metrics.update({"train/reward_mean": rewards.mean().item(), "train/truncated": float(np.mean(trunc)),
                        "train/reward_std_in_group": rewards.view(-1, G).std(-1).mean().item(),
                        "train/response_len": float(np.mean([len(r) for r in out.response_ids]))})
        scores = torch.zeros(len(texts))
        if self.method.adv != "none":
            scores = self.disc.score([r["prompt"] for r in rows], [r["response"] for r in rows], texts)
            metrics["train/adv_score_mean"] = scores.mean().item()
        r_for_adv = (O.shaped_rewards(rewards, scores, cfg.lambda_adv, G, cfg.adv_scale_std)
                     if self.method.adv == "shaped" else rewards)
        adv = O.group_advantages(r_for_adv, G, scale_std=cfg.scale_std)
        adv_adv = O.adversarial_advantages(scores, G, scale_std=cfg.adv_scale_std)
        resp = [r if r else [self.tok.eos_token_id] for r in out.response_ids]
        batch = Batch(*pack(prompts, resp, self.tok.pad_token_id))
        roll = {"batch": batch, "adv": adv, "adv_adv": adv_adv, "rows": rows, "texts": texts}
        if self.vllm:  # the sampler's log-probs at the batch's response positions (importance weights)
            roll["sampler_lp"] = sampler_logprobs(out.logprobs, batch.lmask)
        return roll, metrics

    def _sync_engine(self) -> dict:
        """Push the policy's weights into the vLLM engine when they may differ (first step of this process,
        after an optimizer step); check that the engine's weight version advanced."""
        if not self.weights_stale:
            return {}
        t0 = time.time()
        with self.gathered_policy() as full:
            version = self.engine.sync_weights(full)
        if version == self.weight_version:
            raise RuntimeError(f"the rollout engine's weight version did not advance at step {self.step} "
                               f"({version!r})")
        self.weight_version, self.weights_stale = version, False
        return {"perf/sync_seconds": time.time() - t0}

    def _accumulate(self, roll, sft, w, epoch) -> dict:
        """Forward/backward of ``objectives.step_objective`` over micro-batches: rollouts (GRPO + ADV),
        then demonstrations (SFT). Normalisers are global, so the micro-batch losses add up to the full
        batch's. Returns the step's metrics: ``loss/*`` summed over micro-batches, the other diagnostics
        averaged over the rollouts (each micro-batch's value weighted by its number of sequences)."""
        cfg = self.cfg
        model = self.ds_engine or self.policy
        mb = cfg.micro_batch
        sums: dict[str, float] = {}
        ws = self.world  # DeepSpeed averages gradients over ranks: scale normalisers down by world size

        def objective(**inputs):
            return O.step_objective(w, clip_low=cfg.clip_low, clip_high=cfg.clip_high, beta=cfg.beta,
                                    kl_kind=cfg.kl_kind, agg=cfg.agg, max_len=cfg.max_new_tokens, **inputs)

        def record(diag: dict, n_seq: int) -> None:  # n_seq: the weight of this micro-batch's means
            for k, v in diag.items():
                sums[k] = sums.get(k, 0.0) + float(v if k.startswith("loss/") else v * n_seq)

        def backward(loss, name):
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss term '{name}' is {loss.item()} at step {self.step}")
            if self.ds_engine is not None:
                self.ds_engine.backward(loss)
            else:
                loss.backward()

        if roll is not None and (w["rl"] > 0 or w["adv"] > 0):
            b = roll["batch"]
            norm = self._normaliser(b.lmask) / ws
            if epoch == 0:  # old policy = the sampling policy: a no-grad forward only when reused
                roll["old"] = None
                if cfg.ppo_epochs > 1:
                    with torch.no_grad():
                        roll["old"] = [sequence_logprobs(model, self._slice(b, s, mb), autocast_dtype=self.amp)[0]
                                       for s in range(0, b.ids.shape[0], mb)]
            for s in range(0, b.ids.shape[0], mb):
                sl = self._slice(b, s, mb)
                lp, ent = sequence_logprobs(model, sl, with_entropy=True, autocast_dtype=self.amp)
                old = lp.detach() if roll["old"] is None else roll["old"][s // mb]
                iw = None
                if "sampler_lp" in roll:
                    slp = roll["sampler_lp"][s: s + mb, : sl.ids.shape[1]].to(lp.device)
                    iw, is_diag = O.importance_weights(old, slp, sl.lmask, cfg.vllm_is_cap)
                    record(is_diag, sl.ids.shape[0])
                    if cfg.vllm_is_cap is None:
                        iw = None
                ref = None
                if self.ref is not None:
                    with torch.no_grad():
                        ref = sequence_logprobs(self.ref, sl)[0]
                loss, diag = objective(logp=lp, old_logp=old, adv_rl=roll["adv"][s: s + mb].to(lp.device),
                                       adv_adv=roll["adv_adv"][s: s + mb].to(lp.device), mask=sl.lmask,
                                       ref_logp=ref, normaliser=norm, token_weights=iw)
                record(diag, sl.ids.shape[0])
                record({"train/entropy": O.masked_mean(ent, sl.lmask)}, sl.ids.shape[0])
                backward(loss, "grpo+adv")
            n = b.ids.shape[0]
            for k in sums:
                if not k.startswith("loss/"):
                    sums[k] /= n
        pg_grads = None
        if (cfg.term_grad_norms and self.ds_engine is None and sft is not None and w["sft"] > 0 and roll is not None
                and (w["rl"] > 0 or w["adv"] > 0)):
            pg_grads = [None if p.grad is None else p.grad.detach().clone() for p in self.policy.parameters()]
        if sft is not None and w["sft"] > 0:
            norm = self._normaliser(sft.lmask) / ws
            for s in range(0, sft.ids.shape[0], mb):
                sl = self._slice(sft, s, mb)
                lp, _ = sequence_logprobs(model, sl, autocast_dtype=self.amp)
                loss, diag = objective(sft_logp=lp, sft_mask=sl.lmask, sft_normaliser=norm)
                backward(loss, "sft")
                record(diag, sl.ids.shape[0])
        if pg_grads is not None:
            sums.update(_term_grad_norms(self.policy, pg_grads))
        return sums

    def _normaliser(self, lmask: torch.Tensor) -> float:
        """Global normaliser of ``cfg.agg`` for a full batch (summed over ranks)."""
        if self.cfg.agg == "token-mean":
            return self._all_sum(float(lmask.sum()))
        return self._all_sum(float(lmask.shape[0]))

    def _slice(self, b: Batch, s: int, n: int) -> Batch:
        ids, attn, lm = b.ids[s: s + n], b.attn[s: s + n], b.lmask[s: s + n]
        T = int(attn.sum(1).max())  # drop all-padding columns of this micro-batch
        dev = self.device
        return Batch(ids[:, :T].to(dev), attn[:, :T].to(dev), lm[:, :T].to(dev))

    def _cotrain_disc(self, roll) -> dict:
        from uniapl.discriminator import gail_update
        rows = roll["rows"][:: self.cfg.group_size]
        pol = roll["texts"][:: self.cfg.group_size]
        # reference: the prompt's teacher sample; expert candidate: a second teacher sample of the same prompt
        # (``alt_response``, teacher_demos.n_samples > 1), else the reference itself (then D learns to spot copies)
        d = gail_update(self.disc, self.disc_opt, [r["prompt"] for r in rows], [r["response"] for r in rows],
                        [r.get("alt_response") or r["response"] for r in rows], pol)
        return {f"disc/{k}": float(v) for k, v in d.items() if isinstance(v, (int, float))}

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        """Greedy IFEval metrics of the current policy on the validation prompts (``val/*``). No random state is
        touched (greedy), so a run with and without these evaluations trains the same bits."""
        from uniapl.evaluate import evaluate_model
        was_training = self.policy.training
        with self._generation_context():
            m, _ = evaluate_model(self.policy, self.tok, self.val_rows, self.cfg.max_new_tokens, 0, 1.0, 0,
                                  batch_size=len(self.val_rows), autocast_dtype=self.amp)
        self.policy.train(was_training)
        return {"val/prompt_strict": m["prompt_strict"], "val/inst_strict": m["inst_strict"],
                "val/mean_len": m["mean_len"]}

    def _due_validation(self) -> bool:
        e = self.cfg.eval_every
        return bool(e) and (self.step % e == 0 or self.step == self.cfg.steps)

    # ------------------------------------------------------------------ checkpoints (see checkpoint.py)
    def save_checkpoint(self, path: Path) -> None:
        """Weights, optimizer, scheduler, RNG states and step, written atomically (DeepSpeed: every rank
        calls this)."""
        if self.ds_engine is not None:
            C.save_deepspeed(path, self.ds_engine, self.gathered_policy(), self.rank, self.sched, self.step,
                             self.disc, self.disc_opt)
        else:
            C.save(path, self.policy, self.opt, self.sched, self.step, self.disc, self.disc_opt)

    def load_checkpoint(self, path: Path) -> None:
        if self.ds_engine is not None:
            self.step = C.load_deepspeed(path, self.ds_engine, self.rank, self.sched, self.disc, self.disc_opt)
        else:
            self.step = C.load(path, self.policy, self.opt, self.sched, self.disc, self.disc_opt)

    # ------------------------------------------------------------------ the run
    def fit(self, live=None, progress: bool = True) -> dict:
        """Train to ``cfg.steps``, resuming from ``out/checkpoint`` if present; returns the last metrics.

        ``live``: a DVCLive ``Live`` (rank 0 only). Checkpoints are atomic, so a SIGKILL at any point
        leaves the last good one; a NaN/inf loss raises ``NonFiniteLoss`` before the optimizer step.
        """
        from tqdm import tqdm
        ckpt = self.out / "checkpoint"
        if ckpt.exists():
            self.load_checkpoint(ckpt)
        history: list[dict] = []
        hist_path = self.out / "history.jsonl"
        if self.step > 0 and hist_path.exists():
            history = [json.loads(x) for x in hist_path.read_text().splitlines()[: self.step]]
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=f"{self.cfg.method}", disable=not progress or self.rank != 0,
                   dynamic_ncols=True)
        while self.step < self.cfg.steps:
            metrics = self.train_step()
            if self._due_validation():
                metrics.update(self.validate())
            metrics["step"] = self.step - 1
            history.append(metrics)
            if live is not None:
                for k, v in metrics.items():
                    if k != "step" and isinstance(v, float) and math.isfinite(v):
                        live.log_metric(k, v)
                live.next_step()
            bar.update(1)
            if os.environ.get("UNIAPL_FAULT_KILL_AT_STEP") == str(self.step):  # fault injection (resume test)
                os.kill(os.getpid(), signal.SIGKILL)
            bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in ("train/reward_mean", "loss/sft")
                             if k in metrics})
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                if self.rank == 0:
                    with atomic_path(hist_path) as tmp:
                        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
                if self.rank == 0 or self.ds_engine is not None:  # DeepSpeed: every rank takes part
                    self.save_checkpoint(ckpt)
        bar.close()
        return history[-1] if history else {}
