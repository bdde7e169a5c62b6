"""Statistics of the pipeline: summaries over seeds, tests, distribution distances, the summary tree,
the claim verdicts, and log-prob / perplexity scoring of responses.

Everything here is a pure function of files or values (the scorers need a model); the CLIs in
``experiments/aggregate.py``, ``analyze.py`` and ``report.py`` only wire paths. Layout of results:
``results/eval/<model>/<split>.json(l)``, ``results/logp/<model>/in_domain.json``,
``results/ppl/<model>.json`` where ``<model>`` is ``teacher``, a base student name, or
``runs/<student>/<method_slug>/seed<k>``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

log = logging.getLogger(__name__)

STUDENTS = ["student-s", "student-m"]
SPLITS = ["in_domain", "ood"]
METRICS = ["prompt_strict", "prompt_loose", "inst_strict", "inst_loose", "prompt_strict_sampled", "mean_len"]
MAIN_METHODS = ["sft", "grpo", "sft->grpo", "sft->a_grpo", "a_sft->a_grpo", "a_sft", "chord", "a_chord", "uniapl"]
ABLATIONS = ["uniapl_shaped", "uniapl_cotrained"]  # plus the uniapl_lam<value> sweep, found on disk
PRIMARY = "prompt_strict"
ALPHA = 0.05
LAM_PREFIX = "uniapl_lam"


# ----------------------------------------------------------------------------------------- names
def method_slug(name: str) -> str:
    """Directory name of a method: ``sft->grpo`` -> ``sft-then-grpo``."""
    return name.replace("->", "-then-")


def method_name(slug: str) -> str:
    """Inverse of :func:`method_slug`."""
    return slug.replace("-then-", "->")


def lambda_of(method: str) -> float | None:
    """``uniapl_lam0.5`` -> 0.5; None for any other method."""
    if method.startswith(LAM_PREFIX):
        try:
            return float(method[len(LAM_PREFIX):])
        except ValueError:
            return None
    return None


def _seed_key(d: Path) -> int:
    return int(d.name[4:])


def declared_runs(root: str | Path = ".") -> set[str] | None:
    """Names (``runs/<student>/<method slug>/seed<k>``) of the evaluated runs that ``root``'s dvc.yaml
    declares for the current params, read through DVC's own index; None when ``root`` has no dvc.yaml.

    The aggregate and the figures read only these: results of runs that the params no longer declare
    (a smaller ``pipeline.seeds`` or ``lambda_sweep``) stay on disk but are not counted."""
    root = Path(root).resolve()
    if not (root / "dvc.yaml").exists():
        return None
    from dvc.repo import Repo
    with Repo(str(root)) as repo:
        paths = {Path(o.fs_path).resolve().relative_to(root).as_posix() for o in repo.index.outs}
    pat = re.compile(r"results/eval/(runs/[^/]+/[^/]+/seed\d+)/in_domain\.jsonl")
    return {m.group(1) for p in paths if (m := pat.fullmatch(p))}


def run_models(results_dir: str | Path, student: str, method: str, runs: set[str] | None = None) -> dict[str, str]:
    """``{seed label: model name}`` of a method's evaluated runs (teacher and base: one pseudo-seed).

    ``runs``: only these run names count (see :func:`declared_runs`); None: every run on disk."""
    if method == "teacher":
        return {"seed0": "teacher"}
    if method == "base":
        return {"seed0": student}
    base = Path(results_dir) / "eval" / "runs" / student / method_slug(method)
    dirs = sorted((d for d in base.glob("seed*") if d.is_dir() and re.fullmatch(r"seed\d+", d.name)), key=_seed_key)
    out = {d.name: f"runs/{student}/{method_slug(method)}/{d.name}" for d in dirs}
    return out if runs is None else {k: v for k, v in out.items() if v in runs}


def discover_methods(results_dir: str | Path, students=STUDENTS, runs: set[str] | None = None) -> list[str]:
    """Main methods, then ablations (lambda sweep sorted by lambda), that have any eval dir on disk
    (``runs``: any declared run)."""
    found = set()
    for s in students:
        d = Path(results_dir) / "eval" / "runs" / s
        found |= {method_name(p.name) for p in d.iterdir() if p.is_dir()
                  and (runs is None or any(r.startswith(f"runs/{s}/{p.name}/") for r in runs))} if d.is_dir() else set()
    lams = sorted((m for m in found if lambda_of(m) is not None), key=lambda_of)
    known = [m for m in MAIN_METHODS + ABLATIONS if m in found]
    return known + lams + sorted(found - set(known) - set(lams))


# ------------------------------------------------------------------------------------ statistics
def _arr(x) -> np.ndarray:
    return np.asarray([v for v in x if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)


def summarize(values) -> dict:
    """Mean, sample std (ddof=1; 0 for n<2), 95% t half-width (0 for n<2), n, and the values."""
    a = _arr(values)
    n = len(a)
    mean = float(a.mean()) if n else float("nan")
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    ci = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "ci95": ci, "n": n, "values": [float(v) for v in a]}


def _quiet(fn):
    """Run a scipy test without its precision warning for a constant group (the result is still exact)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn()


