"""The paper-scale code path, end to end through `dvc repro` on this CPU (issue 19): hub-layout models (a
randomly initialised tiny Qwen3 with its own Qwen3-style tokenizer and chat template, for the teacher and both
students), training prompts from an IFEval-format file (the `prompts` stage), and teacher demonstrations from
an OpenAI-compatible server on loopback (`uniapl.chat_server` serving the hub-layout teacher: real HTTP, the
`openai` backend with concurrency and shards). Everything else runs on the quick profile's tiny settings
(experiments/quick.py with this profile merged in), through the warm stage interpreter as `make quick` does.
What the CPU cannot stand in for (vLLM, POLAR, DeepSpeed on GPUs, the 541 IFEval prompts) is not in it."""

import hashlib
import json
import subprocess
import sys
import threading

import yaml

from conftest import ROOT, _START_ENV
from test_hub_models import QWEN3_TEMPLATE, save_hub_style
from uniapl.chat_server import ChatModel, ChatServer
from uniapl.config import deep_merge
from uniapl.models import load_tokenizer

MODELS = ("teacher", "student-s", "student-m")


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_paper_scale_shaped_pipeline_on_cpu(tiny_world, tmp_path):
    hub = tmp_path / "hub"
    for name in MODELS:
        (hub / name).mkdir(parents=True)
        save_hub_style(hub / name)
    rows = [json.loads(x) for x in (tiny_world / "data/world/train.jsonl").read_text().splitlines()[:40]]
    data = tmp_path / "ifeval_like.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "instruction_id_list", "kwargs")}) + "\n"
                            for r in rows))
    srv = ChatServer(("127.0.0.1", 0), ChatModel(str(hub / "teacher"), "teacher", threads=1))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        paper = {"prompts": {"source": str(data), "n_validation": 4},
                 "pretrain": {"models": {n: {"name_or_path": str(hub / n)} for n in MODELS}},
                 "teacher_demos": {"backend": "openai", "n_samples": 1, "openai_base_url": srv.base_url, "openai_model": "teacher",
                                   "openai_concurrency": 4, "openai_shard_size": 16}}
        profile = tmp_path / "paper-cpu.yaml"
        profile.write_text(yaml.safe_dump(deep_merge(yaml.safe_load((ROOT / "profiles/quick.yaml").read_text()), paper)))
        env = {**_START_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
        r = subprocess.run([sys.executable, "experiments/quick.py", "--profile", str(profile), "--dir", str(tmp_path / "repo")],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "running in this process" not in r.stdout + r.stderr
    repo = tmp_path / "repo"
    for name in MODELS:  # recorded, not retrained: the hub files themselves, with their tokenizer
        rec = json.loads((repo / f"results/pretrain/{name}.json").read_text())
        assert rec["source"] == "hub" and rec["sha256"]["model.safetensors"] == _sha(hub / name / "model.safetensors")
        assert _sha(repo / "models" / name / "model.safetensors") == _sha(hub / name / "model.safetensors")
    tok = load_tokenizer(repo / "models/student-s")
    assert tok.chat_template == QWEN3_TEMPLATE and "</think>" in tok.get_vocab()
    stats = json.loads((repo / "results/prompts.json").read_text())
    assert (stats["n_rows"], stats["n_train"], stats["n_validation"]) == (40, 36, 4)
    pool = [json.loads(x)["prompt"] for x in (repo / "data/prompts/train.jsonl").read_text().splitlines()]
    demos = [json.loads(x) for x in (repo / "data/teacher_demos.jsonl").read_text().splitlines()]
    n = yaml.safe_load(profile.read_text())["teacher_demos"]["n_prompts"]
    assert [d["prompt"] for d in demos] == pool[:n] and len(srv.requests) == len(demos)  # every demo over HTTP
    summary = json.loads((repo / "results/summary.json").read_text())
    assert "student-s" in summary["rows"] and summary["rows"]["student-s"]
