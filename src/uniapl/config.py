"""``params.yaml`` -> a validated, typed config. Unknown keys and wrong types fail at load.

The bottom floor of the package: this module imports only ``uniapl.errors``, ``uniapl.instructions`` and
``uniapl.methods`` (plain Python, none of which imports anything back) and no torch, so a change to the loss
code re-runs no stage that only reads its configuration.

Every field has a one-line doc. Choices that go beyond the paper are marked **[ours]** and listed in
the README's deviations table. Validation errors name the key's dotted path and the broken rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from uniapl.errors import UserError
from uniapl.instructions import INSTRUCTION_TYPES
from uniapl.methods import METHODS


class Strict(BaseModel):
    # use_attribute_docstrings: the doc line under each field becomes its description (tested: every field has one)
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# ------------------------------------------------------------------------------------------- the world

class WorldConfig(Strict):
    seed: int = 0
    """Seed of the prompt generator and both writers."""
    n_train: int = Field(6000, gt=0)
    """Training prompts (RL prompts, SFT demonstrations, pretraining corpora)."""
    n_in_domain: int = Field(200, gt=0)
    """In-domain test prompts: unseen prompts, seen types, combinations and kwarg ranges."""
    n_validation: int = Field(200, ge=0)
    """Validation prompts (in-distribution, disjoint from train and both test splits): every choice of the
    protocol (the selection grid, the plateau criterion) reads this split, never a test split [ours]."""
    n_ood: int = Field(200, gt=0)
    """OOD test prompts, spread evenly over the four generalisation axes."""
    n_heldout_base: int = Field(200, gt=0)
    """Held-out base-corpus responses for the general-ability (perplexity) check."""
    n_instructions_probs: tuple[float, ...] = (0.3, 0.4, 0.3)
    """P(k instructions) for k = 1, 2, ... in train and in-domain prompts."""
    ood_n_instructions: int = Field(4, ge=2)
    """Instructions per prompt on the OOD 'more_instructions' axis (training uses at most len(probs))."""
    type_weights: dict[str, float]
    """Sampling weight of each IFEval instruction type [ours: easy types down-weighted so a fixed
    prompt-ignoring answer scores low]."""
    follow_prob: dict[str, float]
    """Per student corpus: probability that the student writer follows each instruction [ours]."""

    @model_validator(mode="after")
    def _check(self):
        if abs(sum(self.n_instructions_probs) - 1) > 1e-6:
            raise ValueError(f"n_instructions_probs must sum to 1, got {sum(self.n_instructions_probs)}")
        if self.ood_n_instructions <= len(self.n_instructions_probs):
            raise ValueError("ood_n_instructions must exceed the most instructions used in training")
        unknown = set(self.type_weights) - set(INSTRUCTION_TYPES)
        if unknown:
            raise ValueError(f"type_weights has unknown instruction types {sorted(unknown)}; "
                             f"known: {list(INSTRUCTION_TYPES)}")
        for k, w in self.type_weights.items():
            if w < 0:
                raise ValueError(f"type_weights[{k}]={w} must be >= 0")
        for k, p in self.follow_prob.items():
            if not 0 <= p <= 1:
                raise ValueError(f"follow_prob[{k}]={p} is not a probability")
        return self


class TokenizerConfig(Strict):
    vocab_size: int = Field(2048, ge=300)
    """Byte-level BPE vocabulary trained on the world's text."""


# ------------------------------------------------------------------------------------------- models

