"""Fast property/value tests for uniapl.objectives (verl / cleanrl spirit)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from uniapl import objectives as O
from uniapl.methods import chord_mu

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
MAX_LEN = 8
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
WEIGHTS = {"sft": 0.7, "rl": 1.0, "adv": 0.3}
LOSSES = ["grpo", "sft", "adv", "step"]


def _batch(B=6, T=MAX_LEN, seed=0):
    """Random but fixed tensors; response lengths vary, one response is empty-ish (length 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([8, 3, 5, 1, 6, 2])[:B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 3
    logp = (old + 0.4 * torch.randn(B, T, generator=g)).clamp(max=-1e-3)  # ratios on both sides of the clip
    ref = old + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    scores = torch.randn(B, generator=g)
    return logp, old, ref, adv, scores, mask


def _losses(agg, normaliser=None):
    """Every loss as a function of (logp, old, ref, adv, scores, mask) -> (loss, diag)."""
    kw = dict(agg=agg, normaliser=normaliser, max_len=MAX_LEN)
    return {
        "grpo": lambda lp, o, r, a, s, m: O.grpo_loss(lp, o, a, m, CLIP_LOW, CLIP_HIGH, beta=0.1, ref_logp=r, **kw),
        "sft": lambda lp, o, r, a, s, m: O.sft_nll(lp, m, **kw),
        "adv": lambda lp, o, r, a, s, m: O.clipped_pg_loss(lp, o, s, m, CLIP_LOW, CLIP_HIGH, **kw),
        # the whole step objective, its SFT term fed the same tensors as the rollout terms
        "step": lambda lp, o, r, a, s, m: O.step_objective(
            WEIGHTS, logp=lp, old_logp=o, adv_rl=a, adv_adv=s, mask=m, ref_logp=r, sft_logp=lp, sft_mask=m,
            clip_low=CLIP_LOW, clip_high=CLIP_HIGH, beta=0.1, sft_normaliser=normaliser, **kw),
    }


# ----------------------------------------------------------------------------- hand-computed values


def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    # group 1: mean 2, unbiased std 1; group 2: mean 2, unbiased var (4+4+16)/2 = 12
    expect = torch.tensor([-1.0, 0.0, 1.0, -2 / math.sqrt(12), -2 / math.sqrt(12), 4 / math.sqrt(12)])
    assert torch.allclose(O.group_advantages(r, 3, eps=0.0), expect)
    assert torch.allclose(O.group_advantages(r.view(2, 3), 3, eps=0.0), expect)  # (N, G) input
    assert torch.allclose(O.group_advantages(r, 3, scale_std=False), torch.tensor([-1.0, 0, 1, -2, -2, 4]))
    assert torch.allclose(O.group_advantages(r, 3, eps=1.0)[:3], torch.tensor([-0.5, 0.0, 0.5]))
    assert torch.equal(O.group_advantages(r, 1), torch.zeros(6))  # G == 1: no baseline signal, no NaN
    assert torch.equal(O.group_advantages(torch.ones(4), 2), torch.zeros(4))  # constant group -> 0, no NaN
    assert torch.allclose(O.adversarial_advantages(r, 3, eps=0.0), expect)


def test_shaped_rewards():
    assert torch.allclose(O.shaped_rewards(torch.tensor([1.0, 0.0]), torch.tensor([0.5, -2.0]), 0.1),
                          torch.tensor([1.05, -0.2]))
    # with group_size: the score enters as the separate term's standardised advantage (same lambda scale)
    r, s = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([3.0, 1.0, 10.0, 30.0])
    z = O.adversarial_advantages(s, 2)
    assert torch.allclose(O.shaped_rewards(r, s, 0.5, group_size=2), r + 0.5 * z)
    assert torch.allclose(z.abs(), torch.full((4,), 2 ** -0.5), atol=1e-5)  # unit std per group, any score scale


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    l2 = math.log(2)
    assert torch.allclose(O.kl_penalty(logp, ref, "k1"), torch.tensor([[l2]]))
    assert torch.allclose(O.kl_penalty(logp, ref, "k2"), torch.tensor([[0.5 * l2 ** 2]]))
    assert torch.allclose(O.kl_penalty(logp, ref, "k3"), torch.tensor([[0.5 + l2 - 1]]))  # r - log r - 1, r=1/2
    assert set(O.KL_ESTIMATORS) == {"k1", "k2", "k3"}
    # k3 is non-negative and zero at equality
    x, y = torch.randn(50), torch.randn(50)
    assert (O.kl_penalty(x, y, "k3") >= 0).all() and O.kl_penalty(x, x, "k3").abs().max() == 0


def test_clipped_loss_1x3_hand_values():
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    logp = torch.log(torch.tensor([[0.5, 1.1, 1.5]])).requires_grad_()  # ratios 0.5, 1.1, 1.5
    # A = +1, eps 0.2: min(r, clip(r)) = [0.5, 1.1, 1.2]; only the 3rd token is clipped (r > 1.2, A > 0)
    loss, d = O.clipped_pg_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.2, "token-mean")
    assert torch.allclose(loss, torch.tensor(-(0.5 + 1.1 + 1.2) / 3))
    assert torch.allclose(d["clip_frac"], torch.tensor(1 / 3))
    assert torch.allclose(d["ratio_mean"], torch.tensor(3.1 / 3))
    expect_kl = sum((r - 1) - math.log(r) for r in (0.5, 1.1, 1.5)) / 3
    assert torch.allclose(d["approx_kl"], torch.tensor(expect_kl))
    loss.backward()  # d/dlogp of -r/3 = -r/3 on unclipped tokens, 0 on the clipped one
    assert torch.allclose(logp.grad, torch.tensor([[-0.5 / 3, -1.1 / 3, 0.0]]))
    # A = -1: -min(-r, -clip(r)) = max(r, clip(r)) = [0.8, 1.1, 1.5]; only the 1st is clipped
    loss, d = O.clipped_pg_loss(logp, old, torch.tensor([-1.0]), mask, 0.2, 0.2, "token-mean")
    assert torch.allclose(loss, torch.tensor((0.8 + 1.1 + 1.5) / 3))
    assert torch.allclose(d["clip_frac"], torch.tensor(1 / 3))
    # asymmetric clip-higher: clip_high 0.6 no longer clips r = 1.5
    loss, d = O.clipped_pg_loss(logp, old, torch.tensor([[1.0, 1.0, 1.0]]), mask, 0.2, 0.6, "token-mean")
    assert torch.allclose(loss, torch.tensor(-(0.5 + 1.1 + 1.5) / 3)) and d["clip_frac"] == 0


def test_grpo_loss_adds_beta_kl():
    logp, old, ref, adv, _, mask = _batch()
    for agg in AGGS:
        pg, _ = O.clipped_pg_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, agg, max_len=MAX_LEN)
        kl = O.aggregate(O.kl_penalty(logp, ref, "k3"), mask, agg, max_len=MAX_LEN)
        loss, d = O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, beta=0.3, ref_logp=ref, agg=agg,
                              max_len=MAX_LEN)
        assert torch.allclose(loss, pg + 0.3 * kl)
        assert torch.allclose(d["kl"], O.masked_mean(O.kl_penalty(logp, ref), mask))
    loss0, _ = O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH)
    assert torch.allclose(loss0, O.clipped_pg_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH)[0])
    with pytest.raises(ValueError):
        O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, beta=0.1)


