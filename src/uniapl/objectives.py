"""UniAPL loss math as small pure tensor functions (verl ``core_algos`` style); ``step_objective``
composes them into the paper's objective, w_sft*SFT + w_rl*GRPO + w_adv*ADV.

Shapes: B = sequences in the (micro-)batch, T = response tokens, V = vocab, N = prompts, G = group size.
``mask`` is a float/bool tensor (B, T) with 1 on response tokens that count. Every loss returns
``(loss_scalar, diag)`` where ``diag`` maps names to detached float tensors (local micro-batch values).

Gradient accumulation / data parallelism: every aggregation accepts an explicit ``normaliser`` computed over
the *whole* optimiser-step batch (all micro-batches, all ranks), so that sum over micro-batches of the
micro-losses equals the full-batch loss. DDP/DeepSpeed *average* gradients over ranks, so pass
``normaliser = global_count / world_size`` there (as TRL does with ``num_items_in_batch / num_processes``).
Masked positions are removed with ``torch.where`` *before* any non-linearity, so garbage (padding, huge
values) in masked positions can never leak into the loss or its gradient (``0 * inf`` would give NaN).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- masked reductions


def _bool(mask: Tensor) -> Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` (B, T) over positions where ``mask`` (B, T) is set; masked values are ignored, not multiplied."""
    x = torch.where(_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over set mask positions; the count is clamped to >= 1 so an empty mask gives 0, not NaN."""
    count = _bool(mask).to(x.dtype)
    count = count.sum() if dim is None else count.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


# ----------------------------------------------------------------------------- aggregation


def _token_mean(loss_mat, mask, normaliser=None, max_len=None):
    # DAPO (arXiv 2503.14476) token-level mean: every token in the step batch weighs the same, so long
    # responses are not down-weighted. normaliser = total number of masked tokens in the step batch.
    denom = _bool(mask).sum().clamp(min=1) if normaliser is None else normaliser
    return masked_sum(loss_mat, mask) / denom


def _seq_mean_token_mean(loss_mat, mask, normaliser=None, max_len=None):
    # Original GRPO: mean over sequences of per-sequence token means (length bias, see Dr.GRPO).
    # normaliser = total number of sequences in the step batch.
    per_seq = masked_mean(loss_mat, mask, dim=-1)
    denom = per_seq.shape[0] if normaliser is None else normaliser
    return per_seq.sum() / denom


def _seq_mean_token_sum_norm(loss_mat, mask, normaliser=None, max_len=None):
    # Dr.GRPO (arXiv 2503.20783): divide the token sum by the constant B * max_len (max generation length),
    # removing both the length and the per-batch token-count bias. normaliser = total sequences in step batch.
    if max_len is None:
        raise ValueError("seq-mean-token-sum-norm needs max_len (a constant, e.g. max_completion_length)")
    n_seq = loss_mat.shape[0] if normaliser is None else normaliser
    return masked_sum(loss_mat, mask) / (n_seq * max_len)


AGGREGATIONS = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str, normaliser: float | Tensor | None = None,
              max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) to a scalar.

    - "token-mean": sum / number of masked tokens (DAPO, arXiv 2503.14476). ``normaliser`` = global token count.
    - "seq-mean-token-mean": mean over sequences of per-sequence token means (GRPO).
      ``normaliser`` = global number of sequences.
    - "seq-mean-token-sum-norm": sum / (B * max_len), constant normaliser (Dr.GRPO, arXiv 2503.20783).
      ``normaliser`` = global number of sequences; ``max_len`` required.
    With ``normaliser=None`` the local micro-batch count is used.
    """
    if mode not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {mode!r}; choose from {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode](loss_mat, mask, normaliser, max_len)


# ----------------------------------------------------------------------------- advantages


def group_advantages(rewards: Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages. rewards (N*G,) or (N, G), consecutive G entries form one group -> (N*G,).

    A_i = (r_i - mean_g) / (std_g + eps) if scale_std else r_i - mean_g. std is the *unbiased* (Bessel, /(G-1))
    std, matching TRL 1.16 ``GRPOTrainer`` (``nanstd`` with Bessel correction, ``scale_rewards="group"``).
    Note TRL uses eps=1e-4; we default to 1e-6 (pass eps=1e-4 to match TRL bit-for-bit). For G == 1 the std is
    undefined; like TRL we treat it as 0 (advantage is then 0 anyway).
    """
    r = rewards.reshape(-1, group_size).float()
    mean = r.mean(dim=1, keepdim=True)
    adv = r - mean
    if scale_std:
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
        adv = adv / (std + eps)
    return adv.reshape(-1)


def adversarial_advantages(scores: Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """A^adv_i = (s_i - mean_g s) / (std_g s + eps) on discriminator scores (N*G,) -> (N*G,) (UniAPL METHOD)."""
    return group_advantages(scores, group_size, scale_std=scale_std, eps=eps)


def shaped_rewards(rewards: Tensor, scores: Tensor, lambda_adv: float, group_size: int | None = None,
                   scale_std: bool = True) -> Tensor:
    """Reward-shaping ablation: fold the discriminator score into the task reward, r + lambda * z(s).

    With ``group_size``, z(s) is the score standardised within its group exactly as the separate term's
    advantage (:func:`adversarial_advantages`, ``scale_std``), so lambda means the same in both: one unit of
    lambda is one group-std of the score next to a reward of scale 1. The two differ only in where the sum is
    normalised (shaping: GRPO's advantage of r + lambda z(s) is re-standardised, so in a group whose rewards
    are all equal the score's ranking alone sets a unit-variance advantage). ``group_size=None``: the raw score
    (``r + lambda * s``)."""
    z = scores if group_size is None else adversarial_advantages(scores, group_size, scale_std=scale_std)
    return rewards + lambda_adv * z


# ----------------------------------------------------------------------------- KL estimators
# Schulman, "Approximating KL Divergence" (2020). Samples come from the policy; all estimate KL(pi || ref),
# with log r = ref_logp - logp. k1 unbiased/high variance, k2 biased/low variance, k3 unbiased, >= 0.


def _k1(logp, ref_logp):
    return logp - ref_logp


def _k2(logp, ref_logp):
    return 0.5 * (logp - ref_logp) ** 2


def _k3(logp, ref_logp):
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1.0


KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate (B, T) from policy logp (B, T) and reference ref_logp (B, T)."""
    return KL_ESTIMATORS[kind](logp, ref_logp)


# ----------------------------------------------------------------------------- policy losses


def clipped_pg_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
                    clip_high: float, agg: str = "token-mean", normaliser=None, max_len=None,
                    token_weights: Tensor | None = None):
    """PPO clipped surrogate. logp/old_logp (B, T), advantages (B,) or (B, T), mask (B, T).

    ratio = exp(logp - old_logp); loss_tok = -min(ratio*A, clip(ratio, 1-clip_low, 1+clip_high)*A)
    (asymmetric clip_high is DAPO's clip-higher). diag: ``clip_frac`` share of masked tokens where the clipped
    branch is active (zero gradient), ``approx_kl`` masked mean of k3 = (ratio - 1) - log ratio (estimates
    KL(old || new) on samples from old, as in cleanrl's PPO), ``ratio_mean`` masked mean of ratio.
    ``token_weights`` (B, T) or None: per-token factors of loss_tok before aggregation, detached (the
    truncated importance-sampling correction of a rollout engine's sampler vs the old policy, as TRL's
    ``vllm_importance_sampling_correction``); None computes exactly what it did before the argument existed.
    """
    m = _bool(mask)
    adv = advantages.detach()
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    # Zero the log-ratio on masked tokens before exp: garbage there cannot overflow or produce NaN grads.
    log_ratio = torch.where(m, logp - old_logp.detach(), torch.zeros((), dtype=logp.dtype, device=logp.device))
    ratio = torch.exp(log_ratio)
    surr1 = ratio * adv
    surr2 = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss_mat = -torch.min(surr1, surr2)
    if token_weights is not None:
        loss_mat = loss_mat * token_weights.detach()
    loss = aggregate(loss_mat, m, agg, normaliser, max_len)
    with torch.no_grad():
        clipped = ((ratio < 1.0 - clip_low) & (adv < 0)) | ((ratio > 1.0 + clip_high) & (adv > 0))
        diag = {
            "pg_loss": loss.detach().float(),
            "clip_frac": masked_mean(clipped.float(), m),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, m).float(),
            "ratio_mean": masked_mean(ratio, m).float(),
        }
    return loss, diag


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
              clip_high: float, beta: float = 0.0, ref_logp: Tensor | None = None, kl_kind: str = "k3",
              agg: str = "token-mean", normaliser=None, max_len=None, token_weights: Tensor | None = None):
    """GRPO: clipped surrogate + beta * KL(pi || ref), the KL aggregated with the same ``agg``/normaliser
    (aggregation is linear, so this equals TRL's ``aggregate(pg_tok + beta * kl_tok)``). Shapes as
    ``clipped_pg_loss``; ref_logp (B, T) required when beta != 0. diag adds ``kl`` (masked token mean).
    ``token_weights``: as ``clipped_pg_loss``, on the surrogate only (as TRL 1.16: its KL tokens are added
    after the importance weighting)."""
    loss, diag = clipped_pg_loss(logp, old_logp, advantages, mask, clip_low, clip_high, agg, normaliser, max_len,
                                 token_weights)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss with beta != 0 needs ref_logp")
        m = _bool(mask)
        # Masked positions get logp := ref_logp, i.e. exactly zero KL and zero gradient.
        kl_mat = kl_penalty(torch.where(m, logp, ref_logp.detach()), ref_logp.detach(), kl_kind)
        loss = loss + beta * aggregate(kl_mat, m, agg, normaliser, max_len)
        diag["kl"] = masked_mean(kl_mat.detach(), m).float()
    elif ref_logp is not None:
        with torch.no_grad():
            m = _bool(mask)
            diag["kl"] = masked_mean(kl_penalty(torch.where(m, logp, ref_logp), ref_logp, kl_kind), m).float()
    return loss, diag