class TinyArch(Strict):
    """The shape of a tiny ``Qwen3ForCausalLM`` (``models.tiny_qwen3_config``): policies and the discriminator."""

    hidden_size: int = Field(128, gt=0)
    """Model width d_model."""
    num_layers: int = Field(4, gt=0)
    """Decoder layers."""
    num_heads: int = Field(4, gt=0)
    """Query heads."""
    num_kv_heads: int = Field(2, gt=0)
    """Key/value heads (grouped-query attention, as Qwen3); must divide num_heads."""
    head_dim: int = Field(32, gt=0)
    """Width of one attention head (Qwen3 sets it apart from hidden_size / num_heads)."""
    intermediate_size: int = Field(384, gt=0)
    """Width of the SwiGLU MLP."""

    @model_validator(mode="after")
    def _check_heads(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        return self


class ModelSpec(TinyArch):
    """A tiny ``Qwen3ForCausalLM`` (embedded) or a hub/local path (paper scale)."""

    name_or_path: str | None = None
    """Paper scale: e.g. Qwen/Qwen3-0.6B (a hub id, read from the local Hugging Face cache when offline) or a
    local model directory. When set, the model is used as it is, not trained: the pretrain stage copies its
    files (safetensors weights, config, its own tokenizer and chat template) to models/<name> and records
    name, revision and weight hashes; the tiny-architecture fields, corpus, steps, lr, batch_size and warmup
    are ignored."""
    corpus: str = "expert"
    """Pretraining corpus: 'expert' or a key of world.follow_prob (a student-writer corpus)."""
    steps: int = Field(600, gt=0)
    """Pretraining optimizer steps (ignored when name_or_path is set: a hub model is not trained)."""
    lr: float = Field(1e-3, gt=0)
    """Peak AdamW learning rate of pretraining (linear warm-up, then constant)."""
    batch_size: int = Field(32, gt=0)
    """Sequences per pretraining step (bin-packed into rows of pretrain.max_len)."""
    warmup: int = Field(30, ge=0)
    """Linear warm-up steps of the learning rate."""


class PretrainConfig(Strict):
    seed: int = 0
    """Seed of the initial weights and of the corpus order."""
    max_len: int = Field(256, gt=16)
    """Longest training sequence (prompt + response tokens)."""
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype (bf16 on GPUs or CPUs with native bf16; weights and optimizer stay fp32)."""
    threads: int = Field(2, gt=0)
    """torch intra-op threads of the pretraining and evaluation processes."""
    models: dict[str, ModelSpec]
    """teacher, student-s, student-m (the teacher is the largest)."""

    @model_validator(mode="after")
    def _check(self):
        for need in ("teacher", "student-s", "student-m"):
            if need not in self.models:
                raise ValueError(f"models must define '{need}'")
        return self


# ------------------------------------------------------------------------------------------- data

class PromptsConfig(Strict):
    source: str = "data/world/train.jsonl"
    """Training prompts in IFEval's format (prompt, instruction_id_list, kwargs): a .jsonl / .json / .parquet
    file, or a `datasets` name or directory (e.g. argilla/ifeval-like-data with `config: filtered`). A local
    file outside data/world must be added to the `prompts` stage's deps in dvc.yaml."""
    config: str | None = None
    """The `datasets` configuration (None: the default one)."""
    split: str = "train"
    """The `datasets` split."""
    exclude: list[str] = ["data/world/in_domain.jsonl", "data/world/ood.jsonl", "data/world/validation.jsonl"]
    """Evaluation sets (JSONL with `prompt`) whose prompts are removed from the training pools [ours]."""
    n_validation: int = Field(0, ge=0)
    """Prompts drawn (with `seed`) into the validation pool; 0 for the embedded world, which has its own
    evaluation splits."""
    seed: int = 0
    """Seed of the validation draw."""


class TeacherDemosConfig(Strict):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """hf: the embedded teacher with transformers generate; vllm / openai: paper scale."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the demonstrations (one sample per prompt)."""
    max_new_tokens: int = Field(160, gt=0)
    """Length cap of a demonstration; cut ones are kept and flagged `truncated`."""
    n_prompts: int | None = Field(None, gt=0)
    """Demonstrate only the first n training prompts (None: all). Every method draws its SFT and RL
    batches from the demonstrated prompts, so this is also the training prompt pool [ours]."""
    n_samples: int = Field(1, ge=1)
    """Teacher samples per prompt (backends hf and vllm; openai: 1). With only_passing, every passing sample is
    an SFT demonstration, so more samples keep at least one for more prompts (coverage in the stage's
    metrics); the discriminator's reference is a prompt's first passing sample [ours]."""
    only_passing: bool = False
    """SFT imitates only the samples that pass every instruction (rejection sampling); the RL prompt pool keeps
    every prompt (the stage writes every sample with its verdict) [ours: the paper does not say]."""
    seed: int = 0
    """Base of the per-prompt sampling seeds."""
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype of the hf backend's sampling (as `train.dtype`)."""
    openai_base_url: str = "http://localhost:8000/v1"
    """OpenAI-compatible server (e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507`)."""
    openai_model: str = "Qwen/Qwen3-235B-A22B-Instruct-2507"
    """Model name sent to the OpenAI-compatible server."""
    openai_concurrency: int = Field(8, gt=0)
    """openai backend: requests in flight at once (a thread pool)."""
    openai_max_retries: int = Field(5, ge=0)
    """openai backend: retries of a request after a connection error, 408, 409, 429 or 5xx, with the openai
    client's exponential back-off (its `max_retries`); then the stage fails, keeping its finished shards."""
    openai_timeout: float = Field(600.0, gt=0)
    """openai backend: seconds before one request times out (and is retried)."""
    openai_shard_size: int = Field(256, gt=0)
    """openai backend: prompts per shard. Each finished shard is written to `<output stem>.shards/`; a
    restarted stage with the same request settings skips the finished ones (resume) [ours]."""
    openai_api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable holding the API key (unset: "EMPTY", as vLLM accepts)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling; 1 samples the full distribution. The request states it (and top_k, min_p 0,
    repetition_penalty 1, presence/frequency penalty 0) explicitly, so a server's generation_config defaults
    (Qwen3's are top_p 0.8, top_k 20) cannot replace them. Other values need backend openai."""
    top_k: int = Field(-1, ge=-1)
    """Top-k sampling; -1 (or 0) samples the full distribution. Other values need backend openai."""

    @model_validator(mode="after")
    def _check_sampling(self):
        if self.backend == "openai" and self.n_samples != 1:
            raise ValueError(f"n_samples={self.n_samples}: the openai backend draws one sample per prompt")
        if self.backend != "openai" and (self.top_p != 1.0 or self.top_k not in (-1, 0)):
            raise ValueError(f"top_p={self.top_p}, top_k={self.top_k}: the {self.backend} backend samples the "
                             "full distribution (top_p 1, top_k -1); other values need backend openai")
        return self


class EvaluateConfig(Strict):
    max_new_tokens: int = Field(160, gt=0)
    """Length cap; responses cut here count in `truncated`."""
    n_sampled: int = Field(4, ge=0)
    """Samples at temperature `temperature` per prompt for prompt_strict_sampled (base models)."""
    n_sampled_runs: int | None = Field(None, ge=0)
    """The same for trained runs (None: `n_sampled`). prompt_strict_sampled estimates the same expectation
    with any n; fewer samples per run keep the 49-run matrix inside its time budget [ours]."""
    temperature: float = Field(1.0, gt=0)
    """Temperature of the sampled metrics (the IFEval metrics proper are greedy)."""
    batch_size: int = Field(200, gt=0)
    """Prompts decoded together."""
    seed: int = 1234
    """Base of the per-prompt sampling seeds (the same prompts get the same seeds in every run)."""
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype of generation and scoring (as `train.dtype`; bf16 only where the device has it natively)."""


class DiscriminatorConfig(TinyArch):
    """The frozen discriminator D(prompt, expert reference, candidate) -> score; its shape when embedded."""

    source: Literal["embedded", "polar"] = "embedded"
    """embedded: a tiny POLAR-style model pretrained in the pipeline; polar: internlm/POLAR-* (paper scale)."""
    polar_model: str = "internlm/POLAR-1_8B"
    """Hub id or path of the POLAR reward model (source: polar)."""
    trust_remote_code: bool = False
    """POLAR needs remote code; only loaded with it when the user sets this."""
    max_length: int = Field(384, gt=0)
    """Longest (prompt, reference, candidate) input in tokens; the context is cut from the left first (as
    POLAR's client does, ``discriminator.polar_truncate``)."""
    n_prompts: int = Field(1500, gt=0)
    """Training prompts used to build (reference, same-policy, other-policy) triples."""
    steps: int = Field(300, gt=0)
    """Contrastive pretraining steps."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate of the contrastive pretraining."""
    batch_size: int = Field(32, gt=0)
    """Triples per pretraining step."""
    seed: int = 0
    """Seed of the initial weights, of the triples and of the policy samples."""


# ------------------------------------------------------------------------------------------- one training run

class TrainConfig(Strict):
    """One run: a method applied to a student. Budgets are per run. Sections: run, batch, sampling, loss,
    reward, UniAPL/CHORD weights, discriminator, system."""

    # --- the run
    method: str = "uniapl"
    """sft, a_sft, grpo, a_grpo, chord, a_chord, uniapl, uniapl_shaped (the table in uniapl.methods)."""
    student: str = "student-s"
    """Which pretrained student (a key of pretrain.models) the run starts from."""
    init_from: str | None = None
    """Start from another run's final weights (staged pipelines, e.g. sft->grpo); None: the base student."""
    seed: int = 0
    """Seed of the data order and of every rollout (rollout seeds derive from (seed, step, prompt, sample))."""
    steps: int = Field(60, gt=0)
    """Optimizer steps of the run (the paper trains hundreds on 8 GPUs; our budget is set in params.yaml) [ours]."""
    lr: float = Field(1e-4, gt=0)
    """Peak AdamW learning rate (betas 0.9/0.95 as DAPO/verl's actor, no weight decay), after a linear warm-up [ours]."""
    warmup: int = Field(5, ge=0)
    """Linear learning-rate warm-up steps, then constant (TRL's `warmup_steps` with a constant schedule) [ours]."""
    # --- batch
    batch_rl: int = Field(8, ge=1)
    """RL prompts per step (B_rl; the paper's RL batch, scaled down) [ours]; each gets `group_size` rollouts."""
    group_size: int = Field(8, ge=2)
    """G rollouts per prompt (GRPO's group; its advantages are centred within the group)."""
    batch_sft: int = Field(16, ge=1)
    """Expert demonstrations per step (B_sft; UniAPL mixes both kinds in every batch) [ours: the size]."""
    micro_batch: int = Field(64, ge=1)
    """Sequences per forward/backward (gradient accumulation, as TRL's `per_device_train_batch_size`; the loss
    does not depend on it: normalisers are global, as TRL's `num_items_in_batch`)."""
    # --- sampling
    max_new_tokens: int = Field(128, gt=0)
    """Length cap of a rollout (TRL's `max_completion_length`; also the L of `seq-mean-token-sum-norm`) [ours: the value]."""
    temperature: float = Field(1.0, gt=0)
    """Rollout sampling temperature (1.0: TRL's default, and DAPO's)."""
    rollout_engine: Literal["hf", "vllm"] = "hf"
    """Decoding engine of the rollouts: `hf` (our KV-cache sampler on the policy itself) or `vllm` (a vLLM
    engine colocated in the trainer's process, weights synced before every step's generation; server mode
    is not implemented)."""
    vllm_gpu_memory_utilization: float = Field(0.1, gt=0, le=1)
    """rollout_engine vllm: share of GPU memory vLLM may take (CPU: share of RAM, less this process's, for KV)."""
    vllm_enforce_eager: bool = True
    """rollout_engine vllm: no CUDA graphs (faster start, slower decoding; required on CPU)."""
    vllm_is_cap: float | None = Field(None, ge=1)
    """rollout_engine vllm: truncated importance-sampling correction, each token's PG loss times
    min(pi_old / pi_sampler, cap), as TRL's `vllm_importance_sampling_cap` (None: off)."""
    # --- the policy-gradient loss
    ppo_epochs: int = Field(1, ge=1)
    """Optimizer passes over each batch of rollouts (1: on-policy, ratio = 1 as in TRL's default
    `num_iterations=1`; the clip acts only when > 1)."""
    clip_low: float = Field(0.2, gt=0, lt=1)
    """PPO clip: the ratio is clipped below at 1 - clip_low (PPO, Schulman et al. 2017; GRPO keeps it)."""
    clip_high: float = Field(0.28, gt=0, lt=1)
    """Upper clip 1 + clip_high; 0.28 > clip_low is DAPO's clip-higher (arXiv 2503.14476), TRL's `epsilon_high`."""
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """How token losses become the batch loss, as TRL's `loss_type`: token-mean over all response tokens
    (DAPO, arXiv 2503.14476; TRL 'dapo'), seq-mean-token-mean (the GRPO paper, arXiv 2402.03300; TRL 'grpo'),
    seq-mean-token-sum-norm (token sums divided by max_new_tokens: Dr.GRPO, arXiv 2503.20783; TRL 'dr_grpo')."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient to the frozen initial policy (0: no reference model, as DAPO and Dr.GRPO)."""
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (Schulman's "Approximating KL divergence"): k1 = log ratio, k2 = half its square,
    k3 = ratio - 1 - log ratio (unbiased, >= 0; the GRPO paper's and TRL's choice)."""
    scale_std: bool = True
    """Divide group-centred rewards by the group std (GRPO); off: Dr.GRPO's unscaled advantages (TRL
    `scale_rewards=False`)."""
    grad_clip: float = Field(1.0, gt=0)
    """Global gradient-norm clip before each optimizer step (1.0: TRL's `max_grad_norm` default)."""
    # --- the verifier reward
    reward: Literal["binary", "fraction"] = "binary"
    """binary: 1 if every instruction is followed (strict, as IFEval's prompt-level metric); fraction: share
    followed [ours as option]."""
    truncated_zero_reward: bool = True
    """A rollout cut at the length cap gets reward 0 [ours; DAPO's overlong filtering in its simplest form]."""
    # --- UniAPL / CHORD weights of SFT, RL and the adversarial term
    w_sft: float = Field(1.0, ge=0)
    """UniAPL's SFT weight under the constant schedule (the paper's mixing weight; our default 1) [ours]."""
    w_rl: float = Field(1.0, ge=0)
    """UniAPL's weight of the verifier-reward GRPO term under the constant schedule [ours]."""
    lambda_adv: float = Field(0.1, ge=0)
    """Weight of the adversarial term (methods with a separate term) or of the discriminator score added
    to the reward (uniapl_shaped) [ours: the paper gives no value]."""
    uniapl_schedule: Literal["constant", "chord"] = "constant"
    """UniAPL's SFT/RL weights: constants (w_sft, w_rl) or the CHORD mu schedule [ours]."""
    mu_peak: float = Field(0.5, ge=0, le=1)
    """CHORD (arXiv 2508.11408): SFT weight mu at the end of warm-up; RL gets 1 - mu."""
    mu_valley: float = Field(0.05, ge=0, le=1)
    """CHORD: mu after the cosine decay over the run's steps (<= mu_peak)."""
    mu_warmup: int = Field(5, ge=0)
    """CHORD: steps of the linear warm-up of mu from 0 to mu_peak."""
    # --- the discriminator
    adv_scale_std: bool = True
    """Normalise discriminator scores within each group by their std (the adversarial advantage) [ours]."""
    disc_cotrain: bool = False
    """GAIL-style ablation (Ho & Ermon 2016): update the discriminator on expert vs policy samples each step."""
    disc_lr: float = Field(1e-4, gt=0)
    """AdamW learning rate of the co-trained discriminator (GAIL ablation) [ours]."""
    # --- system
    term_grad_norms: bool = True
    """Log each step's gradient norm of the policy-gradient terms (GRPO + ADV, `grad/pg_norm`), of the SFT
    term (`grad/sft_norm`) and their cosine (`grad/cos_pg_sft`), as weighted in the loss and before clipping,
    when a step has both: whether the terms are balanced as intended. Costs one copy of the gradients per
    step (set false for multi-billion-parameter policies); single process only (not under DeepSpeed)."""
    eval_every: int = Field(0, ge=0)
    """Steps between greedy evaluations on the world's validation split during training (`val/prompt_strict`
    in the run's curves and `validation.json`; the last optimizer step is always evaluated); 0: off. The
    plateau criterion and the selection stage read this curve, never a test split [ours]."""
    eval_prompts: int = Field(200, gt=0)
    """Validation prompts of those evaluations (the first n of the split)."""
    checkpoint_every: int = Field(20, ge=1)
    """Steps between checkpoints (atomic; a killed run resumes from the last one bit for bit)."""
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype of forward and backward (weights and optimizer states stay fp32; bf16 as the paper's GPUs,
    fp32 on CPUs without fast bf16 at this model size)."""
    threads: int = Field(2, ge=1)
    """torch intra-op threads (part of a run's numerics: another count gives other bits)."""
    device: str = "auto"
    """auto: cuda when available, else cpu; or an explicit torch device string."""
    distributed: Literal["none", "deepspeed"] = "none"
    """deepspeed: launch under torchrun/deepspeed (`train.py --deepspeed`); none: one process."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage (distributed: deepspeed)."""

    @model_validator(mode="after")
    def _check(self):
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' is unknown; known: {sorted(METHODS)}")
        if self.mu_valley > self.mu_peak:
            raise ValueError(f"mu_valley ({self.mu_valley}) must not exceed mu_peak ({self.mu_peak})")
        if self.rollout_engine == "vllm" and self.distributed == "deepspeed" and self.zero_stage == 3:
            raise ValueError("rollout_engine=vllm with ZeRO-3 is not supported (weights are partitioned)")
        if self.vllm_is_cap is not None and self.rollout_engine != "vllm":
            raise ValueError("vllm_is_cap needs rollout_engine=vllm (with hf the sampler is the policy itself)")
        if self.disc_cotrain and METHODS[self.method].adv == "none":
            raise ValueError(f"disc_cotrain needs a method with an adversarial term, not '{self.method}'")
        if METHODS[self.method].rollout_prompts == "sft" and self.batch_rl > self.batch_sft:
            raise ValueError(f"{self.method} rolls out on its SFT prompts: batch_rl ({self.batch_rl}) must not "
                             f"exceed batch_sft ({self.batch_sft})")
        return self


class PipelineConfig(Strict):
    """What `dvc repro` trains: seeds and ablation grid (read by dvc.yaml's matrices). A training stage runs two
    runs side by side, one thread each (experiments/side_by_side.py), so the lists come in pairs: a pair of
    seeds for the main table, a pair of lambda values for the sweep."""

    seeds: list[tuple[int, int]] = Field([(0, 1), (2, 3)], min_length=1)
    """Seeds of every main-table run, in pairs (each pair is one stage: `train_s@sft-seeds0` trains seeds 0 and 1)."""
    ablation_seeds: list[int] = Field([0, 1, 2], min_length=1)
    """Seeds of the ablation runs (lambda_adv sweep, reward shaping, co-trained discriminator)."""
    lambda_sweep: list[tuple[float, float]] = Field([(0.0, 0.5), (1.0, 2.0)], min_length=1)
    """lambda_adv values of the sweep, in pairs, besides uniapl's own `uniapl.lambda_adv`."""

    @model_validator(mode="after")
    def _distinct(self):
        seeds = [s for pair in self.seeds for s in pair]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: a seed appears twice in {[list(p) for p in self.seeds]}")
        if len(set(self.ablation_seeds)) != len(self.ablation_seeds):
            raise ValueError(f"ablation_seeds: a seed appears twice in {self.ablation_seeds}")
        lams = [x for pair in self.lambda_sweep for x in pair]
        if len(set(lams)) != len(lams):
            raise ValueError(f"lambda_sweep: a value appears twice in {[list(p) for p in self.lambda_sweep]}")
        return self


class SelectionConfig(Strict):
    """The selection stage (`select@<candidate>`, then `choose`): short grids per method, one seed, scored on the
    validation split; each main run of a method starts from that method's chosen settings
    (`results/selection/<method>.json`), with `--set` overrides (ablations) on top [ours: the protocol]."""

    student: str = "student-s"
    """The student the grid is run on (its choice is used for every student: the budget has no second grid)."""
    seed: int = 0
    """The seed of every candidate run (not one of the main runs' seeds: selection and test stay apart)."""
    score: Literal["final", "last_quarter_mean"] = "last_quarter_mean"
    """Score of a candidate: its final validation prompt_strict, or the mean of its evaluations in the last
    quarter of its steps (less noise from one evaluation)."""
    grid: dict[str, dict] = {}
    """Candidate id -> {method: <name>, <train keys>: values}, e.g. `grpo_lr3e-4: {method: grpo, lr: 3.0e-4}`.
    A method without candidates (and without `share`) keeps its params.yaml settings."""
    share: dict[str, str] = {}
    """Method -> another method whose chosen settings it uses (it has no candidates of its own), e.g.
    `a_grpo: grpo`: the budget selects one learning rate per family [ours]."""

    @model_validator(mode="after")
    def _check(self):
        for m, src in self.share.items():
            if m not in METHODS or src not in METHODS:
                raise ValueError(f"share.{m}: {src!r}: both must be methods ({sorted(METHODS)})")
            if any(c.get("method") == m for c in self.grid.values()):
                raise ValueError(f"share.{m}: {m} has candidates of its own in grid")
        import re
        for cid, cand in self.grid.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", cid):
                raise ValueError(f"grid.{cid}: a candidate id is letters, digits, '_' and '-' only (it names a DVC "
                                 "stage and a params path, where '.' would split it)")
            if not isinstance(cand, dict) or cand.get("method") not in METHODS:
                raise ValueError(f"grid.{cid}: needs method: one of {sorted(METHODS)}")
        return self


class ClaimsConfig(Strict):
    """How the aggregate turns runs into verdicts (declared before the runs are made)."""

    primary_metric: Literal["greedy", "sampled"] = "greedy"
    """The metric of every claim: greedy prompt-level strict (IFEval's) or the mean over sampled responses at
    evaluate.temperature; both are reported, this one decides."""
    min_effect: float = Field(0.03, gt=0)
    """Smallest effect of interest (accuracy, 0.03 = 3 points): a CI below it is 'not replicated', one that
    straddles both 0 and it is 'inconclusive' (uniapl.paired)."""
    plateau_tol: float = Field(0.01, gt=0)
    """Plateau criterion: a run has plateaued when the mean validation accuracy over its evaluations in the last
    quarter of its steps is less than this above the mean over the quarter before (0.01 = 1 point)."""


class LaunchConfig(Strict):
    """How a training stage starts its runs (dvc.yaml: `experiments/side_by_side.py --jobs <jobs>` over
    `<python> experiments/train.py ...`). Part of each stage's command, so a change re-runs the stages."""

    python: str = "python"
    """The launcher of one run: `python` here; at paper scale e.g. `torchrun --standalone --nproc_per_node 8`
    (with `train.distributed: deepspeed`), or `torchrun --nnodes ... --rdzv-endpoint ...` across nodes."""
    jobs: int = Field(2, ge=1)
    """Runs of a stage at a time: 2 on a 2-core CPU (one thread each, `train.threads: 1`); 1 when a run takes
    every GPU of the machine."""


class _ParamsBase(Strict):
    world: WorldConfig
    """The embedded world (stage `world`)."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """The world's tokenizer (stage `world`)."""
    pretrain: PretrainConfig
    """The three tiny models (stages `pretrain@*`)."""
    prompts: PromptsConfig = PromptsConfig()
    """The training prompt pools (stage `prompts`)."""
    teacher_demos: TeacherDemosConfig = TeacherDemosConfig()
    """The SFT dataset (stage `teacher_demos`)."""
    evaluate: EvaluateConfig = EvaluateConfig()
    """Evaluation of every model (stages `evaluate_base@*` and every training stage)."""
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    """The frozen discriminator (stage `discriminator`)."""
    pipeline: PipelineConfig = PipelineConfig()
    """Which runs dvc.yaml's matrices train."""
    launch: LaunchConfig = LaunchConfig()
    """How the training stages start their runs."""
    selection: SelectionConfig = SelectionConfig()
    """The per-method grid on the validation split (stages `select@*`, `choose`)."""
    claims: ClaimsConfig = ClaimsConfig()
    """The verdicts' statistics (stage `aggregate`)."""
    train: dict = {}
    """Defaults of every training run (fields of TrainConfig)."""


_clash = set(METHODS) & set(_ParamsBase.model_fields)
assert not _clash, f"method names clash with params sections: {_clash}"

Params = create_model(
    "Params", __base__=_ParamsBase, __module__=__name__,
    **{name: (dict, {}) for name in METHODS})
Params.__doc__ = """All of params.yaml. Besides the sections above, one section per method of ``uniapl.methods.METHODS``
(derived from that table): overrides of `train` that only that method reads, so DVC re-runs only the stages
that read a changed key (e.g. `uniapl.lambda_adv`). A method with ``inherits`` starts from that method's
section, then applies its own."""


class ConfigError(UserError, ValueError):
    """A params file that does not validate; the message names the file, key path and rule."""


def _format(err: ValidationError, path: str, prefix: str = "") -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = ".".join([prefix] * bool(prefix) + [str(p) for p in e["loc"]]) or "<root>"
        got = repr(e.get("input"))
        show = e["type"] not in ("missing", "value_error") and len(got) < 80
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {key}: {msg}" + (f" (got {got})" if show else ""))
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read and validate ``path``; ``overrides`` is a nested dict merged on top (tests, sweeps).

    Each method's settings (``train`` <- its sections) are validated too, so a bad key in ``train`` or in a
    method's section fails here, named by its place in ``path``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e, str(path))) from None
    for m in METHODS:  # every method's settings must validate on their own
        run_config(params, m, "student-s", 0, source=str(path))
    for cid, cand in params.selection.grid.items():  # and every selection candidate's
        try:
            run_config(params, cand["method"], params.selection.student, params.selection.seed,
                       {k: v for k, v in cand.items() if k != "method"})
        except ConfigError as e:
            raise ConfigError(f"{path}: selection.grid.{cid}: " + str(e).split("\n", 1)[-1].strip()) from None
    return params


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, recursively for nested mappings (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_config(params: Params, method: str, student: str, seed: int, extra: dict | None = None,
               source: str | None = None) -> TrainConfig:
    """The TrainConfig of one run: ``train`` <- the method's section(s) <- (method, student, seed) <- extra.

    A failure names the params section that holds the bad key (``train.<key>`` or ``<method>.<key>``), in
    ``source`` (the params file) when given, else in the run."""
    if method not in METHODS:
        raise ConfigError(f"method '{method}' is unknown; known: {sorted(METHODS)}")
    raw = dict(params.train)
    chain = METHODS[method].param_sections
    for sec in chain:
        raw = deep_merge(raw, getattr(params, sec) or {})
    raw = deep_merge(raw, {"method": method, "student": student, "seed": seed, **(extra or {})})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
        if bad & set(extra or {}):
            where = f"run {method}/{student}/seed{seed} (its overrides)"
            prefix = ""
        else:
            prefix = next((sec for sec in reversed(chain) if bad & set(getattr(params, sec) or {})), "train")
            where = source or f"run {method}/{student}/seed{seed}"
        raise ConfigError(_format(e, where, prefix)) from None