def test_sft_nll_hand_value():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1e-30]]))
    mask = torch.tensor([[1, 1, 0]])
    loss, d = O.sft_nll(logp, mask)
    assert torch.allclose(loss, torch.tensor(1.5 * math.log(2)))
    assert torch.allclose(d["nll"], torch.tensor(1.5 * math.log(2)))


def test_aggregation_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert torch.allclose(O.aggregate(x, m, "token-mean"), torch.tensor(10 / 4))
    assert torch.allclose(O.aggregate(x, m, "seq-mean-token-mean"), torch.tensor((2.0 + 4.0) / 2))
    assert torch.allclose(O.aggregate(x, m, "seq-mean-token-sum-norm", max_len=5), torch.tensor(10 / (2 * 5)))
    assert torch.allclose(O.aggregate(x, m, "token-mean", normaliser=20), torch.tensor(0.5))
    with pytest.raises(ValueError):
        O.aggregate(x, m, "seq-mean-token-sum-norm")
    with pytest.raises(KeyError):
        O.aggregate(x, m, "nope")
    assert set(O.AGGREGATIONS) == set(AGGS)
    assert O.masked_mean(x, torch.zeros_like(m)) == 0  # empty mask: 0, not NaN


def test_chord_mu_schedule():
    kw = dict(total_steps=110, mu_peak=1.0, mu_valley=0.1, warmup_steps=10)
    assert chord_mu(0, **kw) == 0.0
    assert math.isclose(chord_mu(5, **kw), 0.5)  # half-way through warmup
    assert math.isclose(chord_mu(10, **kw), 1.0)  # peak
    assert math.isclose(chord_mu(60, **kw), 0.55)  # cosine midpoint = (peak + valley) / 2
    assert math.isclose(chord_mu(110, **kw), 0.1)  # end
    assert math.isclose(chord_mu(500, **kw), 0.1)  # held after the end
    assert math.isclose(chord_mu(0, 10, 0.8, 0.0, 0), 0.8)  # no warmup
    mus = [chord_mu(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(mus, mus[1:]))  # monotone decay


def test_step_objective_is_the_weighted_sum_of_the_terms():
    """loss = w_rl * GRPO + w_adv * ADV + w_sft * SFT, bit for bit (same operations in the same order), and
    so are the gradients; the diagnostics are the terms' own."""
    logp, old, ref, adv, scores, mask = _batch()
    sft_lp, sft_mask = _batch(seed=1)[0], _batch(seed=1)[5].roll(1, dims=0)
    kw = dict(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, agg="seq-mean-token-sum-norm", max_len=MAX_LEN)
    a, b = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    sa, sb = sft_lp.clone().requires_grad_(), sft_lp.clone().requires_grad_()
    loss, d = O.step_objective(WEIGHTS, logp=a, old_logp=old, adv_rl=adv, adv_adv=scores, mask=mask, ref_logp=ref,
                               sft_logp=sa, sft_mask=sft_mask, beta=0.1, kl_kind="k2", normaliser=5.0,
                               sft_normaliser=4.0, **kw)
    pg = dict(agg=kw["agg"], normaliser=5.0, max_len=MAX_LEN)
    l_rl, d_rl = O.grpo_loss(b, old, adv, mask, CLIP_LOW, CLIP_HIGH, 0.1, ref, "k2", **pg)
    l_adv, d_adv = O.clipped_pg_loss(b, old, scores, mask, CLIP_LOW, CLIP_HIGH, **pg)
    l_sft, _ = O.sft_nll(sb, sft_mask, kw["agg"], 4.0, MAX_LEN)
    hand = torch.zeros(()) + WEIGHTS["rl"] * l_rl + WEIGHTS["adv"] * l_adv + WEIGHTS["sft"] * l_sft
    assert torch.equal(loss, hand)
    loss.backward()
    hand.backward()
    assert torch.equal(a.grad, b.grad) and torch.equal(sa.grad, sb.grad) and a.grad.abs().sum() > 0
    assert d == {"loss/grpo": l_rl.detach(), "train/clip_frac": d_rl["clip_frac"], "train/kl": d_rl["kl"],
                 "loss/adv": l_adv.detach(), "adv/clip_frac": d_adv["clip_frac"],
                 "train/ratio_mean": d_adv["ratio_mean"], "train/approx_kl": d_adv["approx_kl"],
                 "loss/sft": l_sft.detach()}
    assert torch.equal(d_rl["ratio_mean"], d_adv["ratio_mean"]) and d_rl["clip_frac"] != d_adv["clip_frac"]
    assert all(not v.requires_grad and v.dtype == torch.float32 and v.dim() == 0 for v in d.values())


def test_step_objective_skips_zero_weights_and_sft_alone_is_the_weighted_nll():
    logp, old, ref, adv, scores, mask = _batch()
    kw = dict(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, normaliser=10.0, sft_normaliser=7.0)
    only_adv = {"sft": 0.0, "rl": 0.0, "adv": 0.5}  # a_sft's rollout micro-batches
    loss, d = O.step_objective(only_adv, logp=logp, old_logp=old, adv_rl=adv, adv_adv=scores, mask=mask, **kw)
    assert torch.equal(loss, torch.zeros(()) + 0.5 * O.clipped_pg_loss(logp, old, scores, mask, CLIP_LOW, CLIP_HIGH,
                                                                        normaliser=10.0)[0])
    assert set(d) == {"loss/adv", "adv/clip_frac", "train/ratio_mean", "train/approx_kl"}
    loss, d = O.step_objective(WEIGHTS, sft_logp=logp, sft_mask=mask, **kw)  # a demonstrations micro-batch
    assert torch.equal(loss, WEIGHTS["sft"] * O.sft_nll(logp, mask, normaliser=7.0)[0]) and set(d) == {"loss/sft"}
    loss, d = O.step_objective({"sft": 0.0, "rl": 0.0, "adv": 0.0}, logp=logp, old_logp=old, adv_rl=adv,
                               adv_adv=scores, mask=mask, sft_logp=logp, sft_mask=mask, **kw)
    assert loss == 0 and d == {}


def test_step_objective_diagnostics_hand_values():
    mask = torch.ones(1, 4)
    kw = dict(adv_rl=torch.tensor([1.0]), adv_adv=torch.tensor([-1.0]), mask=mask, clip_low=0.2, clip_high=0.2)
    w = {"sft": 0.0, "rl": 1.0, "adv": 1.0}
    # on-policy (ppo_epochs=1: old = logp): ratio 1, no KL, nothing clipped
    logp = -torch.rand(1, 4)
    _, d = O.step_objective(w, logp=logp, old_logp=logp, **kw)
    assert d["train/ratio_mean"] == 1 and d["train/approx_kl"] == 0
    assert d["train/clip_frac"] == 0 and d["adv/clip_frac"] == 0
    # ratios 0.5, 0.7, 1.1, 1.5 (a later PPO epoch): GRPO (A = +1) clips r > 1.2, ADV (A = -1) clips r < 0.8
    r = torch.tensor([[0.5, 0.7, 1.1, 1.5]])
    old = -torch.rand(1, 4)
    _, d = O.step_objective(w, logp=old + torch.log(r), old_logp=old, **kw)
    assert math.isclose(d["train/clip_frac"].item(), 1 / 4) and math.isclose(d["adv/clip_frac"].item(), 2 / 4)
    assert math.isclose(d["train/ratio_mean"].item(), 3.8 / 4, rel_tol=1e-6)
    k3 = sum((x - 1) - math.log(x) for x in (0.5, 0.7, 1.1, 1.5)) / 4  # KL(old || new) estimate
    assert math.isclose(d["train/approx_kl"].item(), k3, rel_tol=1e-5)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("garbage", [1e4, -1e4, float("-inf")])  # -inf: e.g. padding after a -inf logit mask
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", LOSSES)
def test_masked_positions_never_matter(agg, name, garbage):
    logp, old, ref, adv, scores, mask = _batch()
    fn = _losses(agg)[name]
    pad = mask == 0
    a = logp.clone().requires_grad_()
    loss_a, _ = fn(a, old, ref, adv, scores, mask)
    loss_a.backward()
    # huge garbage on masked positions of every per-token input (exp(1e4) would be inf if it leaked,
    # and 0 * inf = NaN if masking were done by multiplication)
    b = torch.where(pad, torch.full_like(logp, garbage), logp).requires_grad_()
    old_g = torch.where(pad, torch.full_like(old, -garbage), old)
    ref_g = torch.where(pad, torch.full_like(ref, 3 * garbage), ref)
    loss_b, diag = fn(b, old_g, ref_g, adv, scores, mask)
    loss_b.backward()
    assert torch.isfinite(loss_b) and all(torch.isfinite(v) for v in diag.values())
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(a.grad[~pad], b.grad[~pad])
    assert torch.equal(b.grad[pad], torch.zeros_like(b.grad[pad]))
    assert a.grad.abs().sum() > 0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("splits", [[2, 4], [2, 2, 2]])
def test_microbatch_accumulation_equals_full_batch(agg, name, splits):
    logp, old, ref, adv, scores, mask = _batch()
    full = logp.clone().requires_grad_()
    loss_full, _ = _losses(agg)[name](full, old, ref, adv, scores, mask)
    loss_full.backward()

    norm = mask.sum() if agg == "token-mean" else mask.shape[0]  # global tokens / global sequences
    fn = _losses(agg, normaliser=norm)[name]
    acc = logp.clone().requires_grad_()
    total, start = 0.0, 0
    for n in splits:
        sl = slice(start, start + n)
        width = int(mask[sl].sum(-1).max())  # each micro-batch padded only to its own longest response
        micro = [t[sl, :width] for t in (acc, old, ref)] + [adv[sl], scores[sl], mask[sl, :width]]
        loss, _ = fn(*micro)
        loss.backward()
        total, start = total + loss.detach(), start + n
    assert torch.allclose(total, loss_full.detach(), atol=1e-6)
    assert torch.allclose(acc.grad, full.grad, atol=1e-7)


def test_without_global_normaliser_accumulation_is_wrong():
    """Guards the accumulation test against vacuity: local normalisers give a different (biased) loss."""
    logp, old, ref, adv, scores, mask = _batch()
    full, _ = O.sft_nll(logp, mask)
    micro = sum(O.sft_nll(logp[s], mask[s])[0] for s in (slice(0, 2), slice(2, 6))) / 2
    assert not torch.allclose(micro, full)


def test_loss_is_sensitive_to_mask():
    """A swapped / shifted mask must change the loss, so the masking tests above are not vacuous."""
    logp, old, ref, adv, scores, mask = _batch()
    for agg in AGGS:
        for fn in _losses(agg).values():
            l1, _ = fn(logp, old, ref, adv, scores, mask)
            l2, _ = fn(logp, old, ref, adv, scores, 1 - mask)
            l3, _ = fn(logp, old, ref, adv, scores, mask.roll(1, dims=1))
            assert not torch.allclose(l1, l2) and not torch.allclose(l1, l3)


# ----------------------------------------------------------------------------- equality with TRL 1.16


@pytest.fixture(scope="module")
def trl_grpo():
    grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")
    from trl.trainer.utils import nanstd
    return grpo_trainer.GRPOTrainer, nanstd


def _trl_loss(GRPOTrainer, loss_type, logp, old, ref, adv, mask, beta, max_len, num_items=None, ga_steps=1,
              is_ratio=None):
    """Run TRL's real ``GRPOTrainer._compute_loss`` on a stub ``self`` whose forward returns ``logp``
    (``is_ratio``: the importance-sampling ratio of its vLLM correction, (B, T); None: off)."""
    ident = lambda x, **_: x  # single process: gather/reduce are identities
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, aux_loss_enabled=False, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type,
        epsilon_low=CLIP_LOW, epsilon_high=CLIP_HIGH, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=ga_steps,
        max_completion_length=max_len, _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=ga_steps),
        accelerator=SimpleNamespace(num_processes=1, gather=ident, reduce=ident, gather_for_metrics=ident),
    )
    B, T = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items)),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    return loss, stub._metrics["train"]


