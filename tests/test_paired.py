"""Paired prompt-level comparisons: effect, CI coverage with few seeds, pairing, and the verdicts."""

import json

import numpy as np
import pytest

from uniapl import paired


def _sim(rng, n_seeds, n_prompts, p_a, p_b, prompt_sd=1.0, seed_sd=0.05):
    """Pass matrices from a logistic model: prompt difficulty shared by both methods, run effects per seed."""
    diff = rng.normal(0, prompt_sd, n_prompts)
    la, lb = np.log(p_a / (1 - p_a)), np.log(p_b / (1 - p_b))
    sa, sb = rng.normal(0, seed_sd, (n_seeds, 1)), rng.normal(0, seed_sd, (n_seeds, 1))
    a = rng.random((n_seeds, n_prompts)) < 1 / (1 + np.exp(-(la + diff + sa)))
    b = rng.random((n_seeds, n_prompts)) < 1 / (1 + np.exp(-(lb + diff + sb)))
    return a.astype(float), b.astype(float)


def test_effect_is_mean_difference_and_identical_methods_give_zero():
    rng = np.random.default_rng(0)
    a, b = _sim(rng, 4, 300, 0.6, 0.5)
    r = paired.paired_effect(a, b)
    assert r["effect"] == pytest.approx(a.mean() - b.mean())
    assert r["ci95"][0] < r["effect"] < r["ci95"][1]
    assert r["se"] ** 2 == pytest.approx(r["se_seed"] ** 2 + r["se_prompt"] ** 2)
    assert r["mde"] > 2.8 * r["se"]  # t quantiles exceed the normal's 1.96 + 0.84
    same = paired.paired_effect(a, a)
    assert same["effect"] == 0 and same["se"] == 0 and same["p"] == 1.0
    assert paired.verdict(same, 0.03) == "not replicated"  # CI [0, 0] excludes a 3-point effect


@pytest.mark.parametrize("n_seeds,seed_sd", [(4, 0.3), (3, 0.05), (8, 0.3)])
def test_ci_covers_the_true_difference(n_seeds, seed_sd):
    """Nominal 95% coverage of the population difference (prompts and runs redrawn), also with 3-4 seeds whose
    run-to-run spread dominates: the seed term must widen the interval."""
    z = np.random.default_rng(99).normal(0, 1.5, 2_000_000)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    true = float(np.mean(sig(np.log(0.55 / 0.45) + z) - sig(z)))
    rng = np.random.default_rng(n_seeds)
    hits = 0
    for _ in range(200):
        r = paired.paired_effect(*_sim(rng, n_seeds, 400, 0.55, 0.5, 1.5, seed_sd))
        hits += r["ci95"][0] <= true <= r["ci95"][1]
    assert hits >= 180, hits  # >= 90% of 200 (nominal 95%)


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(1)
    w_p, w_u = [], []
    for _ in range(40):
        a, b = _sim(rng, 4, 400, 0.55, 0.5, prompt_sd=1.5, seed_sd=0.02)
        r = paired.paired_effect(a, b)
        u = paired.paired_effect(a, b[:, rng.permutation(b.shape[1])])  # unpaired: difficulty no longer cancels
        w_p.append(r["ci95"][1] - r["ci95"][0])
        w_u.append(u["ci95"][1] - u["ci95"][0])
    assert np.mean(w_p) < 0.85 * np.mean(w_u)


def test_verdicts():
    assert paired.verdict({"effect": 0.05, "ci95": [0.01, 0.09]}, 0.03) == "replicated"
    assert paired.verdict({"effect": -0.05, "ci95": [-0.09, -0.01]}, 0.03) == "reversed"
    assert paired.verdict({"effect": 0.0, "ci95": [-0.02, 0.02]}, 0.03) == "not replicated"
    assert paired.verdict({"effect": 0.01, "ci95": [-0.03, 0.05]}, 0.03) == "inconclusive"
    assert paired.verdict(None, 0.03) == "not run"


def test_equivalence_verdicts():
    eq = paired.equivalence_verdict
    assert eq({"effect": 0.0, "ci95": [-0.02, 0.02]}, 0.03) == "equivalent"
    assert eq({"effect": 0.01, "ci95": [-0.03, 0.05]}, 0.03) == "inconclusive"  # cannot rule out 3 points
    assert eq({"effect": 0.02, "ci95": [0.005, 0.035]}, 0.03) == "differs"
    assert eq({"effect": -0.05, "ci95": [-0.09, -0.01]}, 0.03) == "differs"
    assert eq(None, 0.03) == "not run"
    assert {eq({"effect": 0.0, "ci95": c}, 0.03) for c in ([-0.02, 0.02], [-0.1, 0.1], [0.01, 0.2])} <= set(
        paired.EQUIVALENCE_VERDICTS)


def test_single_row_b_broadcasts_one_seed_has_no_seed_term_and_shapes_are_checked():
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], float)
    t = np.array([[1, 0, 0, 1]], float)
    r = paired.paired_effect(a, t)
    assert r["effect"] == pytest.approx((a - t).mean()) and r["n_seeds"] == 2 and r["seed_term_known"]
    one = paired.paired_effect(a[:1], t)
    assert not one["seed_term_known"] and one["se_seed"] == 0
    with pytest.raises(ValueError, match="same prompts"):
        paired.paired_effect(a, t[:, :3])
    with pytest.raises(ValueError, match="seed rows"):
        paired.paired_effect(a, np.ones((3, 4)))


def test_compare_models_aligns_prompts_and_seeds(tmp_path):
    def write(model, passes, keys):
        d = tmp_path / "eval" / model
        d.mkdir(parents=True)
        (d / "in_domain.jsonl").write_text("".join(json.dumps({"key": k, "pass": p, "pass_loose": p,
                                                               "sampled": [{"pass": p}, {"pass": False}]}) + "\n"
                                                   for k, p in zip(keys, passes)))
    write("a0", [1, 1, 0], ["k0", "k1", "k2"])
    write("a1", [1, 0, 1], ["k0", "k1", "k2"])
    write("b0", [0, 1, 0], ["k2", "k1", "k0"])  # another order: aligned by key
    write("b1", [0, 0, 0], ["k0", "k1", "k2"])
    r = paired.compare_models(tmp_path, {"seed0": "a0", "seed1": "a1", "seed2": "a1"}, {"seed0": "b0", "seed1": "b1"},
                              "in_domain")
    assert r["seeds"] == ["seed0", "seed1"] and r["n_prompts"] == 3
    assert r["effect"] == pytest.approx(((1 + 0 + 0) + (1 + 0 + 1)) / 6)
    s = paired.compare_models(tmp_path, {"seed0": "a0"}, {"seed0": "b0"}, "in_domain", metric="sampled")
    assert s["effect"] == pytest.approx(((0.5 - 0) + (0.5 - 0.5) + (0 - 0)) / 3)  # share of samples passing
    assert paired.compare_models(tmp_path, {"seed0": "a0"}, {"seed0": "missing"}, "in_domain") is None
