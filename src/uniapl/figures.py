"""Figures of the pipeline. Each ``plot_<name>(data, out_dir, data_dir)`` writes ``<name>.png`` and
``<name>.pdf`` to ``out_dir`` and the plotted numbers to ``<data_dir>/<name>.json`` (atomically), so a
DVC stage can regenerate one figure. ``*_data`` functions read what a figure needs from the results.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from uniapl import analysis as A  # noqa: E402
from uniapl.io import atomic_path, write_json  # noqa: E402

FIGURES = ["main_results", "length_distribution", "logp_distribution", "lambda_adv_sweep", "training_curves"]
DIST_METHODS = ["base", "sft", "grpo", "sft->grpo", "uniapl"]
CURVE_METRICS = ["reward_mean", "adv_score_mean"]


def _save(fig, name: str, out_dir, data, data_dir) -> list[Path]:
    fig.tight_layout()  # stacked panels: keep titles clear of the x labels above them
    out = []
    for ext in ("png", "pdf"):
        path = Path(out_dir) / f"{name}.{ext}"
        # No creation date in the PDF (PNG has none): the same results give byte-identical figures.
        meta = {"CreationDate": None} if ext == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        out.append(path)
    plt.close(fig)
    write_json(Path(data_dir) / f"{name}.json", data)
    return out


def _empty(ax, text="not run"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


# ------------------------------------------------------------------------------------- loaders
def length_data(results_dir, student: str = "student-s", methods=DIST_METHODS, runs: set[str] | None = None) -> dict:
    """Pooled greedy in-domain response lengths (tokens) per method and of the teacher (``runs``: see
    ``analysis.declared_runs``)."""
    out = {"student": student, "teacher": A.read_lengths(results_dir, "teacher"), "methods": {}}
    for m in methods:
        vals = [A.read_lengths(results_dir, n) for n in A.run_models(results_dir, student, m, runs).values()]
        vals = [x for v in vals if v for x in v]
        if vals:
            out["methods"][m] = vals
    return out


def logp_data(results_dir, student: str = "student-s", methods=DIST_METHODS, runs: set[str] | None = None) -> dict:
    """Teacher-scored and self-scored mean token log-probs per method (pooled seeds), and the teacher's own."""
    out = {"student": student, "teacher": A.read_logp(results_dir, "teacher"), "teacher_scored": {}, "self_scored": {}}
    for m in methods:
        for key in ("teacher_scored", "self_scored"):
            vals = [A.read_logp(results_dir, n, key) for n in A.run_models(results_dir, student, m, runs).values()]
            vals = [x for v in vals if v for x in v]
            if vals:
                out[key][m] = vals
    return out


def curves_data(runs_dir, students=A.STUDENTS, methods=("grpo", "sft->grpo", "a_sft->a_grpo", "chord", "a_chord", "uniapl"),
                metrics=CURVE_METRICS, runs: set[str] | None = None) -> dict:
    """``{student: {method: {metric: {step, mean, n}}}}``: DVCLive train curves averaged over seeds per step.

    ``runs``: only these run names (``runs/<student>/<slug>/seed<k>``, see ``analysis.declared_runs``).

    Missing TSV files are skipped (a method without a given curve simply lacks that entry).
    """
    out = {}
    for s in students:
        out[s] = {}
        for m in methods:
            seeds = sorted(d for d in Path(runs_dir, s, A.method_slug(m)).glob("seed*")
                           if runs is None or f"runs/{s}/{A.method_slug(m)}/{d.name}" in runs)
            for k in metrics:
                by_step = {}
                for d in seeds:
                    f = d / "dvclive" / "plots" / "metrics" / "train" / f"{k}.tsv"
                    if f.exists():
                        for st, v in zip(*A.read_curve(f)):
                            by_step.setdefault(st, []).append(v)
                if by_step:
                    steps = sorted(by_step)
                    out[s].setdefault(m, {})[k] = {"step": steps, "mean": [float(np.mean(by_step[t])) for t in steps],
                                                   "n": [len(by_step[t]) for t in steps]}
    return out


# ------------------------------------------------------------------------------------- figures
def plot_main_results(summary: dict, out_dir="figures", data_dir="results/figures"):
    """In-domain and OOD prompt-level strict accuracy per method (mean ± std over seeds), teacher as lines."""
    students = list(summary["rows"]) or A.STUDENTS
    fig, axes = plt.subplots(1, len(students), figsize=(6.5 * len(students), 4), squeeze=False)
    data = {}
    for ax, s in zip(axes[0], students):
        rows = summary["rows"].get(s, {})
        methods = [m for m in ["base"] + A.MAIN_METHODS if m in rows]
        data[s] = {m: {sp: {k: rows[m].get(sp, {}).get(A.PRIMARY, {}).get(k) for k in ("mean", "std", "n")}
                       for sp in A.SPLITS} for m in methods + (["teacher"] if "teacher" in rows else [])}
        x = np.arange(len(methods))
        for j, (sp, color) in enumerate(zip(A.SPLITS, ["C0", "C1"])):
            mean = [100 * (data[s][m][sp]["mean"] or 0) for m in methods]
            std = [100 * (data[s][m][sp]["std"] or 0) for m in methods]
            if methods:
                ax.bar(x + (j - 0.5) * 0.4, mean, 0.4, yerr=std, capsize=2, color=color, label=sp.replace("_", "-"))
            t = data[s].get("teacher", {}).get(sp, {}).get("mean")
            if t is not None:
                ax.axhline(100 * t, color=color, ls="--", lw=1, label=f"teacher ({sp.replace('_', '-')})")
        ax.set_xticks(x, methods, rotation=45, ha="right")
        ax.set_ylabel("prompt-level strict accuracy (%)")
        ax.set_title(s)
        ax.legend(fontsize=7)
        if not methods:
            _empty(ax)
    return _save(fig, "main_results", out_dir, data, data_dir)