# TRL loss_type -> (our agg, normaliser): "dapo" = token-mean over the global batch (num_items_in_batch),
# "bnpo" = token-mean over the local micro-batch, "grpo" = seq-mean-token-mean,
# "dr_grpo" = seq-mean-token-sum-norm with max_len = max_completion_length.
TRL_MAP = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean",
           "dr_grpo": "seq-mean-token-sum-norm"}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", list(TRL_MAP))
def test_grpo_loss_matches_trl(trl_grpo, loss_type, beta):
    GRPOTrainer, _ = trl_grpo
    logp, old, ref, adv, _, mask = _batch()
    a = logp.clone().requires_grad_()
    trl_loss, metrics = _trl_loss(GRPOTrainer, loss_type, a, old, ref, adv, mask, beta, MAX_LEN)
    trl_loss.backward()
    b = logp.clone().requires_grad_()
    ours, d = O.grpo_loss(b, old, adv, mask, CLIP_LOW, CLIP_HIGH, beta=beta, ref_logp=ref, kl_kind="k3",
                          agg=TRL_MAP[loss_type], max_len=MAX_LEN)
    ours.backward()
    assert torch.allclose(ours, trl_loss, atol=1e-6)
    assert torch.allclose(b.grad, a.grad, atol=1e-7)
    assert math.isclose(d["clip_frac"].item(), metrics["clip_ratio/region_mean"][-1], abs_tol=1e-6)
    assert d["clip_frac"] > 0  # the batch really exercises clipping
    if beta:
        assert math.isclose(d["kl"].item(), metrics["kl"][-1], rel_tol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo"])
def test_importance_weighted_grpo_loss_matches_trl(trl_grpo, loss_type, beta):
    """TRL's vllm_importance_sampling_correction (token_truncate) given our capped weights == our
    token_weights: the same tokens weighted, the KL term not."""
    from uniapl.objectives import importance_weights
    GRPOTrainer, _ = trl_grpo
    logp, old, ref, adv, _, mask = _batch()
    sampler = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(5))
    w, d = importance_weights(old, sampler, mask, cap=1.5)
    assert 0 < d["train/is_capped_frac"] < 1
    a = logp.clone().requires_grad_()
    trl_loss, _ = _trl_loss(GRPOTrainer, loss_type, a, old, ref, adv, mask, beta, MAX_LEN, is_ratio=w)
    trl_loss.backward()
    b = logp.clone().requires_grad_()
    ours, _ = O.grpo_loss(b, old, adv, mask, CLIP_LOW, CLIP_HIGH, beta=beta, ref_logp=ref, agg=TRL_MAP[loss_type],
                          max_len=MAX_LEN, token_weights=w)
    ours.backward()
    assert torch.allclose(ours, trl_loss, atol=1e-6) and torch.allclose(b.grad, a.grad, atol=1e-7)
    assert not torch.allclose(ours, O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, beta=beta, ref_logp=ref,
                                                agg=TRL_MAP[loss_type], max_len=MAX_LEN)[0])