def sft_nll(logp: Tensor, mask: Tensor, agg: str = "token-mean", normaliser=None, max_len=None):
    """Negative log-likelihood of expert tokens. logp (B, T) of the expert labels; diag ``nll`` (token mean)."""
    m = _bool(mask)
    loss = aggregate(-logp, m, agg, normaliser, max_len)
    return loss, {"nll": masked_mean(-logp.detach(), m).float()}


# ----------------------------------------------------------------------------- the step objective


def step_objective(weights: Mapping[str, float], *, logp: Tensor | None = None, old_logp: Tensor | None = None,
                   adv_rl: Tensor | None = None, adv_adv: Tensor | None = None, mask: Tensor | None = None,
                   ref_logp: Tensor | None = None, sft_logp: Tensor | None = None, sft_mask: Tensor | None = None,
                   clip_low: float, clip_high: float, beta: float = 0.0, kl_kind: str = "k3",
                   agg: str = "token-mean", normaliser=None, sft_normaliser=None, max_len=None,
                   token_weights: Tensor | None = None):
    """UniAPL's objective, ``w_sft * SFT + w_rl * GRPO + w_adv * ADV``, on one micro-batch.

    ``weights``: ``{"sft": w_sft, "rl": w_rl, "adv": w_adv}`` (``Method.weights``); a term whose weight is
    0 is not computed. Two kinds of micro-batch feed it, either or both:

    - rollouts: ``logp``, ``old_logp`` (the sampling policy's), ``mask`` (B, T), ``adv_rl`` (B,) the
      group-normalised verifier advantage, ``adv_adv`` (B,) the group-normalised discriminator score
      (``adversarial_advantages``), ``ref_logp`` (B, T) or None (needed when ``beta != 0``).
      GRPO = ``grpo_loss(logp, old_logp, adv_rl, ...)``: the clipped surrogate plus ``beta`` * KL(pi || ref);
      ADV = ``clipped_pg_loss(logp, old_logp, adv_adv, ...)``: the same surrogate, no KL (our reading of
      the paper's adversarial term). Both with ``agg``, ``normaliser`` and ``max_len``.
    - expert demonstrations: ``sft_logp``, ``sft_mask`` (B', T'). SFT = ``sft_nll`` with ``agg``,
      ``sft_normaliser`` and ``max_len``.

    The normalisers are the global ones of the whole optimiser step (see the module docstring), so the
    losses of a step's micro-batches add up to the full-batch objective; the caller backpropagates each.
    The terms are added in the order GRPO, ADV, SFT, starting from a zero when a rollout term is on (the
    order of floating-point operations that recorded runs were made with: keep it, or their bits change).

    Returns ``(loss, diag)``; ``diag`` holds detached float32 scalars under the names the trainer logs:
    ``loss/grpo``, ``loss/adv``, ``loss/sft``, the unweighted terms (additive over micro-batches), and
    means over this micro-batch's masked rollout tokens (a micro-batch's own values):
    ``train/clip_frac`` and ``adv/clip_frac``, each term's share of tokens where its clipped branch is
    active (zero gradient); ``train/ratio_mean``, pi / pi_old, and ``train/approx_kl``, the k3 estimate of
    KL(pi_old || pi), of the policy ratio that both terms share; ``train/kl``, KL(pi || ref), when the GRPO
    term is on and ``ref_logp`` is given. With no active term the loss is a zero scalar and ``diag`` empty.

    ``token_weights`` (B, T) or None: the rollouts' per-token importance weights (sampler vs old policy),
    multiplying the token losses of both policy-gradient terms (``clipped_pg_loss``); None: unchanged.
    """
    loss, diag = None, {}
    pg = dict(clip_low=clip_low, clip_high=clip_high, agg=agg, normaliser=normaliser, max_len=max_len,
              token_weights=token_weights)
    if logp is not None and (weights["rl"] > 0 or weights["adv"] > 0):
        loss = torch.zeros((), device=logp.device)
        if weights["rl"] > 0:
            l_rl, d = grpo_loss(logp, old_logp, adv_rl, mask, beta=beta, ref_logp=ref_logp, kl_kind=kl_kind, **pg)
            loss = loss + weights["rl"] * l_rl
            diag["loss/grpo"] = l_rl.detach()
            diag.update({f"train/{k}": d[k] for k in ("clip_frac", "kl") if k in d})
        if weights["adv"] > 0:
            l_adv, d = clipped_pg_loss(logp, old_logp, adv_adv, mask, **pg)
            loss = loss + weights["adv"] * l_adv
            diag["loss/adv"] = l_adv.detach()
            diag["adv/clip_frac"] = d["clip_frac"]
        diag["train/ratio_mean"], diag["train/approx_kl"] = d["ratio_mean"], d["approx_kl"]  # same in both terms
    if sft_logp is not None and weights["sft"] > 0:
        l_sft, _ = sft_nll(sft_logp, sft_mask, agg, sft_normaliser, max_len)
        term = weights["sft"] * l_sft
        loss = term if loss is None else loss + term
        diag["loss/sft"] = l_sft.detach()
    if loss is None:
        like = logp if logp is not None else sft_logp
        loss = torch.zeros((), device=None if like is None else like.device)
    return loss, diag


