"""The paper's claims as paired comparisons of the runs on disk, the plateau of each method's runs, and the
configurations chosen on validation (stage `aggregate`; `experiments/report.py` and `readme_table.py` print them).

Kept apart from ``uniapl.analysis`` so the evaluation stages (which import analysis for its scorers) do not depend
on the verdict code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uniapl import paired
from uniapl.analysis import _read_json, discover_methods, lambda_of, run_models
from uniapl.selection import plateau

# (name, student, method a, method b, what the paper reports). Method "v2" is the staged adversarial configuration
# chosen on validation (the better of sft->a_grpo and a_sft->a_grpo); "best_lambda" / "largest_lambda" are sweep
# points (the best chosen on validation).
CLAIMS = [
    ("v1: UniAPL beats GRPO", "uniapl", "grpo", "+5.77 (0.6B), +3.75 (4B) IFEval"),
    ("v2: staged adversarial (best of SFT->A-GRPO, A-SFT->A-GRPO) beats GRPO", "v2", "grpo", "the v2 headline"),
    ("UniAPL beats SFT->GRPO", "uniapl", "sft->grpo", "single stage beats sequential"),
    ("A UniAPL student beats the teacher", "uniapl", "teacher", "4B beats the teacher"),
    ("A staged adversarial (v2) student beats the teacher", "v2", "teacher", "4B beats the teacher (v2)"),
    ("A separate adversarial loss beats reward shaping", "uniapl", "uniapl_shaped", "ablation"),
    ("A fixed discriminator beats a co-trained one", "uniapl", "uniapl_cotrained", "the paper keeps D fixed"),
    ("Too large lambda_adv hurts (best vs largest)", "best_lambda", "largest_lambda", "sweep figure"),
    ("Our GRPO matches TRL's GRPOTrainer", "grpo", "trl_grpo", "baseline check (not a paper claim)"),
]
EQUIVALENCE = {"Our GRPO matches TRL's GRPOTrainer"}
"""Claims of no difference: verdict equivalent (95% CI inside +-min_effect) / differs (CI excludes 0) / inconclusive."""
V2_CANDIDATES = ("sft->a_grpo", "a_sft->a_grpo")


def claim_evidence(c: dict) -> str:
    """One line of evidence for a claim entry of ``summary["claims"]``."""
    if c.get("effect") is None:
        return f"{c['a']} vs {c['b']}: not run"
    if c.get("w1_a") is not None:  # a distribution claim (distribution_claims)
        p = "n/a" if c["p"] is None else f"{c['p']:.3g}"
        return (f"{c['label']} W1 to the teacher: {c['a']} {c['w1_a']:.3g} vs {c['b']} {c['w1_b']:.3g} "
                f"(Welch over {c['n_seeds']} seeds, p={p})")
    lo, hi = c["ci95"]
    return (f"{c['a']} {c['mean_a'] * 100:.1f} vs {c['b']} {c['mean_b'] * 100:.1f}: effect {c['effect'] * 100:+.1f} pts, "
            f"95% CI [{lo * 100:+.1f}, {hi * 100:+.1f}], p={c['p']:.3g}, MDE {c['mde'] * 100:.1f} pts "
            f"(se from seeds {(c.get('se_seed') or 0) * 100:.1f}, from prompts {(c.get('se_prompt') or 0) * 100:.1f}; "
            f"{c['n_seeds']} seeds x {c['n_prompts']} prompts, {c['metric']}, {c['split']})")


def read_validation(results_dir, model: str) -> dict | None:
    """A trained run's validation curve (``results/eval/<model>/validation.json``), or None."""
    d = _read_json(Path(results_dir) / "eval" / model / "validation.json")
    return d if d and d.get("prompt_strict") else None


def validation_score(results_dir, student: str, method: str, runs=None) -> float | None:
    """Mean over a method's seeds of the final validation accuracy (the choice among configurations)."""
    vals = [v["prompt_strict"][-1] for m in run_models(results_dir, student, method, runs).values()
            if (v := read_validation(results_dir, m))]
    return float(np.mean(vals)) if vals else None


def plateau_of(results_dir, student: str, method: str, tol: float, runs=None) -> dict | None:
    """Per method: the plateau criterion of each seed's run (``uniapl.selection.plateau``) and whether all held."""
    per = {s: plateau(v, tol) for s, m in run_models(results_dir, student, method, runs).items()
           if (v := read_validation(results_dir, m))}
    if not per:
        return None
    known = [p["reached"] for p in per.values() if p["reached"] is not None]
    return {"reached": bool(known) and all(known) and len(known) == len(per),
            "n_reached": sum(known), "n_runs": len(per), "criterion": next(iter(per.values()))["criterion"],
            "by_seed": per}