def test_dapo_accumulation_matches_trl(trl_grpo):
    """TRL "dapo" with 2 accumulation steps (steps_per_generation=2) == our token-mean, global normaliser."""
    GRPOTrainer, _ = trl_grpo
    logp, old, ref, adv, _, mask = _batch()
    n_tok = mask.sum()
    trl_total = sum(
        _trl_loss(GRPOTrainer, "dapo", logp[s], old[s], ref[s], adv[s], mask[s], 0.04, MAX_LEN, n_tok, 2)[0]
        for s in (slice(0, 2), slice(2, 6)))
    ours, _ = O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, beta=0.04, ref_logp=ref)
    assert torch.allclose(ours, trl_total, atol=1e-6)


def test_group_advantages_match_trl(trl_grpo):
    _, nanstd = trl_grpo
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 2.0, 2.0, 2.0, -1.0, 3.0, 0.0, 0.2])
    G = 4
    # transcribed from trl 1.16.0 trl/trainer/grpo_trainer.py L2765-2787 (sum_then_normalize, scale_rewards="group")
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    std_rewards = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    trl_adv = (rewards - mean_grouped_rewards) / (std_rewards + 1e-4)
    trl_adv_none = rewards - mean_grouped_rewards  # scale_rewards="none"
    assert torch.allclose(O.group_advantages(rewards, G, eps=1e-4), trl_adv, atol=1e-6)
    assert torch.allclose(O.group_advantages(rewards, G, scale_std=False), trl_adv_none)
    assert torch.allclose(std_rewards[::G], rewards.view(-1, G).std(dim=1))  # TRL's std is the unbiased one


