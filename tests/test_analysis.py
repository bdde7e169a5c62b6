"""Fast tests of the statistics, the summary tree, the claim verdicts, the tables/figures/report and the scorers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from uniapl import analysis as A
from uniapl import claims as C
from uniapl.compare import compare_summaries

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
STUDENT = "student-s"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"exp_{name}", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------- statistics
def test_summarize_hand_values():
    s = A.summarize([0.2, 0.4, 0.9])
    std = np.std([0.2, 0.4, 0.9], ddof=1)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.5)
    assert s["std"] == pytest.approx(std)
    assert s["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * std / math.sqrt(3))
    assert s["values"] == [0.2, 0.4, 0.9]
    one = A.summarize([0.7])
    assert one == {"mean": 0.7, "std": 0.0, "ci95": 0.0, "n": 1, "values": [0.7]}


def test_tests_sign_and_p():
    a, b = [0.80, 0.82, 0.81, 0.83], [0.50, 0.52, 0.49, 0.51]
    w, bs, pr = A.welch_test(a, b), A.bootstrap_diff(a, b, n_boot=2000), A.paired_test(a, b)
    assert w["diff"] > 0 and w["t"] > 0 and w["p"] < 0.01
    assert bs["diff"] > 0 and bs["ci95_low"] > 0 and bs["p"] < 0.01
    assert pr["diff"] > 0 and pr["p"] < 0.01
    assert A.welch_test(b, a)["diff"] < 0 and A.bootstrap_diff(b, a, n_boot=2000)["ci95_high"] < 0
    same = [0.5, 0.6, 0.7]
    assert A.welch_test(same, same)["p"] == pytest.approx(1.0)
    assert A.bootstrap_diff(same, same, n_boot=2000)["p"] > 0.5
    assert math.isnan(A.welch_test([0.5], [0.1, 0.2])["p"])  # n < 2: nan, no exception
    assert A.welch_test([0.5, 0.5], [0.5, 0.5])["p"] == 1.0  # zero variance, equal
    assert A.wasserstein([0, 1], [1, 2]) == pytest.approx(1.0)
    assert A.method_slug("a_sft->a_grpo") == "a_sft-then-a_grpo"
    assert A.method_name(A.method_slug("sft->grpo")) == "sft->grpo" and A.lambda_of("uniapl_lam0.5") == 0.5


# ------------------------------------------------------------------------- synthetic tree
def _write_model(root: Path, name: str, acc: dict, lengths: list[int], logp: list[float], ppl: float):
    for split, a in acc.items():
        d = root / "eval" / name
        d.mkdir(parents=True, exist_ok=True)
        m = {"prompt_strict": a, "prompt_loose": a + 0.05, "inst_strict": a + 0.1, "inst_loose": a + 0.12, "n": 4,
             "prompt_strict_sampled": a - 0.05, "mean_len": float(np.mean(lengths)), "truncated": 0.0, "seconds": 1.0}
        (d / f"{split}.json").write_text(json.dumps(m))
        rows = [{"key": i, "prompt": f"p{i}", "instruction_id_list": [], "kwargs": [], "response": "r",
                 "n_tokens": n, "truncated": False, "pass": i < a * len(lengths), "pass_loose": i < a * len(lengths),
                 "sampled": []} for i, n in enumerate(lengths)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "logp" / name).mkdir(parents=True, exist_ok=True)
    (root / "logp" / name / "in_domain.json").write_text(
        json.dumps({"scorer": "teacher", "teacher_scored": logp, "self_scored": [x + 0.1 for x in logp]}))
    (root / "ppl").joinpath(name).parent.mkdir(parents=True, exist_ok=True)
    (root / "ppl" / f"{name}.json").write_text(json.dumps({"ppl": ppl}))


TEACHER_LEN, TEACHER_LOGP = [10, 12, 14, 16], [-0.5, -0.6, -0.7, -0.8]


def make_tree(root: Path, accs: dict, seeds=(0, 1), shift: dict | None = None) -> Path:
    """``accs[method] = (in_domain acc of seed 0, per-seed increment)``; lengths shifted by ``shift[method]``."""
    shift = shift or {}
    _write_model(root, "teacher", {"in_domain": 0.7, "ood": 0.6}, TEACHER_LEN, TEACHER_LOGP, 5.0)
    _write_model(root, STUDENT, {"in_domain": 0.2, "ood": 0.1}, [40, 50, 60, 70], [-2.0] * 4, 9.0)
    for m, (acc, inc) in accs.items():
        for k in seeds:
            sh = shift.get(m, 20) + k
            _write_model(root, f"runs/{STUDENT}/{A.method_slug(m)}/seed{k}", {"in_domain": acc + inc * k, "ood": acc - 0.1},
                         [x + sh for x in TEACHER_LEN], [x - sh / 100 for x in TEACHER_LOGP], 6.0 + k)
    return root


def test_only_declared_runs_are_aggregated(tmp_path):
    """Runs that a smaller matrix no longer declares stay on disk but are neither counted nor plotted."""
    import subprocess
    import sys

    from uniapl import figures as F
    repo = tmp_path / "repo"
    make_tree(repo / "results", {"grpo": (0.5, 0.1), "uniapl_lam8.0": (0.3, 0.0)}, seeds=(0, 1, 2))
    (repo / "params.yaml").write_text("pipeline:\n  seeds: [0, 2]\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    foreach: ${pipeline.seeds}\n    do:\n      cmd: echo\n      outs:\n"
        "      - results/eval/runs/student-s/grpo/seed${item}/in_domain.jsonl: {cache: false}\n"
        "      - runs/student-s/grpo/seed${item}/model\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    declared = A.declared_runs(repo)
    assert declared == {"runs/student-s/grpo/seed0", "runs/student-s/grpo/seed2"}
    assert A.declared_runs(tmp_path) is None  # no dvc.yaml: no filter
    res = repo / "results"
    s = A.build_summary(res, [STUDENT], n_boot=100, runs=declared)
    assert s["rows"][STUDENT]["grpo"]["in_domain"]["prompt_strict"]["values"] == pytest.approx([0.5, 0.7])
    assert "uniapl_lam8.0" not in s["rows"][STUDENT]  # on disk, not declared
    assert len(A.build_summary(res, [STUDENT], n_boot=100)["rows"][STUDENT]["grpo"]["in_domain"]["prompt_strict"]
               ["values"]) == 3  # without the filter every run on disk counts
    assert len(F.length_data(res, STUDENT, ["grpo"], runs=declared)["methods"]["grpo"]) == 2 * len(TEACHER_LEN)


def test_build_summary_layout_and_values(tmp_path, caplog):
    make_tree(tmp_path, {"grpo": (0.5, 0.02), "sft->grpo": (0.55, 0.02), "uniapl": (0.6, 0.04)}, shift={"uniapl": 2})
    s = A.build_summary(tmp_path, [STUDENT], ["grpo", "sft->grpo", "uniapl", "chord"], n_boot=200)
    assert set(s) == {"rows", "tests"}
    rows = s["rows"][STUDENT]
    assert list(rows) == ["teacher", "base", "grpo", "sft->grpo", "uniapl"]  # chord not run: absent
    assert "chord" in caplog.text
    for m, r in rows.items():
        assert set(r) == {"in_domain", "ood", "length_w1_to_teacher", "logp_w1_to_teacher", "ppl"}
        assert set(r["in_domain"]) == set(A.METRICS)
        assert set(r["in_domain"]["prompt_strict"]) == {"mean", "std", "ci95", "n", "values"}
    u = rows["uniapl"]["in_domain"]["prompt_strict"]
    assert u["values"] == [0.6, 0.64] and u["n"] == 2 and u["mean"] == pytest.approx(0.62)
    assert u["std"] == pytest.approx(np.std([0.6, 0.64], ddof=1))
    assert rows["uniapl"]["in_domain"]["inst_strict"]["mean"] == pytest.approx(0.72)
    assert rows["teacher"]["in_domain"]["prompt_strict"]["n"] == 1 and rows["base"]["ood"]["prompt_strict"]["mean"] == 0.1
    assert rows["teacher"]["length_w1_to_teacher"] == 0.0 and rows["teacher"]["logp_w1_to_teacher"] == 0.0
    # pooled lengths of uniapl: teacher + 2 (seed 0) and + 3 (seed 1) -> W1 = 2.5
    assert rows["uniapl"]["length_w1_to_teacher"] == pytest.approx(2.5)
    assert rows["grpo"]["length_w1_to_teacher"] == pytest.approx(20.5)
    assert rows["uniapl"]["logp_w1_to_teacher"] == pytest.approx(0.025)
    assert rows["uniapl"]["ppl"]["values"] == [6.0, 7.0] and rows["teacher"]["ppl"]["mean"] == 5.0
    t = s["tests"][STUDENT]
    assert {"uniapl_vs_grpo", "uniapl_vs_sft->grpo", "uniapl_vs_teacher"} <= set(t)
    assert "uniapl_vs_uniapl_shaped" not in t
    g = t["uniapl_vs_grpo"]["in_domain"]
    assert g["welch"]["diff"] == pytest.approx(0.62 - 0.51) and g["paired"]["diff"] == pytest.approx(0.11)
    assert t["uniapl_vs_grpo"]["length_w1"]["a"] == pytest.approx([2.0, 3.0])
    json.dumps(s, allow_nan=False)  # strict JSON


def _write_passes(root: Path, model: str, p: float, n: int = 400, seed: int = 0, val: list | None = None):
    """Per-prompt verdicts of one model on both splits: prompt i passes with probability p + 0.4 (0.5 - u_i) (its
    difficulty u_i shared by every model), plus a run effect."""
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(123).random(n)  # shared difficulty: the same prompts are hard for every model
    for split in ("in_domain", "ood"):
        d = root / "eval" / model
        d.mkdir(parents=True, exist_ok=True)
        ok = rng.random(n) < np.clip(p + 0.4 * (0.5 - u) + rng.normal(0, 0.01), 0.02, 0.98)
        rows = [{"key": f"{split}-{i}", "prompt": f"p{i}", "instruction_id_list": [], "kwargs": [], "response": "r",
                 "n_tokens": 10, "truncated": False, "pass": bool(o), "pass_loose": bool(o),
                 "sampled": [{"pass": bool(o)}, {"pass": False}]} for i, o in enumerate(ok)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / f"{split}.json").write_text(json.dumps({"prompt_strict": float(ok.mean())}))
    if val is not None:
        (root / "eval" / model / "validation.json").write_text(json.dumps(
            {"steps": [10, 20, 30, 40], "prompt_strict": val, "budget": {"steps": 40}}))


def test_claim_verdicts_from_paired_prompts(tmp_path):
    """The paired claims follow the data: a clear gain replicates, a clear loss is reversed, equal methods are
    'not replicated' (the CI excludes 3 points), a small gain with few prompts is inconclusive; v2 and the
    best lambda are chosen on validation, and the plateau follows the curves."""
    from uniapl.config import ClaimsConfig
    r = tmp_path
    _write_passes(r, "teacher", 0.7)
    accs = {"grpo": 0.5, "uniapl": 0.62, "sft-then-grpo": 0.62, "sft-then-a_grpo": 0.75, "a_sft-then-a_grpo": 0.4,
            "uniapl_shaped": 0.5, "uniapl_cotrained": 0.62, "uniapl_lam0.5": 0.6, "uniapl_lam8.0": 0.3}
    for m, p in accs.items():
        for k in range(3):
            _write_passes(r, f"runs/{STUDENT}/{m}/seed{k}", p, seed=k + 10 * len(m),
                          val=[p - 0.2, p - 0.1, p, p] if m != "grpo" else [0.1, 0.2, 0.3, 0.45])
    claims, chosen = C.claim_results(r, [STUDENT], ClaimsConfig())
    v = {c["name"]: c for c in claims}
    assert chosen[STUDENT]["v2"] == "sft->a_grpo" and chosen[STUDENT]["best_lambda"] == "uniapl_lam0.5"
    assert v["v1: UniAPL beats GRPO"]["verdict"] == "replicated"
    assert v["v1: UniAPL beats GRPO"]["effect"] == pytest.approx(0.12, abs=0.04)
    assert v["v1: UniAPL beats GRPO"]["n_seeds"] == 3 and v["v1: UniAPL beats GRPO"]["n_prompts"] == 400
    assert v["v2: staged adversarial (best of SFT->A-GRPO, A-SFT->A-GRPO) beats GRPO"]["verdict"] == "replicated"
    assert v["A UniAPL student beats the teacher"]["verdict"] in ("reversed", "not replicated")  # 62 vs 70
    assert v["A separate adversarial loss beats reward shaping"]["verdict"] == "replicated"
    assert v["UniAPL beats SFT->GRPO"]["verdict"] in ("not replicated", "inconclusive")
    assert v["A fixed discriminator beats a co-trained one"]["verdict"] in ("not replicated", "inconclusive")
    assert v["Too large lambda_adv hurts (best vs largest)"]["verdict"] == "replicated"
    assert set(v["v1: UniAPL beats GRPO"]["secondary"]) == {"ood/greedy", "in_domain/sampled", "ood/sampled"}
    assert C.plateau_of(r, STUDENT, "uniapl", 0.01)["reached"] is True
    assert C.plateau_of(r, STUDENT, "grpo", 0.01)["reached"] is False  # still rising in the last quarter
    json.dumps(claims, allow_nan=False)


# ------------------------------------------------------------------ tables, figures, report
def test_tables_figures_report(tmp_path):
    from uniapl import figures as F
    accs = {"grpo": (0.5, 0.01), "uniapl": (0.7, 0.01), "uniapl_lam0": (0.6, 0.01), "uniapl_lam1": (0.7, 0.0),
            "uniapl_shaped": (0.6, 0.0)}
    res = make_tree(tmp_path / "results", accs)
    runs = tmp_path / "runs"
    for k in (0, 1):
        d = runs / STUDENT / "uniapl" / f"seed{k}" / "dvclive" / "plots" / "metrics" / "train"
        d.mkdir(parents=True)
        (d / "reward_mean.tsv").write_text("step\treward_mean\n0\t0.1\n1\t0.3\n")  # adv_score_mean missing: tolerated
    agg = _load("aggregate")
    summary = agg.main(str(res), str(res / "summary.json"), str(tmp_path / "tables"), [STUDENT], None)
    md = (tmp_path / "tables" / "main_results.md").read_text()
    assert "| uniapl | 70.5 ± 0.7 |" in md and "chord" not in md
    assert r"\toprule" in (tmp_path / "tables" / "ablations.tex").read_text()
    assert "λ_adv = 0" in (tmp_path / "tables" / "ablations.md").read_text()
    out, data = tmp_path / "figures", tmp_path / "figdata"
    F.plot_main_results(summary, out, data)
    F.plot_lambda_adv_sweep(summary, out, data)
    F.plot_length_distribution(F.length_data(res, STUDENT), out, data)
    F.plot_logp_distribution(F.logp_data(res, STUDENT), out, data)
    curves = F.curves_data(runs, [STUDENT])
    assert curves[STUDENT]["uniapl"]["reward_mean"]["mean"] == [0.1, 0.3]
    F.plot_training_curves(curves, out, data)
    for name in F.FIGURES:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
        assert (data / f"{name}.json").exists()
    rep = _load("report")
    (tmp_path / "params.yaml").write_text("world: {n_train: 10, n_in_domain: 4, n_ood: 4, seed: 0}\n")
    text = rep.build_report(tmp_path / "params.yaml", res / "summary.json", tmp_path / "tables", out,
                            tmp_path / "nodev.md", tmp_path / "paper" / "report.md")
    assert "../figures/main_results.png" in text and "UniAPL beats GRPO" in text and "deviations not documented" in text
    assert f"| UniAPL beats SFT->GRPO | {STUDENT} | **not run** |" in text


# -------------------------------------------------------------------------------- scorers
def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from uniapl.models import CHAT_TEMPLATE, IM_END, IM_START, PAD
    words = [PAD, IM_START, IM_END, "[UNK]", "user", "assistant"] + [f"w{i}" for i in range(30)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.add_special_tokens([PAD, IM_START, IM_END])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, unk_token="[UNK]",
                                   additional_special_tokens=[IM_START])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def test_score_mean_logprobs_matches_naive_loop():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from uniapl.models import encode_prompt, encode_response
    tok = _tiny_tokenizer()
    assert len(tok) <= 50 and encode_prompt(tok, "w1 w2")[:2] == [1, 4]
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg).eval()
    prompts = ["w1 w2", "w3", "w4 w5 w6 w7", "w8 w9"]
    responses = ["w10 w11 w12", "w13", "w14 w15", "w16 w17 w18 w19 w20"]
    naive = []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            pi, ri = encode_prompt(tok, p), encode_response(tok, r)
            logits = model(torch.tensor([pi + ri])).logits[0]
            lp = torch.log_softmax(logits[len(pi) - 1: -1], -1).gather(-1, torch.tensor(ri)[:, None])
            naive.append(lp.mean().item())
    got = A.score_mean_logprobs(model, tok, prompts, responses, batch_size=3)
    assert got == pytest.approx(naive, abs=1e-5)
    ppl = A.perplexity(model, tok, list(zip(prompts, responses)), batch_size=2)
    n = [len(encode_response(tok, r)) for r in responses]
    assert ppl == pytest.approx(math.exp(-sum(x * k for x, k in zip(naive, n)) / sum(n)), rel=1e-5)


# ------------------------------------------------------------------------ comparing two summaries
def _committed_summary() -> dict:
    return json.loads((ROOT / "results" / "summary.json").read_text())


def test_compare_summaries_of_a_tree_with_itself_shows_no_shift_and_equal_claims():
    s = _committed_summary()
    cmp = compare_summaries(s, s)
    assert cmp["only_a"] == [] and cmp["only_b"] == []
    assert len(cmp["rows"]) == sum(len(r) for r in s["rows"].values())
    for r in cmp["rows"]:
        for sp in A.SPLITS:
            if sp in r:
                assert r[sp]["welch"]["diff"] == 0.0
                assert r[sp]["welch"]["p"] == 1.0 or math.isnan(r[sp]["welch"]["p"])
    assert all(c["a"] == c["b"] for c in cmp["claims"])


def test_compare_summaries_reports_a_shift_a_missing_method_and_changed_verdicts():
    a = _committed_summary()
    b = json.loads(json.dumps(a))
    vals = b["rows"]["student-s"]["uniapl"]["in_domain"]["prompt_strict"]
    vals["values"] = [v + 0.2 for v in vals["values"]]
    vals["mean"] += 0.2
    # A has UniAPL clearly behind GRPO, B clearly ahead: the claim's verdict must differ between sides
    for tree, verdict in ((a, "reversed"), (b, "replicated")):
        tree["claims"] = [{"name": "v1: UniAPL beats GRPO", "student": "student-s", "verdict": verdict}]
    del b["rows"]["student-s"]["chord"]
    cmp = compare_summaries(a, b)
    row = next(r for r in cmp["rows"] if r["student"] == "student-s" and r["method"] == "uniapl")
    assert row["in_domain"]["welch"]["diff"] == pytest.approx(0.2)
    assert row["in_domain"]["welch"]["p"] < 0.05
    assert cmp["only_a"] == ["student-s/chord"] and cmp["only_b"] == []
    beats = next(c for c in cmp["claims"] if c["claim"] == "v1: UniAPL beats GRPO")
    assert beats["a"] == "reversed" and beats["b"] == "replicated" and beats["student"] == "student-s"


def test_compare_summaries_cli_writes_markdown_and_rejects_a_non_summary(tmp_path):
    mod = _load("compare_summaries")
    src = ROOT / "results" / "summary.json"
    out = tmp_path / "cmp.md"
    mod.main(str(src), str(src), ("host A", "host B"), str(out), str(tmp_path / "cmp.json"))
    text = out.read_text()
    assert "| student-s | uniapl |" in text and "| paper claim | student |" in text and "+0.0 (1)" in text
    assert json.loads((tmp_path / "cmp.json").read_text())["metric"] == "prompt_strict"
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": {}}')
    with pytest.raises(SystemExit, match="bad.json: not a summary.json"):
        mod.main(str(src), str(bad), ("a", "b"), str(tmp_path / "x.md"))
    assert not (tmp_path / "x.md").exists()


def test_uniapl_row_joins_the_sweep_at_its_selected_lambda(tmp_path):
    """The uniapl row is the sweep's point at the lambda_adv its runs trained with: the selected one
    (results/selection/uniapl.json), not params' default."""
    res = make_tree(tmp_path / "results", {"uniapl": (0.7, 0.01), "uniapl_lam0": (0.6, 0.01), "uniapl_lam1": (0.5, 0.0)})
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())  # its uniapl.lambda_adv: 0.1
    agg = _load("aggregate")
    s = agg.main(str(res), str(res / "summary.json"), str(tmp_path / "tables"), [STUDENT], None, str(params))
    assert s["tests"][STUDENT]["lambda_adv_sweep"]["lambdas"] == [0.0, 0.1, 1.0]
    (res / "selection").mkdir()
    (res / "selection" / "uniapl.json").write_text(json.dumps({"method": "uniapl", "chosen": {"lr": 6e-4, "lambda_adv": 0.3}}))
    s = agg.main(str(res), str(res / "summary.json"), str(tmp_path / "tables"), [STUDENT], None, str(params))
    sw = s["tests"][STUDENT]["lambda_adv_sweep"]
    assert sw["lambdas"] == [0.0, 0.3, 1.0] and sw["methods"] == ["uniapl_lam0", "uniapl", "uniapl_lam1"]