def claim_results(results_dir, students, claims_cfg, runs=None, split_metrics=None) -> tuple[list[dict], dict]:
    """The paired claims: ``[{name, student, a, b, verdict, effect, ci95, p, mde, ...}]`` for the primary metric
    (``claims_cfg.primary_metric``) on in_domain, each with the same statistics for OOD and the other metric
    under ``secondary``; and the configurations chosen on validation (``{student: {"v2": ..., "best_lambda": ..}}``)."""
    primary = claims_cfg.primary_metric
    other = "sampled" if primary == "greedy" else "greedy"
    out, chosen = [], {}
    for st in students:
        pick = {}
        v2 = {m: validation_score(results_dir, st, m, runs) for m in V2_CANDIDATES}
        v2 = {m: v for m, v in v2.items() if v is not None}
        if v2:
            pick["v2"] = max(v2, key=v2.get)
        sweep = sorted((lambda_of(m), m) for m in discover_methods(results_dir, [st], runs) if lambda_of(m) is not None)
        if sweep:
            scores = {m: validation_score(results_dir, st, m, runs) for _, m in sweep}
            scored = [m for _, m in sweep if scores[m] is not None]
            if len(scored) >= 2:
                pick["best_lambda"] = max(scored, key=scores.get)
                pick["largest_lambda"] = sweep[-1][1]
        chosen[st] = {"v2": pick.get("v2"), "v2_validation": v2, "best_lambda": pick.get("best_lambda"),
                      "largest_lambda": pick.get("largest_lambda")}
        for name, a, b, paper in CLAIMS:
            ma, mb = pick.get(a, a), pick.get(b, b)
            entry = {"name": name, "student": st, "a": ma, "b": mb, "paper": paper, "metric": primary,
                     "split": "in_domain"}
            if ma is None or mb is None or ma == mb:
                out.append({**entry, "verdict": "not run", "effect": None, "ci95": None, "p": None, "mde": None})
                continue
            models_a, models_b = run_models(results_dir, st, ma, runs), run_models(results_dir, st, mb, runs)

            def stat(split, metric):
                if not models_a or not models_b:
                    return None
                return paired.compare_models(results_dir, models_a, models_b, split, metric)

            r = stat("in_domain", primary)
            judge = paired.equivalence_verdict if name in EQUIVALENCE else paired.verdict
            entry.update({"verdict": judge(r, claims_cfg.min_effect), "min_effect": claims_cfg.min_effect,
                          **({k: r.get(k) for k in ("effect", "ci95", "p", "mde", "se", "se_seed", "se_prompt", "df",
                                                    "n_seeds", "n_prompts", "mean_a", "mean_b")} if r else
                             {"effect": None, "ci95": None, "p": None, "mde": None})})
            entry["secondary"] = {}
            for split, metric in (("ood", primary), ("in_domain", other), ("ood", other)):
                s2 = stat(split, metric)
                if s2:
                    entry["secondary"][f"{split}/{metric}"] = {
                        "verdict": judge(s2, claims_cfg.min_effect),
                        **{k: s2[k] for k in ("effect", "ci95", "p", "mde", "n_seeds", "n_prompts")}}
            out.append(entry)
    return out, chosen


def distribution_claims(summary: dict) -> list[dict]:
    """"UniAPL's lengths and log-probs are closer to the teacher's than GRPO's": per student and distribution,
    the per-seed Wasserstein-1 distances to the teacher's (``summary["tests"]``), Welch's t over seeds. Effect =
    GRPO's mean distance minus UniAPL's (positive: UniAPL closer); replicated when positive with p < 0.05,
    reversed when negative with p < 0.05, else inconclusive (no smallest effect of interest is defined for a
    distance)."""
    out = []
    for st, t in summary.get("tests", {}).items():
        for key, label in (("length_w1", "length (tokens)"), ("logp_w1", "teacher-scored log-prob (nats/token)")):
            c = t.get("uniapl_vs_grpo", {}).get(key)
            entry = {"name": "UniAPL's lengths and log-probs are closer to the teacher's than GRPO's", "student": st,
                     "a": "uniapl", "b": "grpo", "metric": key, "split": "in_domain", "paper": "length/log-prob figures"}
            if not c:
                out.append({**entry, "verdict": "not run", "effect": None, "ci95": None, "p": None, "mde": None})
                continue
            w = c["welch"]
            eff = None if w["diff"] is None else -w["diff"]
            p = w["p"]
            v = ("inconclusive" if p is None or eff is None or p >= 0.05 else
                 "replicated" if eff > 0 else "reversed")
            out.append({**entry, "verdict": v, "effect": eff, "ci95": None, "p": p, "mde": None,
                        "w1_a": float(np.mean(c["a"])), "w1_b": float(np.mean(c["b"])), "label": label,
                        "n_seeds": len(c["a"])})
    return out