# ----------------------------------------------------------------------------- importance-sampling correction


def test_token_weights_multiply_the_token_losses_hand_values():
    old, mask = torch.zeros(1, 3), torch.ones(1, 3)
    logp = torch.log(torch.tensor([[0.5, 1.1, 1.5]])).requires_grad_()  # ratios 0.5, 1.1, 1.5; A = +1, eps 0.2
    w = torch.tensor([[2.0, 0.5, 1.0]])
    loss, d = O.clipped_pg_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.2, "token-mean", token_weights=w)
    assert torch.allclose(loss, torch.tensor(-(2.0 * 0.5 + 0.5 * 1.1 + 1.0 * 1.2) / 3))
    assert torch.allclose(d["clip_frac"], torch.tensor(1 / 3))
    assert torch.allclose(d["ratio_mean"], torch.tensor(3.1 / 3))
    loss.backward()  # d/dlogp of -w*r/3 on unclipped tokens; the weights themselves get no gradient
    assert torch.allclose(logp.grad, torch.tensor([[-2.0 * 0.5 / 3, -0.5 * 1.1 / 3, 0.0]]))
    wg = w.clone().requires_grad_()
    loss, _ = O.clipped_pg_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.2, "token-mean", token_weights=wg)
    loss.backward()
    assert wg.grad is None  # detached


