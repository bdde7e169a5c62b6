import random

import pytest

from uniapl import ifeval, world

from conftest import ROOT


def view(seed=0, n_train=150, **kw):
    from uniapl.config import load_params
    c = load_params(ROOT / "params.yaml").world
    return c.model_copy(update={"seed": seed, "n_train": n_train, "n_in_domain": kw.get("n_in_domain", 60),
                                "n_ood": kw.get("n_ood", 40), "n_heldout_base": 10})


def passes(row, text):
    return all(ifeval.check_response(row["prompt"], row["instruction_id_list"], row["kwargs"], text)[0])


def test_deterministic_by_seed():
    a, b, c = world.build_splits(view(0)), world.build_splits(view(0)), world.build_splits(view(1))
    assert a == b
    assert a["train"] != c["train"]
    r1, r2 = random.Random(5), random.Random(5)
    assert [world.expert_response(r, r1) for r in a["train"][:20]] == [world.expert_response(r, r2) for r in a["train"][:20]]


def test_splits_disjoint_and_shaped():
    s = world.build_splits(view(0))
    prompts = [set(r["prompt"] for r in s[k]) for k in ("train", "in_domain", "ood")]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2])
    assert {r["ood_axis"] for r in s["ood"]} == {"more_instructions", "unseen_combination", "unseen_kwargs", "unseen_topic"}
    assert max(len(r["instruction_id_list"]) for r in s["train"]) == 3
    assert all(len(r["instruction_id_list"]) == 4 for r in s["ood"] if r["ood_axis"] == "more_instructions")
    assert all(r["topic"] in world.OOD_TOPICS for r in s["ood"] if r["ood_axis"] == "unseen_topic")
    held = [frozenset(p) for p in world.HELDOUT_PAIRS]
    for r in s["train"] + s["in_domain"]:
        ids = set(r["instruction_id_list"])
        assert not any(p <= ids for p in held)
        # the instruction text is the checker's own build_description
        assert r["prompt"].endswith(ifeval.build_instruction(r["instruction_id_list"][-1], r["kwargs"][-1])[1])
    assert len(set(t for r in s["train"] for t in r["instruction_id_list"])) >= 10


def test_writers_follow_instructions_as_designed():
    s = world.build_splits(view(0))["in_domain"]
    rng = random.Random(0)
    expert = sum(passes(r, world.expert_response(r, rng)) for r in s) / len(s)
    never = sum(passes(r, world.student_response(r, rng, 0.0)) for r in s) / len(s)
    always = sum(passes(r, world.student_response(r, rng, 1.0)) for r in s) / len(s)
    assert expert >= 0.95
    assert never < 0.2 < always
    e_len = sum(len(world.expert_response(r, rng).split()) for r in s)
    s_len = sum(len(world.student_response(r, rng, 0.5).split()) for r in s)
    assert s_len > 1.3 * e_len


def test_fixed_answer_scores_low():
    s = world.build_splits(view(0, n_in_domain=200))["in_domain"]
    for fixed in ('"<<notes>> i like this a lot. p.s. thanks"', "i like it"):
        assert sum(passes(r, fixed) for r in s) / len(s) < 0.25


def test_world_stage_pass_rates_do_not_depend_on_workers(monkeypatch):
    """The world stage checks its ~20k responses in forked workers; the rates equal a one-process count."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("world_stage", ROOT / "experiments" / "world.py")
    stage = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "world_stage", stage)  # the workers find the checking function by name
    spec.loader.exec_module(stage)
    rows = world.build_splits(view(0, n_train=300))["train"]
    rng = random.Random(0)
    groups = {"expert": (rows, [world.expert_response(r, rng) for r in rows]),
              "student": (rows, [world.student_response(r, rng, 0.5) for r in rows]),
              "fixed": (rows[:40], ["i like it"] * 40)}
    one = {k: sum(passes(r, t) for r, t in zip(*g)) / len(g[0]) for k, g in groups.items()}
    assert stage.pass_rates(groups, workers=2) == stage.pass_rates(groups, workers=1) == one
    assert 0 < one["student"] < one["expert"]


WORLD_DIGEST = """
import hashlib, json, random, sys
sys.path.insert(0, "tests")
from test_world import view
from uniapl import ifeval, world
cfg = view(0, n_train=80)
s = world.build_splits(cfg)
rng = random.Random(1)
rows = s["train"] + s["in_domain"]
texts = [world.student_response(r, rng, 0.7) for r in rows] + [world.expert_response(r, rng) for r in rows]
verdicts = [ifeval.check_response(r["prompt"], r["instruction_id_list"], r["kwargs"], t) for r, t in zip(rows * 2, texts)]
print(hashlib.sha256(json.dumps([s, texts, verdicts], sort_keys=True).encode()).hexdigest())
"""


def test_world_and_verdicts_are_identical_across_processes():
    """Splits, writer texts and checker verdicts do not depend on the process (hash seed, langdetect's sampler)."""
    import os
    import subprocess
    import sys
    digests = set()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        r = subprocess.run([sys.executable, "-c", WORLD_DIGEST], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        digests.add(r.stdout.strip().splitlines()[-1])
    assert len(digests) == 1
