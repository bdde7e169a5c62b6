"""Stage `aggregate`: every evaluation -> results/summary.json and the tables in paper/tables/.

summary.json layout::

    {"rows":  {<student>: {<method>: {<split>: {<metric>: {mean, std, ci95, n, values}},
                                      "length_w1_to_teacher": float|null,
                                      "logp_w1_to_teacher": float|null,
                                      "ppl": {mean, std, ci95, n, values}|null}}},
     "tests": {<student>: {"uniapl_vs_grpo": {...}, "uniapl_vs_sft->grpo": {...}, ...}},
     "claims": [{name, student, a, b, verdict, effect, ci95, p, mde, ..., "secondary": {...}}],
     "chosen_on_validation": {<student>: {"v2": method, "best_lambda": method, ...}},
     "selection": {<method>: {"chosen": {settings}, "candidate": id, "score": float}}}

Each trained row also has ``plateau`` (``analysis.plateau_of``: each seed's validation curve against
``claims.plateau_tol``). The claims are paired prompt-level comparisons (``uniapl.paired``).

Only the runs that dvc.yaml declares for the current params count (``analysis.declared_runs``; results
of runs a smaller ``pipeline.seeds`` or ``lambda_sweep`` dropped stay on disk, unread). Methods that
were never run are absent (and listed on stderr). Tables: main_results, ablations,
distances, each as .md and .tex (booktabs).
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import json
import logging
from pathlib import Path

from uniapl import analysis as A
from uniapl import claims as C
from uniapl.errors import run_stage
from uniapl.io import atomic_path, exit_fast, write_json

DASH = "–"


def pm(s: dict | None, scale: float = 100.0, d: int = 1) -> str:
    """``mean ± std`` (just the mean when n == 1), scaled; a dash when missing."""
    if not s or s.get("mean") is None:
        return DASH
    if s["n"] > 1:
        return f"{s['mean'] * scale:.{d}f} ± {s['std'] * scale:.{d}f}"
    return f"{s['mean'] * scale:.{d}f}"


def _get(row, split, metric):
    return row.get(split, {}).get(metric)


def _n(row) -> str:
    return str(max((_get(row, sp, A.PRIMARY) or {"n": 0})["n"] for sp in A.SPLITS))


def main_table(summary: dict):
    header = ["method", "ID prompt-strict", "OOD prompt-strict", "ID inst-strict", "OOD inst-strict",
              "ID sampled", "OOD sampled", "ID mean len", "n"]
    groups = []
    for s, rows in summary["rows"].items():
        body = []
        for m in [m for m in ["teacher", "base"] + A.MAIN_METHODS if m in rows]:
            r = rows[m]
            body.append([m, pm(_get(r, "in_domain", "prompt_strict")), pm(_get(r, "ood", "prompt_strict")),
                         pm(_get(r, "in_domain", "inst_strict")), pm(_get(r, "ood", "inst_strict")),
                         pm(_get(r, "in_domain", "prompt_strict_sampled")), pm(_get(r, "ood", "prompt_strict_sampled")),
                         pm(_get(r, "in_domain", "mean_len"), 1.0), _n(r)])
        groups.append((s, body))
    return header, groups


def _delta(rows, m, ref="uniapl") -> str:
    if m == ref or ref not in rows or "in_domain" not in rows[ref] or "in_domain" not in rows[m]:
        return DASH
    w = A.welch_test(rows[m]["in_domain"][A.PRIMARY]["values"], rows[ref]["in_domain"][A.PRIMARY]["values"])
    p = DASH if w["p"] != w["p"] else f"{w['p']:.3g}"
    return f"{w['diff'] * 100:+.1f} (p={p})"


def ablation_table(summary: dict):
    header = ["ablation", "variant", "ID prompt-strict", "OOD prompt-strict", "ID inst-strict", "n", "ID Δ vs uniapl"]
    groups = []
    for s, rows in summary["rows"].items():
        body = []
        lams = sorted((m for m in rows if A.lambda_of(m) is not None), key=A.lambda_of)
        spec = [("lambda_adv", m, f"λ_adv = {A.lambda_of(m):g}") for m in lams]
        spec += [("adv. signal", "uniapl", "separate loss (uniapl)"), ("adv. signal", "uniapl_shaped", "reward shaping"),
                 ("discriminator", "uniapl", "fixed (uniapl)"), ("discriminator", "uniapl_cotrained", "co-trained")]
        for abl, m, label in spec:
            if m in rows:
                r = rows[m]
                body.append([abl, label, pm(_get(r, "in_domain", "prompt_strict")), pm(_get(r, "ood", "prompt_strict")),
                             pm(_get(r, "in_domain", "inst_strict")), _n(r), _delta(rows, m)])
        if body:
            groups.append((s, body))
    return header, groups


def distance_table(summary: dict):
    header = ["method", "length W1 to teacher (tokens)", "log-prob W1 to teacher (nats/token)", "held-out base ppl",
              "ppl vs base student"]
    groups = []
    f = lambda x, d: DASH if x is None else f"{x:.{d}f}"  # noqa: E731
    for s, rows in summary["rows"].items():
        order = [m for m in ["teacher", "base"] + A.MAIN_METHODS if m in rows] + \
                [m for m in rows if m not in A.MAIN_METHODS + ["teacher", "base"]]
        base = (rows.get("base", {}).get("ppl") or {}).get("mean")

        def retention(m):  # general-ability retention: relative change of held-out base-corpus perplexity
            ppl = (rows[m].get("ppl") or {}).get("mean")
            return DASH if m in ("base", "teacher") or not ppl or not base else f"{(ppl / base - 1) * 100:+.1f}%"
        groups.append((s, [[m, f(rows[m]["length_w1_to_teacher"], 1), f(rows[m]["logp_w1_to_teacher"], 3),
                            pm(rows[m]["ppl"], 1.0, 2), retention(m)] for m in order]))
    return header, groups


def to_markdown(header, groups) -> str:
    out = []
    for title, body in groups:
        out += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in body] + [""]
    return "\n".join(out)


def tex_escape(s: str) -> str:
    s = s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
    return s.replace("->", r"$\to$").replace(" ± ", r" $\pm$ ").replace("λ", r"$\lambda$").replace("Δ", r"$\Delta$") \
        .replace(DASH, "--")


def to_latex(header, groups) -> str:
    out = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
           " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
    for k, (title, body) in enumerate(groups):
        if k:
            out.append(r"\midrule")
        out.append(rf"\multicolumn{{{len(header)}}}{{l}}{{\textit{{{tex_escape(title)}}}}} \\")
        out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in body]
    out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


TABLES = {"main_results": main_table, "ablations": ablation_table, "distances": distance_table}


def write_tables(summary: dict, out_dir: str | Path = "paper/tables") -> list[Path]:
    paths = []
    for name, fn in TABLES.items():
        header, groups = fn(summary)
        for ext, render in (("md", to_markdown), ("tex", to_latex)):
            p = Path(out_dir) / f"{name}.{ext}"
            with atomic_path(p) as tmp:
                tmp.write_text(render(header, groups))
            paths.append(p)
    return paths


def main(results_dir: str, out: str, tables_dir: str, students: list[str], methods: list[str] | None,
         params_path: str = "params.yaml", runs: set[str] | None = None) -> dict:
    """``runs``: count only these run names (``analysis.declared_runs``); None: every run on disk."""
    from uniapl.config import load_params, run_config
    lam = None
    if Path(params_path).exists():  # the uniapl row is the sweep's point at its own lambda_adv: the selected one
        chosen = {}               # (results/selection/uniapl.json, as train.py --selected applies it), else params'
        sel = Path(results_dir) / "selection" / "uniapl.json"
        if sel.is_file():
            chosen = json.loads(sel.read_text()).get("chosen") or {}
        lam = run_config(load_params(params_path), "uniapl", "student-s", 0, chosen).lambda_adv
    if not (Path(results_dir) / "eval").is_dir():
        from uniapl.errors import MissingPathError
        raise MissingPathError(f"{results_dir}/eval: no such directory (run the evaluation and training stages "
                               "first, `dvc repro`, or check --results)")
    summary = A.build_summary(results_dir, students, methods, uniapl_lambda=lam, runs=runs)
    from uniapl.config import ClaimsConfig
    ccfg = load_params(params_path).claims if Path(params_path).exists() else ClaimsConfig()
    for st, rows in summary["rows"].items():  # per trained row: did every seed's validation curve plateau?
        for m, row in rows.items():
            if m not in ("teacher", "base"):
                row["plateau"] = C.plateau_of(results_dir, st, m, ccfg.plateau_tol, runs)
    claims, chosen = C.claim_results(results_dir, list(summary["rows"]), ccfg, runs)
    summary["claims"], summary["chosen_on_validation"] = claims + C.distribution_claims(summary), chosen
    sel_dir = Path(results_dir) / "selection"
    summary["selection"] = {p.stem: {"chosen": d.get("chosen"), "candidate": d.get("candidate"), "score": d.get("score")}
                            for p in sorted(sel_dir.glob("*.json")) if (d := json.loads(p.read_text())).get("candidate")}
    summary = A._clean(summary)
    write_json(out, summary)
    write_tables(summary, tables_dir)
    for s, rows in summary["rows"].items():
        print(s, {m: round(r["in_domain"]["prompt_strict"]["mean"], 3) for m, r in rows.items() if "in_domain" in r})
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default="results/summary.json")
    ap.add_argument("--tables", default="paper/tables")
    ap.add_argument("--students", nargs="+", default=A.STUDENTS)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every method found under results/eval/runs")
    ap.add_argument("--all-runs", action="store_true",
                    help="count every run on disk, not only those dvc.yaml declares for the current params")
    a = ap.parse_args()
    run_stage(lambda: main(a.results, a.out, a.tables, a.students, a.methods, a.params,
                           None if a.all_runs else A.declared_runs(".")))
    exit_fast()