def test_token_weights_touch_only_the_pg_terms_of_grpo():
    logp, old, ref, adv, scores, mask = _batch()
    w = torch.full_like(logp, 0.5)
    kw = dict(beta=0.1, ref_logp=ref, normaliser=10.0)
    l1, d1 = O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, token_weights=w, **kw)
    pg, _ = O.clipped_pg_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, normaliser=10.0)
    l0, _ = O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, **kw)
    assert torch.allclose(l1, l0 - 0.5 * pg)  # half the surrogate, the whole KL term
    assert torch.equal(d1["kl"], O.grpo_loss(logp, old, adv, mask, CLIP_LOW, CLIP_HIGH, **kw)[1]["kl"])


@pytest.mark.parametrize("agg", AGGS)
def test_token_weights_of_ones_equal_none_bitwise(agg):
    logp, old, ref, adv, scores, mask = _batch()
    ones = torch.ones_like(logp)
    kw = dict(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, beta=0.1, agg=agg, normaliser=7.0, sft_normaliser=5.0,
              max_len=MAX_LEN)
    out = []
    for tw in (None, ones):
        a = logp.clone().requires_grad_()
        extra = {} if tw is None else {"token_weights": tw}
        loss, d = O.step_objective(WEIGHTS, logp=a, old_logp=old, adv_rl=adv, adv_adv=scores, mask=mask,
                                   ref_logp=ref, sft_logp=a, sft_mask=mask, **kw, **extra)
        loss.backward()
        out.append((loss.detach(), d, a.grad))
    (l0, d0, g0), (l1, d1, g1) = out
    assert torch.equal(l0, l1) and torch.equal(g0, g1) and d0.keys() == d1.keys()
    assert all(torch.equal(d0[k], d1[k]) for k in d0)


