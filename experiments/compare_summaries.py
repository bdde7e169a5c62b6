"""Compare two ``results/summary.json`` of the same pipeline (e.g. the same params run on two CPU kinds).

Not a DVC stage: it reads a second tree produced elsewhere. Writes a Markdown table of the primary metric
(mean ± std over seeds, in %) per student and method for both sides, the shift B - A with the Welch
p-value of B's seeds against A's, and each paper claim's verdict under A and under B; ``--json`` also
writes the full comparison.

    python experiments/compare_summaries.py results/summary.json results/crosshost/summary_avx512.json \\
        --labels "AVX2-only EPYC 2026-11-28" "AVX-512 Zen 4 EPYC 2026-11-29" --out paper/crosshost.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from uniapl import analysis as A
from uniapl.compare import compare_summaries
from uniapl.io import atomic_path, write_json


def _pm(s: dict) -> str:
    return f"{s['mean'] * 100:.1f} ± {s['std'] * 100:.1f}" if s["n"] > 1 else f"{s['mean'] * 100:.1f}"


def _p(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else f"{p:.2g}"


def to_markdown(cmp: dict, labels: tuple[str, str]) -> str:
    la, lb = labels
    lines = [f"Metric: `{cmp['metric']}` (%), mean ± std over seeds; shift = {lb} - {la}, p: Welch test of the seeds.",
             ""]
    head = ["student", "method"]
    for sp in A.SPLITS:
        head += [f"{sp} {la}", f"{sp} {lb}", f"{sp} shift (p)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in cmp["rows"]:
        cells = [r["student"], r["method"]]
        for sp in A.SPLITS:
            if sp not in r:
                cells += ["–", "–", "–"]
                continue
            c = r[sp]
            cells += [_pm(c["a"]), _pm(c["b"]), f"{c['welch']['diff'] * 100:+.1f} ({_p(c['welch']['p'])})"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"| paper claim | student | {la} | {lb} |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['student']} | {c['a']} | {c['b']} |" for c in cmp["claims"]]
    for key, lab in (("only_a", la), ("only_b", lb)):
        if cmp[key]:
            lines += ["", f"Only in {lab}: " + ", ".join(cmp[key])]
    return "\n".join(lines) + "\n"


def _load(path: str) -> dict:
    try:
        s = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read a summary: {e}") from e
    if not isinstance(s, dict) or "rows" not in s or "tests" not in s:
        raise SystemExit(f"{path}: not a summary.json (expected top-level keys 'rows' and 'tests')")
    return s


def main(a: str, b: str, labels: tuple[str, str], out: str, json_out: str | None = None) -> dict:
    cmp = compare_summaries(_load(a), _load(b))
    with atomic_path(out) as tmp:
        Path(tmp).write_text(f"Comparison of `{a}` ({labels[0]}) and `{b}` ({labels[1]}).\n\n" + to_markdown(cmp, labels))
    if json_out:
        write_json(json_out, cmp)
    return cmp


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--labels", nargs=2, default=["A", "B"])
    ap.add_argument("--out", required=True, help="Markdown output")
    ap.add_argument("--json", default=None, help="optional JSON output of the full comparison")
    args = ap.parse_args()
    main(args.a, args.b, tuple(args.labels), args.out, args.json)