def _degenerate(diff: float) -> tuple[float, float]:
    """t and p when both samples have zero variance: exact equality, or an infinitely clear gap."""
    return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)


def welch_test(a, b) -> dict:
    """Welch's unequal-variance t-test of mean(a) - mean(b); t and p are nan when either n < 2."""
    a, b = _arr(a), _arr(b)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "t": float("nan"), "p": float("nan")}
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        t, p = _degenerate(diff)
    else:
        r = _quiet(lambda: stats.ttest_ind(a, b, equal_var=False))
        t, p = float(r.statistic), float(r.pvalue)
    return {"diff": diff, "t": t, "p": p}


def paired_test(a, b) -> dict:
    """Paired t-test (seed-aligned runs) of mean(a - b); nan when n < 2 or lengths differ."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b) or len(a) < 2:
        return {"diff": float("nan"), "t": float("nan"), "p": float("nan")}
    d = a - b
    if np.ptp(d) == 0:
        t, p = _degenerate(float(d.mean()))
    else:
        r = _quiet(lambda: stats.ttest_rel(a, b))
        t, p = float(r.statistic), float(r.pvalue)
    return {"diff": float(d.mean()), "t": t, "p": p}


def one_sample_test(a, value: float) -> dict:
    """t-test of mean(a) against a fixed value (e.g. the teacher's single evaluation)."""
    a = _arr(a)
    diff = float(a.mean() - value) if len(a) else float("nan")
    if len(a) < 2:
        return {"diff": diff, "t": float("nan"), "p": float("nan")}
    if np.ptp(a) == 0:
        t, p = _degenerate(diff)
    else:
        r = _quiet(lambda: stats.ttest_1samp(a, value))
        t, p = float(r.statistic), float(r.pvalue)
    return {"diff": diff, "t": t, "p": p}


def bootstrap_diff(a, b, n_boot: int = 10000, seed: int = 0) -> dict:
    """Percentile bootstrap of mean(a) - mean(b) (independent resampling of each group).

    ``p`` is two-sided: twice the smaller tail mass of the bootstrap distribution at 0, with the
    +1 correction so it is never exactly 0; nan when a group is empty.
    """
    a, b = _arr(a), _arr(b)
    if not len(a) or not len(b):
        return {"diff": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"), "p": float("nan")}
    rng = np.random.default_rng(seed)
    d = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    lo, hi = np.percentile(d, [2.5, 97.5])
    tail = min((d <= 0).sum(), (d >= 0).sum())
    p = min(1.0, 2 * (tail + 1) / (n_boot + 1))
    return {"diff": float(a.mean() - b.mean()), "ci95_low": float(lo), "ci95_high": float(hi), "p": float(p)}


def wasserstein(a, b) -> float:
    """1-Wasserstein (earth mover's) distance between two empirical distributions."""
    return float(stats.wasserstein_distance(_arr(a), _arr(b)))


# --------------------------------------------------------------------------------- file readers
def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_lengths(results_dir, model: str, split: str = "in_domain") -> list[int] | None:
    """Per-response greedy ``n_tokens`` of a model's eval rows."""
    p = Path(results_dir) / "eval" / model / f"{split}.jsonl"
    if not p.exists():
        return None
    return [json.loads(l)["n_tokens"] for l in p.read_text().splitlines() if l.strip()]


def read_logp(results_dir, model: str, key: str = "teacher_scored") -> list[float] | None:
    d = _read_json(Path(results_dir) / "logp" / model / "in_domain.json")
    return None if d is None else d.get(key)


def read_curve(path: str | Path) -> tuple[list[float], list[float]]:
    """A DVCLive ``step\\t<metric>`` TSV -> (steps, values)."""
    steps, vals = [], []
    for line in Path(path).read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1].strip():
            steps.append(float(parts[0]))
            vals.append(float(parts[1]))
    return steps, vals


# ------------------------------------------------------------------------------------ summaries
def _clean(x):
    """nan/inf -> None so the JSON is strict (DVC and browsers refuse NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _method_row(results_dir, student, method, splits, metrics, teacher_len, teacher_logp, runs=None):
    """(row as in the summary layout, seed-keyed internals for tests) or (None, None) when not run."""
    models = run_models(results_dir, student, method, runs)
    evals = {s: {sp: _read_json(Path(results_dir) / "eval" / m / f"{sp}.json") for sp in splits} for s, m in models.items()}
    if not any(v for e in evals.values() for v in e.values()):
        return None, None
    row, internal = {}, {"by_seed": {}, "length_w1": {}, "logp_w1": {}}
    for sp in splits:
        present = {s: e[sp] for s, e in evals.items() if e[sp]}
        if present:
            row[sp] = {k: summarize([present[s].get(k) for s in present]) for k in metrics}
            internal["by_seed"][sp] = {s: present[s].get(PRIMARY) for s in present}
    lens = {s: read_lengths(results_dir, m) for s, m in models.items()}
    lens = {s: v for s, v in lens.items() if v}
    logps = {s: read_logp(results_dir, m) for s, m in models.items()}
    logps = {s: v for s, v in logps.items() if v}
    ok_len, ok_logp = bool(lens and teacher_len), bool(logps and teacher_logp)
    row["length_w1_to_teacher"] = wasserstein(sum(lens.values(), []), teacher_len) if ok_len else None
    row["logp_w1_to_teacher"] = wasserstein(sum(logps.values(), []), teacher_logp) if ok_logp else None
    internal["length_w1"] = {s: wasserstein(v, teacher_len) for s, v in lens.items()} if ok_len else {}
    internal["logp_w1"] = {s: wasserstein(v, teacher_logp) for s, v in logps.items()} if ok_logp else {}
    ppl = [(_read_json(Path(results_dir) / "ppl" / f"{m}.json") or {}).get("ppl") for m in models.values()]
    ppl = [v for v in ppl if v is not None]
    row["ppl"] = summarize(ppl) if ppl else None
    return row, internal


def compare(ia: dict, ib: dict, splits=SPLITS, n_boot: int = 10000) -> dict:
    """Tests of method a minus method b: primary metric per split, and per-seed W1 distances."""
    out = {}
    for sp in splits:
        a, b = ia["by_seed"].get(sp, {}), ib["by_seed"].get(sp, {})
        if not a or not b:
            continue
        common = sorted(set(a) & set(b), key=lambda s: int(s[4:]))
        aligned = set(a) == set(b) and len(common) > 1
        out[sp] = {"metric": PRIMARY, "mean_a": float(np.mean(list(a.values()))), "mean_b": float(np.mean(list(b.values()))),
                   "n_a": len(a), "n_b": len(b), "welch": welch_test(list(a.values()), list(b.values())),
                   "bootstrap": bootstrap_diff(list(a.values()), list(b.values()), n_boot),
                   "paired": paired_test([a[s] for s in common], [b[s] for s in common]) if aligned else None}
    for key in ("length_w1", "logp_w1"):
        a, b = list(ia[key].values()), list(ib[key].values())
        if a and b:
            out[key] = {"a": a, "b": b, "welch": welch_test(a, b)}
    return out


def build_summary(results_dir, students=STUDENTS, methods=None, splits=SPLITS, metrics=METRICS, n_boot: int = 10000,
                  uniapl_lambda: float | None = None, runs: set[str] | None = None) -> dict:
    """The summary tree (see the module docstring of ``experiments/aggregate.py`` for the layout).

    ``rows[student][method]`` holds ``{split: {metric: summarize(...)}}`` plus ``length_w1_to_teacher``,
    ``logp_w1_to_teacher`` and ``ppl``; ``teacher`` and ``base`` rows (n=1) come first. Methods never
    run are absent (logged). ``tests[student]`` holds ``uniapl_vs_grpo``, ``uniapl_vs_sft->grpo``,
    ``uniapl_vs_uniapl_shaped``, ``uniapl_vs_uniapl_cotrained`` (see :func:`compare`),
    ``uniapl_vs_teacher`` (one-sample t-test per split) and ``lambda_adv_sweep``, each only when
    both sides exist. ``uniapl_lambda``: the lambda_adv of the ``uniapl`` row, which then joins the
    ``uniapl_lam<value>`` runs as a point of the sweep. ``runs``: count only these runs
    (:func:`declared_runs`); None: every run on disk.
    """
    if methods is None:
        methods = list(dict.fromkeys(MAIN_METHODS + ABLATIONS + discover_methods(results_dir, students, runs)))
    teacher_len, teacher_logp = read_lengths(results_dir, "teacher"), read_logp(results_dir, "teacher")
    rows, tests = {}, {}
    for st in students:
        rows[st], internals, missing = {}, {}, []
        for m in ["teacher", "base"] + [m for m in methods if m not in ("teacher", "base")]:
            row, internal = _method_row(results_dir, st, m, splits, metrics, teacher_len, teacher_logp, runs)
            if row is None:
                missing.append(m)
            else:
                rows[st][m], internals[m] = row, internal
        if missing:
            log.warning("%s: not run (absent from the summary): %s", st, ", ".join(missing))
        t = {}
        for other in ("grpo", "sft->grpo", "uniapl_shaped", "uniapl_cotrained"):
            if "uniapl" in internals and other in internals:
                t[f"uniapl_vs_{other}"] = compare(internals["uniapl"], internals[other], splits, n_boot)
        if "uniapl" in rows[st] and "teacher" in rows[st]:
            t["uniapl_vs_teacher"] = {sp: {"metric": PRIMARY, **one_sample_test(
                rows[st]["uniapl"][sp][PRIMARY]["values"], rows[st]["teacher"][sp][PRIMARY]["mean"])}
                for sp in splits if sp in rows[st]["uniapl"] and sp in rows[st]["teacher"]}
        sweep = sorted((lambda_of(m), m) for m in rows[st] if lambda_of(m) is not None and "in_domain" in rows[st][m])
        if uniapl_lambda is not None and "in_domain" in rows[st].get("uniapl", {}) and \
                all(l != uniapl_lambda for l, _ in sweep):
            sweep = sorted(sweep + [(float(uniapl_lambda), "uniapl")])
        if len(sweep) >= 2:
            means = [rows[st][m]["in_domain"][PRIMARY]["mean"] for _, m in sweep]
            best, largest = sweep[int(np.argmax(means))], sweep[-1]
            t["lambda_adv_sweep"] = {"metric": PRIMARY, "split": "in_domain", "lambdas": [l for l, _ in sweep],
                                     "methods": [m for _, m in sweep], "means": means, "best": best[0], "largest": largest[0],
                                     "best_vs_largest": welch_test(rows[st][best[1]]["in_domain"][PRIMARY]["values"],
                                                                   rows[st][largest[1]]["in_domain"][PRIMARY]["values"])}
        tests[st] = t
    return _clean({"rows": rows, "tests": tests})


# -------------------------------------------------------------------------------------- scoring
def _response_logprob_sums(model, tokenizer, prompts, responses, batch_size: int = 64):
    """(sum of response-token log-probs, number of response tokens) per example, in input order.

    Rows are batched by length (less padding); ``models.sequence_logprobs`` runs the LM head and the
    log-softmax on response positions only (a 151k-token vocabulary never needs the whole batch's logits).
    """
    import torch

    from uniapl import models as M
    p_ids = [M.encode_prompt(tokenizer, p) for p in prompts]
    r_ids = [M.encode_response(tokenizer, r) for r in responses]
    order = sorted(range(len(p_ids)), key=lambda i: len(p_ids[i]) + len(r_ids[i]))
    device = next(model.parameters()).device
    sums, counts = [0.0] * len(order), [0] * len(order)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for k in range(0, len(order), batch_size):
            idx = order[k: k + batch_size]
            b = M.Batch(*(t.to(device) for t in M.pack([p_ids[i] for i in idx], [r_ids[i] for i in idx],
                                                        tokenizer.pad_token_id)))
            lp, _ = M.sequence_logprobs(model, b)
            for row, i in enumerate(idx):
                sums[i], counts[i] = float(lp[row].sum()), int(b.lmask[row].sum())
    model.train(was_training)
    return sums, counts


def score_mean_logprobs(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
    """Mean token log-prob of each response (end-of-turn token included) given its prompt, under ``model``."""
    sums, counts = _response_logprob_sums(model, tokenizer, prompts, responses, batch_size)
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def perplexity(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 64) -> float:
    """Token-weighted perplexity of the responses of ``(prompt, response)`` pairs."""
    sums, counts = _response_logprob_sums(model, tokenizer, [p for p, _ in pairs], [r for _, r in pairs], batch_size)
    return float(math.exp(-sum(sums) / max(1, sum(counts))))
