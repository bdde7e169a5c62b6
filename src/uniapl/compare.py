"""Two ``summary.json`` trees of the same pipeline side by side (e.g. the same params on two CPU kinds).

Kept out of ``uniapl.analysis`` on purpose: no DVC stage imports this module, so changing it never
invalidates a recorded run. The CLI is ``experiments/compare_summaries.py``.
"""

from __future__ import annotations

from uniapl import analysis as A


def compare_summaries(a: dict, b: dict, splits=A.SPLITS, metric: str = A.PRIMARY) -> dict:
    """Two ``summary.json`` trees of the same pipeline (say, two CPU kinds) side by side.

    ``rows``: one entry per (student, method) present in both, with each side's summary of ``metric``
    per split and a Welch test of the seeds of ``b`` against those of ``a`` (``diff = mean_b - mean_a``),
    so a shift between the two can be read against the seed-to-seed spread. ``claims``: each paper
    claim's verdict under ``a`` and under ``b``. Methods present on one side only are listed in
    ``only_a`` / ``only_b``.
    """
    rows, only_a, only_b = [], [], []
    for student in a["rows"]:
        ra, rb = a["rows"][student], b["rows"].get(student, {})
        only_a += [f"{student}/{m}" for m in ra if m not in rb]
        only_b += [f"{student}/{m}" for m in rb if m not in ra]
        for method in ra:
            if method not in rb:
                continue
            entry = {"student": student, "method": method}
            for sp in splits:
                sa, sb = ra[method].get(sp, {}).get(metric), rb[method].get(sp, {}).get(metric)
                if sa is None or sb is None:
                    continue
                entry[sp] = {"a": sa, "b": sb, "welch": A.welch_test(sb["values"], sa["values"])}
            rows.append(entry)
    only_b += [f"{s}/{m}" for s in b["rows"] if s not in a["rows"] for m in b["rows"][s]]
    cb = {(c["name"], c["student"]): c["verdict"] for c in b.get("claims", [])}
    return {"metric": metric, "rows": rows, "only_a": only_a, "only_b": only_b,
            "claims": [{"claim": c["name"], "student": c["student"], "a": c["verdict"],
                        "b": cb.get((c["name"], c["student"]), "not run")} for c in a.get("claims", [])]}
