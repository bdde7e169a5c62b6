"""Stage `plot`: one figure (PNG + PDF in figures/, the plotted data in results/figures/).

    python experiments/analyze.py --figure main_results          # one figure (or: --figure all)

The distributions and curves count only the runs that dvc.yaml declares for the current params
(``uniapl.analysis.declared_runs``); the log-prob / perplexity scoring they read is written by each
run's own stage (``uniapl.evaluate.evaluate_and_score``).
"""

from __future__ import annotations

from uniapl.stage_server import delegate

if __name__ == "__main__":
    delegate()  # in `make repro`, a warm interpreter runs this stage (uniapl.stage_server); else a no-op

import argparse
import json
from pathlib import Path

from uniapl import analysis as A
from uniapl import figures as F
from uniapl.errors import UserError, run_stage
from uniapl.io import exit_fast


def make_figure(name: str, results_dir="results", runs_dir="runs", out_dir="figures", data_dir="results/figures",
                student="student-s", runs: set[str] | None = None):
    """``runs``: the run names to count (None: every run on disk)."""
    if name in ("main_results", "lambda_adv_sweep"):
        summary_path = Path(results_dir) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else \
            A.build_summary(results_dir, runs=runs)
        return getattr(F, f"plot_{name}")(summary, out_dir, data_dir)
    if name == "length_distribution":
        return F.plot_length_distribution(F.length_data(results_dir, student, runs=runs), out_dir, data_dir)
    if name == "logp_distribution":
        return F.plot_logp_distribution(F.logp_data(results_dir, student, runs=runs), out_dir, data_dir)
    if name == "training_curves":
        return F.plot_training_curves(F.curves_data(runs_dir, runs=runs), out_dir, data_dir)
    raise UserError(f"unknown figure {name!r} (--figure); choose from {F.FIGURES} or all")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--figure", default="all", help=f"one of {F.FIGURES} or all")
    ap.add_argument("--results", default="results")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="figures")
    ap.add_argument("--data-out", default="results/figures")
    ap.add_argument("--student", default="student-s", help="student of the distribution figures")
    ap.add_argument("--all-runs", action="store_true",
                    help="count every run on disk, not only those dvc.yaml declares for the current params")
    a = ap.parse_args()

    def main():
        declared = None if a.all_runs or a.figure in ("main_results", "lambda_adv_sweep") else A.declared_runs(".")
        for n in F.FIGURES if a.figure == "all" else [a.figure]:
            print(n, [str(p) for p in make_figure(n, a.results, a.runs, a.out, a.data_out, a.student, declared)])
    run_stage(main)
    exit_fast()