def _step_hists(ax, series: dict, ref, ref_label: str, xlabel: str):
    allv = [x for v in series.values() for x in v] + list(ref or [])
    if not allv:
        return _empty(ax)
    bins = np.histogram_bin_edges(allv, bins=30)
    if ref:
        ax.hist(ref, bins=bins, density=True, histtype="stepfilled", color="0.8", label=ref_label)
    for m, v in series.items():
        ax.hist(v, bins=bins, density=True, histtype="step", lw=1.3, label=m)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)


def plot_length_distribution(data: dict, out_dir="figures", data_dir="results/figures"):
    """Step histograms of greedy in-domain response length per method vs the teacher's."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _step_hists(ax, data["methods"], data.get("teacher"), "teacher", "response length (tokens)")
    ax.set_title(f"Response length, in-domain ({data.get('student', '')})")
    return _save(fig, "length_distribution", out_dir, data, data_dir)


def plot_logp_distribution(data: dict, out_dir="figures", data_dir="results/figures"):
    """Mean token log-prob of each response scored by the teacher (left) and by the model itself (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _step_hists(axes[0], data["teacher_scored"], data.get("teacher"), "teacher's own responses",
                "mean token log-prob")
    axes[0].set_title(f"Responses scored by the teacher ({data.get('student', '')})")
    _step_hists(axes[1], data["self_scored"], None, "", "mean token log-prob")
    axes[1].set_title("Responses scored by the model itself")
    return _save(fig, "logp_distribution", out_dir, data, data_dir)


def plot_lambda_adv_sweep(summary: dict, out_dir="figures", data_dir="results/figures"):
    """In-domain prompt-level strict accuracy vs lambda_adv (mean ± std over seeds), one line per student."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    data = {}
    for s, rows in summary["rows"].items():
        sw = summary.get("tests", {}).get(s, {}).get("lambda_adv_sweep")
        if sw and "methods" in sw:  # includes the uniapl row at its own lambda_adv
            pts = [(l, rows[m]["in_domain"][A.PRIMARY]) for l, m in zip(sw["lambdas"], sw["methods"])]
        else:
            pts = sorted(((A.lambda_of(m), r["in_domain"][A.PRIMARY]) for m, r in rows.items()
                          if A.lambda_of(m) is not None and "in_domain" in r), key=lambda x: x[0])
        if pts:
            data[s] = {"lambda_adv": [l for l, _ in pts], "mean": [p["mean"] for _, p in pts],
                       "std": [p["std"] for _, p in pts], "n": [p["n"] for _, p in pts]}
            ax.errorbar(data[s]["lambda_adv"], [100 * v for v in data[s]["mean"]],
                        yerr=[100 * v for v in data[s]["std"]], marker="o", capsize=3, label=s)
    if data:
        ax.set_xscale("symlog", linthresh=0.1)
        ax.legend()
    else:
        _empty(ax)
    ax.set_xlabel("lambda_adv")
    ax.set_ylabel("in-domain prompt-level strict (%)")
    ax.set_title("Adversarial weight sweep (UniAPL)")
    return _save(fig, "lambda_adv_sweep", out_dir, data, data_dir)


def plot_training_curves(data: dict, out_dir="figures", data_dir="results/figures"):
    """Verifier reward and discriminator score vs step (mean over seeds) per method, one column per student."""
    students = list(data) or A.STUDENTS
    fig, axes = plt.subplots(len(CURVE_METRICS), len(students), figsize=(6 * len(students), 3.2 * len(CURVE_METRICS)),
                             squeeze=False)
    for j, s in enumerate(students):
        for i, k in enumerate(CURVE_METRICS):
            ax, drawn = axes[i][j], False
            for m, curves in data.get(s, {}).items():
                if k in curves:
                    ax.plot(curves[k]["step"], curves[k]["mean"], lw=1.2, label=m)
                    drawn = True
            ax.set_title(f"{s}: {k} (mean over seeds)")
            ax.set_xlabel("step")
            if drawn:
                ax.legend(fontsize=7)
            else:
                _empty(ax)
    return _save(fig, "training_curves", out_dir, data, data_dir)
