"""Stage `analyze`: figures (PNG + PDF in figures/, plotted data in results/figures/), and the
log-prob / perplexity scoring that the distance analyses read.

    python experiments/analyze.py --figure main_results          # one figure (or: --figure all)
    python experiments/analyze.py score --name runs/student-s/uniapl/seed0 \
        --model <model dir> --teacher-model <teacher dir>         # results/logp/<name>/in_domain.json
                                                                  # and results/ppl/<name>.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uniapl import analysis as A
from uniapl import figures as F
from uniapl.io import read_jsonl, write_json


def make_figure(name: str, results_dir="results", runs_dir="runs", out_dir="figures", data_dir="results/figures",
                student="student-s"):
    if name in ("main_results", "lambda_adv_sweep"):
        summary_path = Path(results_dir) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else A.build_summary(results_dir)
        return getattr(F, f"plot_{name}")(summary, out_dir, data_dir)
    if name == "length_distribution":
        return F.plot_length_distribution(F.length_data(results_dir, student), out_dir, data_dir)
    if name == "logp_distribution":
        return F.plot_logp_distribution(F.logp_data(results_dir, student), out_dir, data_dir)
    if name == "training_curves":
        return F.plot_training_curves(F.curves_data(runs_dir), out_dir, data_dir)
    raise SystemExit(f"unknown figure {name!r}; choose from {F.FIGURES} or all")


def score(name: str, model_dir: str, teacher_dir: str, results_dir="results", heldout="data/world/base_heldout.jsonl",
          batch_size: int = 64, threads: int = 2) -> None:
    """Teacher- and self-scored mean log-probs of ``name``'s in-domain greedy responses, and its held-out ppl."""
    import torch

    from uniapl.models import load_policy, load_tokenizer
    torch.set_num_threads(threads)
    rows = read_jsonl(Path(results_dir) / "eval" / name / "in_domain.jsonl")
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    tok, model = load_tokenizer(model_dir), load_policy(model_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    self_scored = A.score_mean_logprobs(model, tok, prompts, responses, batch_size)
    pairs = [(r["prompt"], r["response"]) for r in read_jsonl(heldout)]
    write_json(Path(results_dir) / "ppl" / f"{name}.json", {"ppl": A.perplexity(model, tok, pairs, batch_size)})
    if Path(model_dir).resolve() == Path(teacher_dir).resolve():
        teacher_scored = self_scored
    else:
        del model
        t_tok, teacher = load_tokenizer(teacher_dir), load_policy(teacher_dir)
        if torch.cuda.is_available():
            teacher = teacher.cuda()
        teacher_scored = A.score_mean_logprobs(teacher, t_tok, prompts, responses, batch_size)
    write_json(Path(results_dir) / "logp" / name / "in_domain.json",
               {"scorer": "teacher", "teacher_scored": teacher_scored, "self_scored": self_scored})
    print(name, "mean teacher-scored logp", sum(teacher_scored) / max(1, len(teacher_scored)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "score":
        ap = argparse.ArgumentParser(description="log-prob and perplexity scoring of one evaluated model")
        ap.add_argument("--name", required=True, help="model name under results/eval/ (e.g. runs/student-s/uniapl/seed0)")
        ap.add_argument("--model", required=True, help="the model's directory")
        ap.add_argument("--teacher-model", required=True, help="the teacher's directory (the scorer)")
        ap.add_argument("--results", default="results")
        ap.add_argument("--heldout", default="data/world/base_heldout.jsonl")
        ap.add_argument("--batch-size", type=int, default=64)
        ap.add_argument("--threads", type=int, default=2)
        a = ap.parse_args(sys.argv[2:])
        score(a.name, a.model, a.teacher_model, a.results, a.heldout, a.batch_size, a.threads)
    else:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--figure", default="all", help=f"one of {F.FIGURES} or all")
        ap.add_argument("--results", default="results")
        ap.add_argument("--runs", default="runs")
        ap.add_argument("--out", default="figures")
        ap.add_argument("--data-out", default="results/figures")
        ap.add_argument("--student", default="student-s", help="student of the distribution figures")
        a = ap.parse_args()
        for n in F.FIGURES if a.figure == "all" else [a.figure]:
            print(n, [str(p) for p in make_figure(n, a.results, a.runs, a.out, a.data_out, a.student)])
