"""Paired prompt-level comparisons of two methods: effect, 95% CI, p and the minimum detectable difference.

Two methods evaluated with the same seeds on the same prompts give two pass matrices ``A[seed, prompt]`` and
``B[seed, prompt]`` (0/1 for the greedy prompt-level verdict, or a per-prompt sampled pass rate). The effect is
the mean of ``D = A - B``. Its uncertainty has two sources, the seeds (training noise: another seed is another
run) and the prompts (test-set noise: another draw of prompts is another test set). A two-way random-effects
reading of D (seed, prompt and their interaction) gives, with S seeds and P prompts,

    se^2 = var_seeds(mean_p D[s, :]) / S  +  var_prompts(mean_s D[:, p]) / P

(each term also carries a share of the interaction, so the sum errs on the wide side). The 95% CI and the
two-sided p use Student's t with Welch-Satterthwaite degrees of freedom for the two terms, so 3-4 seeds get the
wide intervals they deserve (a bootstrap over 4 seeds would not). ``mde`` is the smallest true difference this
design detects with 80% power at alpha 0.05, ``(t_0.975 + t_0.80) * se``. With one seed (or a single-model
``B`` and one seed of ``A``) the seed term is unknown and left out (``seed_term_known`` false).

A verdict tells "not replicated" from "inconclusive" against the smallest effect of interest ``min_effect``
(params ``claims.min_effect``): the claim (``effect > 0``) is ``replicated`` when the CI lies above 0,
``reversed`` when it lies below 0, ``not replicated`` when it excludes ``min_effect`` and more (the data rule
out an effect that large), else ``inconclusive`` (the design cannot tell 0 from ``min_effect``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from uniapl.errors import DataError

VERDICTS = ("replicated", "reversed", "not replicated", "inconclusive", "not run")
EQUIVALENCE_VERDICTS = ("equivalent", "differs", "inconclusive", "not run")


def read_pass(results_dir: str | Path, model: str, split: str, metric: str = "greedy") -> dict[str, float] | None:
    """``{prompt key: value}`` of one evaluated model: ``greedy`` (its greedy response passes every
    instruction, strict), ``greedy_loose``, or ``sampled`` (share of its samples that pass); None if absent."""
    p = Path(results_dir) / "eval" / model / f"{split}.jsonl"
    if not p.exists():
        return None
    out = {}
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        if metric == "sampled":
            s = r.get("sampled") or []
            out[r["key"]] = float(np.mean([x["pass"] for x in s])) if s else math.nan
        else:
            field = "pass" if metric == "greedy" else "pass_loose"
            if field not in r:
                raise DataError(f"{p}:{i + 1}: no '{field}' (evaluated before per-prompt verdicts were written: "
                                "re-run its stage)")
            out[r["key"]] = float(r[field])
    return out


def pass_matrix(results_dir: str | Path, models: dict[str, str], split: str, metric: str = "greedy",
                keys: list[str] | None = None) -> tuple[list[str], list[str], np.ndarray] | None:
    """(seed labels, prompt keys, matrix[seed, prompt]) over ``models`` (``{seed label: model}``), restricted to
    the prompts every model answered (and to ``keys`` when given); None when no model has this split."""
    per = {s: read_pass(results_dir, m, split, metric) for s, m in models.items()}
    per = {s: v for s, v in per.items() if v is not None}
    if not per:
        return None
    common = set.intersection(*(set(v) for v in per.values()))
    if keys is not None:
        common &= set(keys)
    order = sorted(common)
    seeds = sorted(per, key=lambda s: int(s[4:]) if s[4:].isdigit() else s)
    return seeds, order, np.array([[per[s][k] for k in order] for s in seeds], dtype=float)


def paired_effect(a: np.ndarray, b: np.ndarray) -> dict:
    """Effect ``mean(a - b)`` with its two-way standard error, 95% CI, p and MDE (see the module docstring).

    ``a`` and ``b`` are ``[seeds, prompts]`` with the same prompt columns; their seed rows are paired (same
    count) or ``b`` has one row (a single model, e.g. the teacher), which then counts for every seed of ``a``.
    Prompts with a missing value (nan) on either side are dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"pass matrices must be [seeds, prompts] over the same prompts: {a.shape} vs {b.shape}")
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"b has {b.shape[0]} seed rows; a has {a.shape[0]} (paired) and b needs as many, or 1")
    ok = ~(np.isnan(a).any(0) | np.isnan(b).any(0))
    d = a[:, ok] - b[:, ok]  # [S, P]; a single-row b broadcasts
    n_s, n_p = d.shape
    nan = {"effect": float(d.mean()) if d.size else math.nan, "se": math.nan, "ci95": [math.nan, math.nan],
           "p": math.nan, "mde": math.nan, "df": math.nan, "n_seeds": n_s, "n_prompts": n_p, "seed_term_known": n_s > 1}
    if n_p < 2:
        return nan
    effect = float(d.mean())
    v_seed = float(d.mean(1).var(ddof=1)) / n_s if n_s > 1 else 0.0
    v_prompt = float(d.mean(0).var(ddof=1)) / n_p
    se2 = v_seed + v_prompt
    if se2 == 0:
        p = 1.0 if effect == 0 else 0.0
        return {**nan, "effect": effect, "se": 0.0, "ci95": [effect, effect], "p": p, "mde": 0.0, "df": math.inf}
    den = (v_seed ** 2 / (n_s - 1) if n_s > 1 else 0.0) + v_prompt ** 2 / (n_p - 1)
    df = se2 ** 2 / den if den > 0 else math.inf
    se = math.sqrt(se2)
    t975, t80 = float(stats.t.ppf(0.975, df)), float(stats.t.ppf(0.80, df))
    p = float(2 * stats.t.sf(abs(effect) / se, df))
    return {"effect": effect, "se": se, "ci95": [effect - t975 * se, effect + t975 * se], "p": p,
            "mde": (t975 + t80) * se, "df": df, "n_seeds": n_s, "n_prompts": n_p, "seed_term_known": n_s > 1,
            "se_seed": math.sqrt(v_seed), "se_prompt": math.sqrt(v_prompt)}


