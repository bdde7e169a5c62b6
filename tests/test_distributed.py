"""DeepSpeed on CPU with two ranks (gloo): ZeRO-2 and ZeRO-3 train, agree, save and resume.

Each run is ``torchrun --standalone --nproc_per_node 2 experiments/train.py --deepspeed`` in the tiny world.
``experiments/train.py`` writes ``rank<k>.json`` on every rank: a sha256 of that rank's full parameters
before and after training (ZeRO-3: gathered first). ``stage3_param_persistence_threshold: 0`` makes ZeRO-3
partition even the tiny model's small tensors, so every forward (and the decoding loop) really needs them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

from uniapl.models import load_policy

pytestmark = pytest.mark.slow

TIMEOUT_S = 240  # one run takes ~35 s on 2 loaded cores; generous so a slow machine does not flake
DS_JSON = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


def _train_module():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "experiments/train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torchrun(world: Path, out: Path, steps: int, stage: int) -> None:
    """Two CPU ranks; the process group is killed as a whole on timeout (no stray ranks)."""
    cfg = out.parent / f"{out.name}.ds.json"
    cfg.write_text(json.dumps(DS_JSON))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "experiments/train.py", "--method", "uniapl", "--deepspeed", "--ds-config", str(cfg),
            "--keep-checkpoint", "--set", f"steps={steps}", f"zero_stage={stage}", "threads=1", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "DS_ACCELERATOR": "cpu",
           "DS_BUILD_OPS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(args, cwd=world, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        log, _ = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # torchrun starts each rank in a session of its own: SIGTERM to torchrun stops its ranks (a SIGKILL to
        # its process group alone would leave them holding the output pipe, and communicate() would never return)
        p.send_signal(signal.SIGTERM)
        try:
            log, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            log = ""
        raise AssertionError(f"torchrun timed out after {TIMEOUT_S}s (a rank waiting in a collective?):\n"
                             f"{log[-5000:]}")
    assert p.returncode == 0, f"torchrun failed ({p.returncode}):\n{log[-6000:]}"


@pytest.fixture(scope="module")
def ds_runs(tiny_world, tmp_path_factory):
    """One 2-step run per ZeRO stage, made on first use and shared by the tests of this module."""
    cache: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in cache:
            out = tmp_path_factory.mktemp(f"zero{stage}") / "run"
            torchrun(tiny_world, out, steps=2, stage=stage)
            cache[stage] = out
        return cache[stage]
    return get


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_train_agree_and_rank0_saves(tiny_world, ds_runs, stage):
    out = ds_runs(stage)
    r0, r1 = _ranks(out)
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world"] == r1["world"] == 2 and r0["zero_stage"] == r1["zero_stage"] == stage
    digest = _train_module().param_digest
    assert r0["init"] == r1["init"] == digest(load_policy(tiny_world / "models/student-s"))
    assert r0["final"] == r1["final"], "the two ranks ended with different weights"
    assert r0["final"]["sha256"] != r0["init"]["sha256"], "training did not change the weights"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["method"] == "uniapl"
    final = metrics["final"]
    assert "loss/sft" in final and "train/reward_mean" in final and "train/grad_norm" in final
    assert all(math.isfinite(v) for v in final.values() if isinstance(v, float))
    assert len((out / "history.jsonl").read_text().splitlines()) == 2

    # rank 0's model/ holds the trained, full (ZeRO-3: gathered) weights and loads as a plain HF model
    assert digest(load_policy(out / "model")) == r0["final"]
    ckpt = out / "checkpoint"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "ds" / "ckpt").is_dir()
    assert (ckpt / "trainer_state_rank0.pt").exists() and (ckpt / "trainer_state_rank1.pt").exists()


def test_zero3_resume_matches_an_uninterrupted_run(ds_runs, tiny_world, tmp_path):
    straight = _ranks(ds_runs(3))[0]["final"]
    out = tmp_path / "resumed"
    torchrun(tiny_world, out, steps=1, stage=3)  # ends with a checkpoint at step 1
    torchrun(tiny_world, out, steps=2, stage=3)  # loads DeepSpeed's partitioned states and takes step 2
    r0, r1 = _ranks(out)
    assert r0["final"] == r1["final"] == straight
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
