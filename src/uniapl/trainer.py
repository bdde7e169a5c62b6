"""One training loop for every method: mixed SFT + GRPO + adversarial batches, single process or DeepSpeed.

Per step (see ``methods.py`` for which parts each method switches on):
  1. draw B_sft expert demonstrations and B_rl prompts (positions derived from the step: resumable);
  2. sample G rollouts per prompt with seeds from (seed, step, prompt index, sample index);
  3. verifier rewards (IFEval checkers; 0 for rollouts cut at the length cap) and discriminator scores;
  4. loss = w_sft*SFT + w_rl*GRPO + w_adv*ADV, accumulated over micro-batches with global normalisers;
  5. one optimizer step; metrics to DVCLive; a checkpoint every ``checkpoint_every`` steps.

Deviations from textbook GRPO, numbered (each is a setting):
  1. One optimizer pass per rollout batch by default (``ppo_epochs=1``), so old_logp = logp.detach() and
     the ratio is 1 (as TRL's default); clipping acts only when ``ppo_epochs > 1``.
  2. No KL penalty by default (``beta=0``; DAPO, Dr.GRPO); k1/k2/k3 available.
  3. Asymmetric clipping (clip_high 0.28, DAPO's clip-higher) and token-mean aggregation by default.
  4. Rollouts truncated at the length cap get zero reward (``truncated_zero_reward``).
  5. The adversarial term is a second clipped policy-gradient term whose advantage is the group-normalised
     score of a frozen discriminator D(prompt, expert reference, rollout) [our reading of the paper].
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uniapl import ifeval
from uniapl import objectives as O
from uniapl.io import atomic_path, run_metadata, write_json
from uniapl.methods import METHODS
from uniapl.models import autocast_dtype, encode_prompt, encode_response, pack, plain_head
from uniapl.rollout import HFEngine, row_seed


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/inf; the message names the term and the step."""


def verifier_reward(row: dict, text: str, truncated: bool, mode: str, truncated_zero: bool) -> float:
    """IFEval reward: 1/0 all-followed (strict) or the fraction followed; 0 when cut at the cap."""
    if truncated and truncated_zero:
        return 0.0
    strict = ifeval.check_strict(row["prompt"], row["instruction_id_list"], row["kwargs"], text)
    return float(all(strict)) if mode == "binary" else sum(strict) / len(strict)


@dataclass
class Batch:
    """Right-padded sequences: ids/attn/lmask (B, T); lmask is 1 on response tokens."""

    ids: torch.Tensor
    attn: torch.Tensor
    lmask: torch.Tensor


def first_response_position(lmask: torch.Tensor) -> int:
    """Smallest column holding a response token in any row (>= 1); the logits before it are never used."""
    cols = lmask.any(0).nonzero()
    return max(1, int(cols[0])) if len(cols) else lmask.shape[1] - 1


