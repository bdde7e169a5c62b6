"""The whole DVC pipeline (quick profile, tests/conftest.py::quick_repo): outputs, layout and workflows."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from uniapl.analysis import MAIN_METHODS, METRICS, SPLITS

FIGURES = ["main_results", "length_distribution", "logp_distribution", "lambda_adv_sweep", "training_curves"]


def dvc(repo, *args, check=True):
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and r.returncode:
        raise AssertionError(f"dvc {' '.join(args)}: {r.stdout}\n{r.stderr}")
    return r.stdout + r.stderr


def test_summary_has_every_row_in_the_documented_layout(quick_repo):
    s = json.loads((quick_repo / "results/summary.json").read_text())
    rows = s["rows"]
    assert set(["teacher", "base"] + MAIN_METHODS) <= set(rows["student-s"])
    assert {"teacher", "base", "grpo", "sft->grpo", "uniapl"} <= set(rows["student-m"])
    for student, methods in rows.items():
        for m, row in methods.items():
            for split in SPLITS:
                for metric in METRICS:
                    cell = row[split][metric]
                    assert set(cell) == {"mean", "std", "ci95", "n", "values"}, (student, m, split, metric)
                    assert cell["n"] == len(cell["values"]) >= 1
            assert {"length_w1_to_teacher", "logp_w1_to_teacher", "ppl"} <= set(row)
            assert row["ppl"]["n"] >= 1, (student, m)
    ablations = set(rows["student-s"])
    assert {"uniapl_shaped", "uniapl_cotrained"} <= ablations
    assert sum(m.startswith("uniapl_lam") for m in ablations) == sum(map(len, yaml.safe_load(
        (quick_repo / "params.yaml").read_text())["pipeline"]["lambda_sweep"]))
    assert s["tests"]["student-s"]["lambda_adv_sweep"]["methods"].count("uniapl") == 1  # uniapl joins the sweep


def test_figures_tables_and_report(quick_repo):
    for f in FIGURES:
        assert (quick_repo / f"figures/{f}.png").stat().st_size > 1000
        assert (quick_repo / f"figures/{f}.pdf").exists()
        json.loads((quick_repo / f"results/figures/{f}.json").read_text())
    for t in ("main_results", "ablations", "distances"):
        assert "| method" in (quick_repo / f"paper/tables/{t}.md").read_text() or t == "ablations"
        assert r"\toprule" in (quick_repo / f"paper/tables/{t}.tex").read_text()
    report = (quick_repo / "paper/report.md").read_text()
    for claim in ("UniAPL beats GRPO", "UniAPL beats SFT->GRPO", "A UniAPL student beats the teacher",
                  "closer to the teacher", "Too large lambda_adv hurts", "reward shaping"):
        assert claim in report
    timing = json.loads((quick_repo / "results/timing/repro.json").read_text())
    assert timing["returncode"] == 0 and "report" in timing["stages"]


def test_pipeline_is_up_to_date_and_one_figure_regenerates_alone(quick_repo):
    assert "up to date" in dvc(quick_repo, "status")
    out = dvc(quick_repo, "repro", "--force", "--single-item", "plot@length_distribution")
    assert out.count("Running stage") == 1 and "plot@length_distribution" in out


def test_changing_uniapl_lambda_dirties_only_what_reads_it(quick_repo, tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "-A"], cwd=quick_repo, check=True, capture_output=True)
    subprocess.run(git + ["commit", "-qm", "quick"], cwd=quick_repo, check=True, capture_output=True)
    params = quick_repo / "params.yaml"
    original = params.read_text()
    try:
        p = yaml.safe_load(original)
        p["uniapl"]["lambda_adv"] = 0.5
        params.write_text(yaml.safe_dump(p, sort_keys=False))
        assert "uniapl.lambda_adv" in dvc(quick_repo, "params", "diff")
        status = json.loads(dvc(quick_repo, "status", "--json"))
        changed = {k.split("@")[0] for k in status}
        assert {"train_s", "train_m", "ablate_disc", "aggregate"} <= changed
        # the sweep sets lambda_adv itself
        assert not changed & {"world", "pretrain", "teacher_demos", "discriminator", "evaluate_base", "staged_s",
                              "staged_s_asft", "staged_m", "ablate_lambda", "trl_grpo"}
        # of the method runs, only the uniapl ones read uniapl.*
        assert {k for k in status if k.startswith(("train_s@", "train_m@"))} == {"train_s@uniapl-seeds0", "train_m@uniapl-seeds0"}
    finally:
        params.write_text(original)
    dvc(quick_repo, "metrics", "diff")  # runs against the commit (no change)


def _lock_outs(repo, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return {o["path"]: o["md5"] for o in lock["outs"]}


def test_stages_ran_in_the_warm_server_and_a_fresh_process_gives_the_same_outputs(quick_repo):
    """experiments/quick.py runs `dvc repro` through uniapl.stage_server; plain `dvc repro` (a fresh
    interpreter per stage) re-makes a training run's model, responses, log-probs and ppl bit for bit."""
    log = (quick_repo.parent / "quick.log").read_text()
    assert "running in this process" not in log, "a stage fell back to its own process"
    assert json.loads((quick_repo / "results/timing/repro.json").read_text())["stage_server"] is True
    stage = "train_s@uniapl-seeds0"  # two runs side by side

    def timeless(outs):  # metrics (validation.json's budget too) carry wall-clock seconds and DVCLive timestamps
        return {p: h for p, h in outs.items() if "dvclive" not in p
                and not p.endswith(("metrics.json", "run.json", "/in_domain.json", "/ood.json", "/validation.json"))
                or p.startswith("results/logp/")}
    before = timeless(_lock_outs(quick_repo, stage))
    assert any(p.endswith("/model") for p in before) and any(p.endswith("in_domain.jsonl") for p in before)
    out = dvc(quick_repo, "repro", "--force", "--single-item", stage)
    assert out.count("Running stage") == 1
    assert timeless(_lock_outs(quick_repo, stage)) == before