# ----------------------------------------------------------------------------- sampler correction


def importance_weights(old_logp: torch.Tensor, sampler_lp: torch.Tensor, mask: torch.Tensor,
                       cap: float | None):
    """Token-level truncated importance weights ``min(exp(old_logp - sampler_lp), cap)`` (B, T), detached;
    1 on masked positions, on tokens without a sampler log-prob (NaN) and everywhere when ``cap`` is None.
    Returns (weights, diag): diag ``train/is_ratio_mean`` the masked mean of the uncapped ratio,
    ``train/is_capped_frac`` the share of masked tokens whose ratio exceeds ``cap`` (0 when None)."""
    with torch.no_grad():
        m = mask.bool() & ~torch.isnan(sampler_lp)
        zero = torch.zeros((), device=old_logp.device)
        log_r = torch.where(m, old_logp.detach().float() - torch.nan_to_num(sampler_lp), zero)
        ratio = torch.exp(log_r)
        diag = {"train/is_ratio_mean": masked_mean(ratio, m)}
        if cap is None:
            diag["train/is_capped_frac"] = zero
            return torch.ones_like(ratio), diag
        diag["train/is_capped_frac"] = masked_mean((ratio > cap).float(), m)
        return torch.where(m, ratio.clamp(max=cap), torch.ones_like(ratio)), diag
