"""Teacher demonstrations over real HTTP: the openai backend of `teacher_demos` against uniapl.chat_server
serving the tiny embedded teacher on loopback (explicit sampling settings, concurrency, retries, resume by
shard, the stage script end to end)."""

import json
import shutil
import threading

import pytest
import yaml

from conftest import run
from uniapl.chat_server import ChatModel, ChatServer
from uniapl.config import TeacherDemosConfig, load_params
from uniapl.demos import generate_demos, openai_request
from uniapl.io import read_jsonl


@pytest.fixture(scope="module")
def chat_model(tiny_world):
    return ChatModel(str(tiny_world / "models/teacher"), name="teacher", threads=1)


@pytest.fixture
def serve(chat_model):
    servers = []

    def start(**kw):
        srv = ChatServer(("127.0.0.1", 0), chat_model, **kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _cfg(srv, **kw):
    return TeacherDemosConfig(backend="openai", openai_base_url=srv.base_url, openai_model="teacher",
                              max_new_tokens=16, **kw)


def _rows(tiny_world, n):
    return read_jsonl(tiny_world / "data/world/train.jsonl")[:n]


def test_requests_state_every_sampling_setting_and_answers_are_reproducible(tiny_world, serve):
    srv = serve()
    rows = _rows(tiny_world, 6)
    a = generate_demos(_cfg(srv, openai_concurrency=1), "unused", rows)
    b = generate_demos(_cfg(srv, openai_concurrency=4), "unused", rows)
    assert a == b  # the order requests arrive in does not matter: one seed per prompt
    assert [d["key"] for d in a] == [r["key"] for r in rows]
    assert all(d["n_tokens"] > 0 and d["teacher_logprob"] < 0 for d in a)
    body = srv.requests[0]
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                 "presence_penalty", "frequency_penalty", "n", "max_tokens")} == \
        {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
         "presence_penalty": 0.0, "frequency_penalty": 0.0, "n": 1, "max_tokens": 16}
    assert body["seed"] == openai_request(_cfg(srv), rows[0], 0)["seed"]


def test_server_refuses_what_it_cannot_sample(chat_model):
    with pytest.raises(ValueError, match="top_p=0.8"):
        chat_model.complete({"messages": [{"role": "user", "content": "hi"}], "top_p": 0.8, "seed": 1})
    with pytest.raises(ValueError, match="seed is required"):
        chat_model.complete({"messages": [{"role": "user", "content": "hi"}], "temperature": 1.0})
    with pytest.raises(ValueError, match="need backend openai"):
        TeacherDemosConfig(backend="hf", top_k=20)


def test_failed_requests_are_retried(tiny_world, serve):
    srv = serve(fail_first=2)
    rows = _rows(tiny_world, 3)
    got = generate_demos(_cfg(srv, openai_concurrency=1, openai_max_retries=3), "unused", rows)
    assert len(got) == 3 and len(srv.requests) == 3 + 2


def test_a_restarted_run_asks_only_for_the_unfinished_shards(tiny_world, serve, tmp_path):
    from uniapl.errors import UserError
    rows = _rows(tiny_world, 10)
    cfg = _cfg(serve(), openai_concurrency=2, openai_shard_size=4, openai_max_retries=1)
    shards = tmp_path / "demos.shards"
    dying = serve(fail_after=6)  # shard 0 (4 prompts) finishes, shard 1 does not
    with pytest.raises(UserError, match="retried up to 1 times"):
        generate_demos(cfg.model_copy(update={"openai_base_url": dying.base_url}), "unused", rows, shards)
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000.jsonl"]
    healthy = serve()
    resumed = generate_demos(cfg.model_copy(update={"openai_base_url": healthy.base_url}), "unused", rows, shards)
    assert len(healthy.requests) == 6  # shards 1 and 2 only
    assert resumed == generate_demos(cfg.model_copy(update={"openai_base_url": healthy.base_url}), "unused", rows)
    # other settings: the old shards are not reused
    other = cfg.model_copy(update={"openai_base_url": healthy.base_url, "temperature": 0.5})
    generate_demos(other, "unused", rows, shards)
    assert len(healthy.requests) == 6 + 10 + 10


def test_teacher_demos_stage_over_http(tiny_world, serve, tmp_path):
    """The stage script itself, with backend openai, against the loopback server."""
    srv = serve()
    d = tmp_path / "w"
    shutil.copytree(tiny_world / "experiments", d / "experiments")
    (d / "data").mkdir()
    shutil.copytree(tiny_world / "data/world", d / "data/world")
    shutil.copytree(tiny_world / "data/prompts", d / "data/prompts")
    p = yaml.safe_load((tiny_world / "params.yaml").read_text())
    p["teacher_demos"].update(backend="openai", n_samples=1, openai_base_url=srv.base_url, openai_model="teacher",
                              n_prompts=5, openai_shard_size=2)
    (d / "params.yaml").write_text(yaml.safe_dump(p))
    load_params(d / "params.yaml")
    run(["experiments/teacher_demos.py", "--teacher", str(tiny_world / "models/teacher")], d)
    demos = read_jsonl(d / "data/teacher_demos.jsonl")
    assert len(demos) == 5 and len(srv.requests) == 5
    assert not (d / "data/teacher_demos.shards").exists()  # finished: nothing left to resume
    stats = json.loads((d / "results/teacher_demos.json").read_text())
    assert stats["n_prompts"] == 5


def test_malformed_requests_get_an_http_error_not_a_dropped_connection(serve):
    import urllib.error
    import urllib.request
    srv = serve()
    for body, code in ((b"[1, 2]", 400), (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": null}', 400),
                       (b"not json", 400), (b'{"messages": "hi", "seed": 1}', 400)):
        req = urllib.request.Request(srv.base_url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == code and "error" in json.loads(e.value.read())
