"""Each method of the paper's tables as a small composition: which batches, which terms, which weights.

loss = w_sft * SFT(expert demos) + w_rl * GRPO(rollouts, verifier reward) + w_adv * ADV(rollouts, D scores)

| method          | SFT batch | rollouts | w_sft          | w_rl            | w_adv       | reward            |
|-----------------|-----------|----------|----------------|-----------------|-------------|-------------------|
| sft             | yes       | no       | 1              | 0               | 0           | -                 |
| a_sft           | yes       | yes      | 1              | 0               | lambda_adv  | -                 |
| grpo            | no        | yes      | 0              | 1               | 0           | verifier          |
| a_grpo          | no        | yes      | 0              | 1               | lambda_adv  | verifier          |
| chord           | yes       | yes      | mu_t           | 1 - mu_t        | 0           | verifier          |
| a_chord         | yes       | yes      | mu_t           | 1 - mu_t        | lambda_adv  | verifier          |
| uniapl          | yes       | yes      | w_sft (or mu_t)| w_rl (or 1-mu_t)| lambda_adv  | verifier          |
| uniapl_shaped   | yes       | yes      | as uniapl      | as uniapl       | 0           | r + lambda_adv*s  |

A-SFT samples its rollouts for its own SFT prompts (the first B_rl prompts of each step's SFT batch, so it
rolls out as many prompts as the other methods); every other method draws them from the RL prompt stream.
mu_t is the CHORD schedule (``chord_mu``). Adding a method that is a new mix of these terms means one entry
in ``METHODS`` plus its ``params.yaml`` section (``uniapl.config`` derives one section per entry) and its
stage in ``dvc.yaml``. The terms' math lives in ``objectives.py``; this module is plain Python (no torch),
so ``config`` can validate method names and sections without importing the loss code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def chord_mu(step: int, total_steps: int, mu_peak: float, mu_valley: float, warmup_steps: int) -> float:
    """SFT weight mu for CHORD-style mixing (arXiv 2508.11408): linear warmup 0 -> mu_peak over
    ``warmup_steps``, then cosine decay from mu_peak to mu_valley, reaching mu_valley at ``total_steps``
    (held there afterwards)."""
    if step < warmup_steps:
        return mu_peak * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return mu_valley + 0.5 * (mu_peak - mu_valley) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Method:
    name: str
    uses_sft: bool
    uses_rollouts: bool
    adv: str  # "none" | "loss" (separate adversarial term) | "shaped" (added to the verifier reward)
    rl: bool  # whether the verifier-reward GRPO term is on
    schedule: str  # "constant" | "chord" | "uniapl" (uniapl: the config's uniapl.schedule decides)
    inherits: str | None = None  # params section this method's settings start from (then its own section)
    rollout_prompts: str = "rl"  # "rl": the step's RL prompt stream; "sft": the first B_rl prompts of its SFT batch

    @property
    def param_sections(self) -> tuple[str, ...]:
        """``params.yaml`` sections merged over ``train``, in order, for a run of this method."""
        return (self.inherits, self.name) if self.inherits else (self.name,)

    def weights(self, step: int, total: int, cfg) -> dict[str, float]:
        """Weights of the three terms at ``step`` (cfg: the run's TrainConfig)."""
        lam = cfg.lambda_adv if self.adv == "loss" else 0.0
        schedule = cfg.uniapl_schedule if self.schedule == "uniapl" else self.schedule
        if schedule == "chord":
            mu = chord_mu(step, total, cfg.mu_peak, cfg.mu_valley, cfg.mu_warmup)
            return {"sft": mu, "rl": (1.0 - mu) if self.rl else 0.0, "adv": lam}
        if self.schedule == "uniapl":
            return {"sft": cfg.w_sft, "rl": cfg.w_rl, "adv": lam}
        return {"sft": 1.0 if self.uses_sft else 0.0, "rl": 1.0 if self.rl else 0.0, "adv": lam}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", uses_sft=True, uses_rollouts=False, adv="none", rl=False, schedule="constant"),
    Method("a_sft", uses_sft=True, uses_rollouts=True, adv="loss", rl=False, schedule="constant",
           rollout_prompts="sft"),
    Method("grpo", uses_sft=False, uses_rollouts=True, adv="none", rl=True, schedule="constant"),
    Method("a_grpo", uses_sft=False, uses_rollouts=True, adv="loss", rl=True, schedule="constant"),
    Method("chord", uses_sft=True, uses_rollouts=True, adv="none", rl=True, schedule="chord"),
    Method("a_chord", uses_sft=True, uses_rollouts=True, adv="loss", rl=True, schedule="chord"),
    Method("uniapl", uses_sft=True, uses_rollouts=True, adv="loss", rl=True, schedule="uniapl"),
    Method("uniapl_shaped", uses_sft=True, uses_rollouts=True, adv="shaped", rl=True, schedule="uniapl",
           inherits="uniapl"),  # the shaped ablation is uniapl's twin: it starts from uniapl's section
)}