def test_step_objective_weights_both_pg_terms():
    logp, old, ref, adv, scores, mask = _batch()
    w = torch.rand(logp.shape, generator=torch.Generator().manual_seed(3)) * 2
    kw = dict(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, normaliser=10.0)
    loss, _ = O.step_objective({"sft": 0.0, "rl": 1.0, "adv": 0.3}, logp=logp, old_logp=old, adv_rl=adv,
                               adv_adv=scores, mask=mask, token_weights=w, **kw)
    l_rl, _ = O.grpo_loss(logp, old, adv, mask, token_weights=w, **kw)
    l_adv, _ = O.clipped_pg_loss(logp, old, scores, mask, token_weights=w, **kw)
    assert torch.equal(loss, torch.zeros(()) + 1.0 * l_rl + 0.3 * l_adv)
    assert not torch.allclose(l_rl, O.grpo_loss(logp, old, adv, mask, **kw)[0])


def test_importance_weights_cap_and_diagnostics():
    from uniapl.objectives import importance_weights
    old = torch.log(torch.tensor([[0.5, 0.5, 0.9, 0.2]]))
    sampler = torch.log(torch.tensor([[0.25, 0.5, 0.3, float("nan")]]))  # ratios 2, 1, 3; the 4th: none
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    w, d = importance_weights(old, sampler, mask, cap=2.5)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 2.5, 1.0]]))
    assert math.isclose(d["train/is_ratio_mean"].item(), (2 + 1 + 3) / 3, rel_tol=1e-6)
    assert math.isclose(d["train/is_capped_frac"].item(), 1 / 3, rel_tol=1e-6)
    w, d = importance_weights(old, sampler, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 1.0, 1.0, 1.0]]))  # masked: 1
    assert math.isclose(d["train/is_capped_frac"].item(), 1 / 2)
    w, d = importance_weights(old, sampler, mask, cap=None)  # off: weights 1, the ratio still measured
    assert torch.equal(w, torch.ones(1, 4)) and d["train/is_capped_frac"] == 0
    assert math.isclose(d["train/is_ratio_mean"].item(), 2.0, rel_tol=1e-6)