def verdict(result: dict | None, min_effect: float) -> str:
    """See the module docstring: replicated / reversed / not replicated / inconclusive (/ not run)."""
    if not result or result.get("effect") is None or math.isnan(result["effect"]):
        return "not run"
    lo, hi = result["ci95"]
    if lo is None or math.isnan(lo):
        return "inconclusive"
    if lo > 0:
        return "replicated"
    if hi < 0:
        return "reversed"
    if hi < min_effect:
        return "not replicated"
    return "inconclusive"


def equivalence_verdict(result: dict | None, min_effect: float) -> str:
    """For a claim of no difference: equivalent (95% CI inside (-min_effect, +min_effect)), differs (the CI
    excludes 0), else inconclusive (/ not run)."""
    if not result or result.get("effect") is None or math.isnan(result["effect"]):
        return "not run"
    lo, hi = result["ci95"]
    if lo is None or math.isnan(lo):
        return "inconclusive"
    if -min_effect < lo and hi < min_effect:
        return "equivalent"
    if lo > 0 or hi < 0:
        return "differs"
    return "inconclusive"


def compare_models(results_dir, models_a: dict[str, str], models_b: dict[str, str], split: str,
                   metric: str = "greedy") -> dict | None:
    """:func:`paired_effect` of two methods' runs on one split: seeds present on both sides (or a single-model
    b), prompts answered by all. None when either side is missing."""
    if len(models_b) > 1:
        common = sorted(set(models_a) & set(models_b))
        if len(common) < 1:
            return None
        models_a = {s: models_a[s] for s in common}
        models_b = {s: models_b[s] for s in common}
    ma = pass_matrix(results_dir, models_a, split, metric)
    mb = pass_matrix(results_dir, models_b, split, metric)
    if ma is None or mb is None:
        return None
    keys = sorted(set(ma[1]) & set(mb[1]))
    ia = [ma[1].index(k) for k in keys]
    ib = [mb[1].index(k) for k in keys]
    out = paired_effect(ma[2][:, ia], mb[2][:, ib])
    out["seeds"] = ma[0]
    out["mean_a"], out["mean_b"] = float(np.nanmean(ma[2][:, ia])), float(np.nanmean(mb[2][:, ib]))
    return out