def sequence_logprobs(model, batch: Batch, with_entropy: bool = False, autocast_dtype=None):
    """Per-token log-probs (B, T) aligned with ``batch.lmask`` (position t scores token t; t=0 gets 0),
    and the per-token entropy (no gradient) when ``with_entropy``.

    Every position where ``lmask`` is 0 gets 0. Only response positions go through the LM head and the
    log-softmax: for plain-head models (``models.PLAIN_HEAD_MODEL_TYPES``) the head runs on the selected hidden
    states; otherwise (a DeepSpeed engine, other architectures) the model's forward computes the logits
    from the first response column on (``logits_to_keep``) and the response positions are selected."""
    T = batch.ids.shape[1]
    first = first_response_position(batch.lmask)
    m = batch.lmask[:, first:].bool()
    labels = batch.ids[:, first:][m]
    split = plain_head(model)
    with torch.autocast(batch.ids.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        if split is not None:
            dec, head = split
            hidden = dec(input_ids=batch.ids, attention_mask=batch.attn).last_hidden_state
            logits = head(hidden[:, first - 1: T - 1][m])  # (N, V)
        else:
            logits = model(input_ids=batch.ids, attention_mask=batch.attn, logits_to_keep=T - first + 1).logits[:, :-1][m]
    lp, ent = O.selected_logprobs(logits, labels, with_entropy)
    lp = torch.nn.functional.pad(O.scatter_rows(lp, m), (first, 0))
    if ent is not None:
        ent = torch.nn.functional.pad(O.scatter_rows(ent, m), (first, 0))
    return lp, ent


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
    """Trains ``policy`` with ``cfg.method``. ``demos``: teacher demonstrations (prompt rows + response)."""

    def __init__(self, cfg, policy, tokenizer, demos: list[dict], out_dir: str | Path, discriminator=None,
                 ref_policy=None, engine=None, total_steps: int | None = None, log_fn=None):
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
        self.engine = engine or HFEngine(policy, tokenizer, self.amp)
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
        """Dataset positions for ``step`` (a pure function of step: resuming needs no sampler state)."""
        start = (step * n + stream * 7919) % len(self.order)
        idx = [self.order[(start + i) % len(self.order)] for i in range(n)]
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
            sft_batch = Batch(*pack([self.prompt_ids[i] for i in idx], [self.demo_ids[i] for i in idx],
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
        self.sched.step()
        if self.disc_opt is not None and roll_batch is not None:
            metrics.update(self._cotrain_disc(roll_batch))
        metrics["perf/step_seconds"] = time.time() - t0
        metrics["perf/gen_seconds"] = t_gen
        self.step += 1
        return self._all_mean_metrics(metrics)

    def _rollouts(self, step: int):
        cfg, G = self.cfg, self.cfg.group_size
        idx = self._indices(step, cfg.batch_rl, stream=0)
        prompts = [self.prompt_ids[i] for i in idx for _ in range(G)]
        seeds = [row_seed(cfg.seed, step, i, g) for i in idx for g in range(G)]
        with self._generation_context():
            out = self.engine.generate(prompts, seeds, cfg.temperature, cfg.max_new_tokens)
        texts = [self.tok.decode(r, skip_special_tokens=True) for r in out.response_ids]
        rows = [self.demos[i] for i in idx for _ in range(G)]
        trunc = out.truncated.tolist()
        rewards = torch.tensor([verifier_reward(r, t, tr, cfg.reward, cfg.truncated_zero_reward)
                                for r, t, tr in zip(rows, texts, trunc)])
        metrics = {"train/reward_mean": rewards.mean().item(), "train/truncated": float(np.mean(trunc)),
                   "train/reward_std_in_group": rewards.view(-1, G).std(-1).mean().item(),
                   "train/response_len": float(np.mean([len(r) for r in out.response_ids]))}
        scores = torch.zeros(len(texts))
        if self.method.adv != "none":
            scores = self.disc.score([r["prompt"] for r in rows], [r["response"] for r in rows], texts)
            metrics["train/adv_score_mean"] = scores.mean().item()
        r_for_adv = O.shaped_rewards(rewards, scores, cfg.lambda_adv) if self.method.adv == "shaped" else rewards
        adv = O.group_advantages(r_for_adv, G, scale_std=cfg.scale_std)
        adv_adv = O.adversarial_advantages(scores, G, scale_std=cfg.adv_scale_std)
        resp = [r if r else [self.tok.eos_token_id] for r in out.response_ids]
        batch = Batch(*pack(prompts, resp, self.tok.pad_token_id))
        return {"batch": batch, "adv": adv, "adv_adv": adv_adv, "rows": rows, "texts": texts}, metrics

    def _accumulate(self, roll, sft, w, epoch) -> dict:
        """Forward/backward over micro-batches; normalisers are global so the sum equals the full batch."""
        cfg = self.cfg
        model = self.ds_engine or self.policy
        mb = cfg.micro_batch
        sums: dict[str, float] = {}
        ws = self.world  # DeepSpeed averages gradients over ranks: scale normalisers down by world size

        def add(k, v):
            sums[k] = sums.get(k, 0.0) + float(v)

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
                ref = None
                if self.ref is not None:
                    with torch.no_grad():
                        ref = sequence_logprobs(self.ref, sl)[0]
                loss = torch.zeros((), device=lp.device)
                if w["rl"] > 0:
                    l_rl, d = O.grpo_loss(lp, old, roll["adv"][s: s + mb].to(lp.device), sl.lmask, cfg.clip_low, cfg.clip_high,
                                          cfg.beta, ref, cfg.kl_kind, cfg.agg, norm, cfg.max_new_tokens)
                    loss = loss + w["rl"] * l_rl
                    add("loss/grpo", l_rl.detach())
                    add("train/clip_frac", d["clip_frac"] * sl.ids.shape[0])
                    if "kl" in d:
                        add("train/kl", d["kl"] * sl.ids.shape[0])
                if w["adv"] > 0:
                    l_adv, d = O.clipped_pg_loss(lp, old, roll["adv_adv"][s: s + mb].to(lp.device), sl.lmask, cfg.clip_low,
                                                 cfg.clip_high, cfg.agg, norm, cfg.max_new_tokens)
                    loss = loss + w["adv"] * l_adv
                    add("loss/adv", l_adv.detach())
                add("train/entropy", O.masked_mean(ent, sl.lmask) * sl.ids.shape[0])
                backward(loss, "grpo+adv")
            n = b.ids.shape[0]
            for k in ("train/clip_frac", "train/kl", "train/entropy"):
                if k in sums:
                    sums[k] /= n
        if sft is not None and w["sft"] > 0:
            norm = self._normaliser(sft.lmask) / ws
            for s in range(0, sft.ids.shape[0], mb):
                sl = self._slice(sft, s, mb)
                lp, _ = sequence_logprobs(model, sl, autocast_dtype=self.amp)
                l_sft, _ = O.sft_nll(lp, sl.lmask, cfg.agg, norm, cfg.max_new_tokens)
                backward(w["sft"] * l_sft, "sft")
                add("loss/sft", l_sft.detach())
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
        # reference: the demo of the prompt; expert candidate: a second expert demo is not available per
        # prompt, so the reference itself serves as the positive (its own-policy anchor).
        d = gail_update(self.disc, self.disc_opt, [r["prompt"] for r in rows], [r["response"] for r in rows],
                        [r["response"] for r in rows], pol)
        return {f"disc/{k}": float(v) for k, v in d.items() if isinstance(v, (int, float))}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

    def save_checkpoint(self, path: Path) -> None:
        """Model (safetensors), optimizer, scheduler, RNG states and step; written atomically."""
        from safetensors.torch import save_file
        if self.ds_engine is not None:
            return self._save_ds_checkpoint(path)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            # clone: tied embeddings share memory, which safetensors refuses
            save_file({k: v.detach().clone().contiguous() for k, v in self.policy.state_dict().items()},
                      str(tmp / "model.safetensors"))
            torch.save(self.state(), tmp / "trainer_state.pt")
            if self.disc_opt is not None:
                save_file({k: v.detach().clone().contiguous() for k, v in self.disc.state_dict().items()},
                          str(tmp / "disc.safetensors"))
                torch.save(self.disc_opt.state_dict(), tmp / "disc_opt.pt")

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file
        if self.ds_engine is not None:
            return self._load_ds_checkpoint(path)
        self.policy.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
        st = torch.load(path / "trainer_state.pt", weights_only=True)
        self.opt.load_state_dict(st["optimizer"])
        self._restore_common(path, st)

    def _restore_common(self, path: Path, st: dict) -> None:
        """What both checkpoint kinds restore alike: scheduler, RNG states, step, co-trained discriminator."""
        from safetensors.torch import load_file
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        random.setstate(st["python_rng"])
        self.step = st["step"]
        if self.disc_opt is not None and (path / "disc.safetensors").exists():
            self.disc.load_state_dict(load_file(str(path / "disc.safetensors")))
            self.disc_opt.load_state_dict(torch.load(path / "disc_opt.pt", weights_only=True))

    def _save_ds_checkpoint(self, path: Path) -> None:
        """DeepSpeed: every rank calls this. ``ds/`` holds DeepSpeed's checkpoint (partitioned optimizer
        states), ``model.safetensors`` the gathered weights (rank 0), ``trainer_state_rank<k>.pt`` each
        rank's step, scheduler and RNG states. Written to a sibling directory, renamed by rank 0."""
        from safetensors.torch import save_file
        tmp = path.parent / f".{path.name}.ds-tmp"
        if self.rank == 0:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        torch.distributed.barrier()
        self.ds_engine.save_checkpoint(str(tmp / "ds"), tag="ckpt")
        with self.gathered_policy() as pol:
            if self.rank == 0:  # clone: tied weights must not share memory in safetensors
                save_file({k: v.detach().clone().contiguous() for k, v in pol.state_dict().items()},
                          str(tmp / "model.safetensors"))
        st = {"step": self.step, "scheduler": self.sched.state_dict(), "torch_rng": torch.get_rng_state(),
              "python_rng": random.getstate()}
        torch.save(st, tmp / f"trainer_state_rank{self.rank}.pt")
        if self.disc_opt is not None and self.rank == 0:
            save_file({k: v.detach().clone().contiguous() for k, v in self.disc.state_dict().items()},
                      str(tmp / "disc.safetensors"))
            torch.save(self.disc_opt.state_dict(), tmp / "disc_opt.pt")
        torch.distributed.barrier()
        if self.rank == 0:
            import shutil
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        torch.distributed.barrier()

    def _load_ds_checkpoint(self, path: Path) -> None:
        self.ds_engine.load_checkpoint(str(path / "ds"), tag="ckpt", load_optimizer_states=True,
                                       load_lr_scheduler_states=False)
        f = path / f"trainer_state_rank{self.rank}.pt"
        st = torch.load(f if f.exists() else path / "trainer_state_rank0.pt", weights_only=True)
        self._restore_common(path, st)

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
