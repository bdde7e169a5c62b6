"""Shared fixtures: a tiny embedded world built by the real stage scripts, once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# The environment pytest started with, before any test module imports torch (whose import sets KMP_* and
# others in os.environ): the quick pipeline runs in it, as `make quick` from a shell would.
_START_ENV = dict(os.environ)

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16,
              "intermediate_size": 64, "steps": 20, "lr": 0.003, "batch_size": 16, "warmup": 2}


def tiny_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["world"].update(n_train=96, n_in_domain=12, n_ood=8, n_heldout_base=8, n_validation=8)
    p["tokenizer"]["vocab_size"] = 400
    p["pretrain"]["threads"] = 1
    for name, spec in p["pretrain"]["models"].items():
        p["pretrain"]["models"][name] = {**TINY_MODEL, "corpus": spec["corpus"]}
    p["teacher_demos"]["max_new_tokens"] = 24
    p["evaluate"].update(max_new_tokens=24, n_sampled=1)
    p["discriminator"].update(n_prompts=60, steps=5, batch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                              num_kv_heads=1, head_dim=16, intermediate_size=64)
    p["train"].update(steps=3, batch_rl=2, group_size=2, batch_sft=4, max_new_tokens=16, threads=1,
                      checkpoint_every=2, micro_batch=4, eval_every=0)
    for m in ("sft", "a_sft"):  # their own (long) step counts and validation cadence in params.yaml
        p[m].update(steps=3, eval_every=0)
    return p


def run(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A working directory holding params.yaml, data/world, models/*, teacher demos and a discriminator."""
    d = tmp_path_factory.mktemp("world")
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    shutil.copytree(ROOT / "experiments", d / "experiments")
    run(["experiments/world.py"], d)
    run(["experiments/prompts.py"], d)
    for m in ("teacher", "student-s", "student-m"):
        run(["experiments/pretrain.py", "--model", m], d)
    run(["experiments/teacher_demos.py"], d)
    run(["experiments/discriminator.py"], d)
    return d


# The whole pipeline on the quick profile runs in a background process from the end of collection, so
# that its mostly single-threaded stages (interpreter starts, tiny models) overlap the rest of the suite
# on the second core. UNIAPL_PIPELINE_TEST=0 skips it.
_QUICK: dict = {}


def pytest_collection_modifyitems(session, config, items):
    if os.environ.get("UNIAPL_PIPELINE_TEST", "1") == "0" or config.option.collectonly:
        return
    uses = [it for it in items if "quick_repo" in getattr(it, "fixturenames", ())]
    if not uses:
        return
    items[:] = [it for it in items if it not in uses] + uses  # run last: the rest of the suite overlaps it
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="uniapl-quick-"))
    log = open(top / "quick.log", "w")
    env = {**_START_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "experiments/quick.py", "--dir", str(top / "repo")], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    _QUICK.update(proc=proc, top=top, log=log)


def pytest_sessionfinish(session, exitstatus):
    proc = _QUICK.get("proc")
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    _QUICK["log"].close()
    shutil.rmtree(_QUICK["top"], ignore_errors=True)


@pytest.fixture(scope="session")
def quick_repo() -> Path:
    """A temporary copy of the repo after `dvc repro` of the quick profile (experiments/quick.py, started in
    the background at the end of collection; this waits for it)."""
    if "proc" not in _QUICK:
        pytest.skip("UNIAPL_PIPELINE_TEST=0: the whole-pipeline test is off")
    rc = _QUICK["proc"].wait()
    _QUICK["log"].flush()
    if rc != 0:
        tail = (_QUICK["top"] / "quick.log").read_text()[-8000:]
        raise AssertionError(f"quick pipeline failed ({rc}):\n{tail}")
    return _QUICK["top"] / "repo"