def test_sampler_logprobs_align_with_the_packed_response_positions():
    from uniapl.models import pack
    from uniapl.models import sampler_logprobs
    EOT = 9
    prompts = [[1, 2, 3], [4], [5, 6]]
    resp = [[7, 8, EOT], [7, 7, 7, 7], [EOT]]  # ends with the end-of-turn token; cut at the cap; only EOT
    lps = [torch.tensor([-0.1, -0.2, -0.3]), torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([-0.5])]
    ids, attn, lm = pack(prompts, resp, 0)
    got = sampler_logprobs(lps, lm)
    assert got.shape == lm.shape
    for b, (p, r) in enumerate(zip(prompts, resp)):
        # position t of the packed row scores token t (sequence_logprobs' convention): the response's tokens
        assert torch.equal(ids[b, len(p): len(p) + len(r)], torch.tensor(r))
        assert torch.equal(got[b, len(p): len(p) + len(r)], lps[b])
        assert got[b].count_nonzero() == len(r)
    empty = sampler_logprobs([lps[0], lps[1], torch.zeros(0)], lm)  # an empty response packed as [EOT]
    assert torch.isnan(empty[2, 2]) and torch.equal(empty[:2], got[:2])
    with pytest.raises(ValueError, match="row 0: 2 sampler log-probs for 3 response tokens"):
        sampler_logprobs([lps[0][:2], lps[1], lps[2]], lm)
