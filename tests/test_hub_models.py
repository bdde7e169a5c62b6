"""Hub models are used, not retrained (issue 19): a student or teacher given by name or path passes through the
pretrain stage untouched, with its own tokenizer and chat template; Qwen3's template is rendered with thinking
off, and any ``<think>...</think>`` reasoning is stripped before a response is scored. The embedded world (no
thinking tokens, a template that ignores ``enable_thinking``) keeps its exact token ids and texts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import ROOT, run

from uniapl.config import deep_merge
from uniapl.models import (CHAT_TEMPLATE, decode_response, decode_responses, encode_prompt, encode_prompts,
                           load_policy, load_tokenizer, n_params, resolve_pretrained, strip_thinking,
                           tiny_qwen3_config, train_tokenizer)

TEXTS = ["Write a short note about cats.", "Cats are simple to enjoy, and dogs are loyal.",
         "Answer in lowercase letters only.", "hello there friend, think about it"] * 10

# The part of Qwen3's chat template that matters here: the generation prompt, with an empty think block when
# the caller turns thinking off (Qwen/Qwen3-0.6B's tokenizer_config.json renders exactly this tail).
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
ARCH = SimpleNamespace(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)


def qwen3_style_tokenizer():
    """A tiny BPE with Qwen3's markup: <think> and </think> as added (non-special) tokens, Qwen3's template."""
    tok = train_tokenizer(TEXTS, 300)
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = QWEN3_TEMPLATE
    return tok


def save_hub_style(d: Path) -> Path:
    """A randomly initialised tiny Qwen3 with its own tokenizer, saved as a hub repository is laid out."""
    import torch
    from transformers import Qwen3ForCausalLM

    tok = qwen3_style_tokenizer()
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config(ARCH, len(tok), tok.pad_token_id, tok.eos_token_id))
    model.save_pretrained(str(d), safe_serialization=True)
    tok.save_pretrained(str(d))
    (d / "README.md").write_text("a tiny stand-in for a hub model\n")
    return d


def digests(d: Path) -> dict[str, str]:
    return {f.relative_to(d).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(d.rglob("*")) if f.is_file()}


def quick_params(tmp_path: Path, student_s: str) -> Path:
    """params.yaml with the quick profile merged over it (as experiments/quick.py does) and student-s
    pointing at ``student_s``."""
    p = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                   yaml.safe_load((ROOT / "profiles" / "quick.yaml").read_text()))
    p["pretrain"]["models"]["student-s"]["name_or_path"] = student_s
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(p, sort_keys=False))
    return f


def run_pretrain(cwd: Path, params: Path, env: dict | None = None, check: bool = True):
    return run([str(ROOT / "experiments" / "pretrain.py"), "--model", "student-s", "--params", str(params)], cwd,
               env=env, check=check)


def test_paper_scale_hub_model_passes_through_untouched(tmp_path):
    hub = save_hub_style(tmp_path / "hub" / "Tiny-Qwen3")
    before = digests(hub)
    work = tmp_path / "work"  # no data/world: a hub model needs none of the world's files
    work.mkdir()
    run_pretrain(work, quick_params(work, str(hub)))
    out = work / "models" / "student-s"
    assert digests(out) == before and digests(hub) == before  # every file, byte for byte; the source untouched
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(before)
    rec = json.loads((work / "results" / "pretrain" / "student-s.json").read_text())
    model = load_policy(out)
    assert rec == {"source": "hub", "name_or_path": str(hub), "revision": None,
                   "sha256": {"model.safetensors": before["model.safetensors"]}, "params": n_params(model)}
    # Later stages read the model's own tokenizer and template through models/<name>, thinking off.
    tok = load_tokenizer(out)
    assert len(tok) == model.config.vocab_size and "<think>" in tok.get_added_vocab()
    assert tok.decode(encode_prompt(tok, "hi")) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" \
                                                  "<think>\n\n</think>\n\n"


def test_hub_id_is_read_from_the_local_cache_with_its_revision(tmp_path):
    """A hub id resolves offline to its cached snapshot (symlinks to blobs, as huggingface_hub stores it);
    the copy holds the files themselves and the record names the snapshot's commit."""
    src = save_hub_style(tmp_path / "src")
    cache, rev = tmp_path / "hf-cache", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--Tiny-Qwen3"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, digest in digests(src).items():
        shutil.copyfile(src / name, repo / "blobs" / digest)
        (snap / name).symlink_to(Path("..", "..", "blobs", digest))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "work"
    work.mkdir()
    run_pretrain(work, quick_params(work, "tiny-org/Tiny-Qwen3"), env=env)
    out = work / "models" / "student-s"
    assert digests(out) == digests(src) and not any(f.is_symlink() for f in out.rglob("*"))
    rec = json.loads((work / "results" / "pretrain" / "student-s.json").read_text())
    assert rec["source"] == "hub" and rec["name_or_path"] == "tiny-org/Tiny-Qwen3" and rec["revision"] == rev
    assert rec["sha256"] == {"model.safetensors": digests(src)["model.safetensors"]}
    # A local path inside the cache knows its revision too.
    assert resolve_pretrained(str(snap)) == (snap, rev)


def test_missing_hub_model_is_a_user_error(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    for target, needle in ((str(tmp_path / "nowhere"), "no such model directory"),
                           ("tiny-org/Not-Cached", "no such model on the Hugging Face Hub")):
        r = run_pretrain(work, quick_params(work, target), env=env, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr[-2000:]
    assert not (work / "models").exists()


def test_encode_prompt_renders_qwen3_template_with_thinking_off():
    tok = qwen3_style_tokenizer()
    off = tok.decode(encode_prompt(tok, "Write a note."))
    assert off == "<|im_start|>user\nWrite a note.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    on = tok.decode(encode_prompt(tok, "Write a note.", enable_thinking=True))
    assert on == "<|im_start|>user\nWrite a note.<|im_end|>\n<|im_start|>assistant\n"
    assert encode_prompts(tok, ["Write a note.", "hi"]) == [encode_prompt(tok, "Write a note."), encode_prompt(tok, "hi")]
    assert encode_prompts(tok, ["hi"], enable_thinking=True) == [encode_prompt(tok, "hi", enable_thinking=True)]


def test_embedded_template_ignores_enable_thinking():
    """The embedded world's ids are exactly those of the template called without the kwarg."""
    tok = train_tokenizer(TEXTS, 300)
    assert tok.chat_template == CHAT_TEMPLATE
    for t in TEXTS[:4]:
        plain = tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
        assert encode_prompt(tok, t) == plain == encode_prompt(tok, t, enable_thinking=True)
    plain = tok.apply_chat_template([[{"role": "user", "content": t}] for t in TEXTS], add_generation_prompt=True,
                                    tokenize=True, return_dict=False)
    assert encode_prompts(tok, TEXTS) == plain == encode_prompts(tok, TEXTS, enable_thinking=True)


@pytest.mark.parametrize("text, answer", [
    ("<think>\nplan it\n</think>\n\nCats are great.", "Cats are great."),
    ("<think>\n\n</think>\n\nCats are great.", "Cats are great."),
    ("reasoning without an opening tag</think> Cats.", "Cats."),  # as lm-evaluation-harness: after the last tag
    ("<think>a</think>b</think>\nc", "c"),
    ("<think>\nstill reasoning when the budget ran out", ""),  # cut while thinking: no answer
    ("  <think>cut", ""),
    ("Cats are great.", "Cats are great."),
    ("  Cats, <think> in the middle, stay.  ", "  Cats, <think> in the middle, stay.  "),
    ("", ""),
])
def test_strip_thinking(text, answer):
    assert strip_thinking(text) == answer


def test_decode_strips_thinking_only_for_tokenizers_with_thinking_tokens():
    from uniapl.evaluate import decode

    qwen = qwen3_style_tokenizer()

    def ids(tok, text):
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    think = ids(qwen, "<think>\nplan\n</think>\n\nCats are great.")
    assert decode_responses(qwen, [think, ids(qwen, "Cats."), ids(qwen, "<think>\nplan")]) == \
        ["Cats are great.", "Cats.", ""]
    assert decode_response(qwen, think) == decode(qwen, think) == "Cats are great."
    # Tags that the tokenizer marks special (dropped by skip_special_tokens) are cut at the token.
    special = qwen3_style_tokenizer()
    special.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    sids = ids(special, "<think>\nplan\n</think>\n\nCats are great.")
    assert decode_responses(special, [sids, ids(special, "<think>\nplan")]) == ["Cats are great.", ""]
    # The embedded tokenizer has no thinking tokens: its decoding is exactly tokenizer.decode, whatever the text.
    emb = train_tokenizer(TEXTS, 300)
    for text in ("Cats are great.", "<think>x</think> y", " lead space"):
        e = ids(emb, text)
        assert decode_response(emb, e) == decode(emb, e) == emb.decode(e, skip_special_tokens=True)


def test_openai_demo_text_is_stripped_of_thinking():
    from uniapl.demos import parse_openai_response

    row = {"key": 1, "prompt": "Write in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
           "kwargs": [{}]}
    resp = {"choices": [{"message": {"content": "<think>\nOK, LOWERCASE.\n</think>\n\nall lowercase here."},
                         "finish_reason": "stop"}], "usage": {"completion_tokens": 9}}
    rec = parse_openai_response(row, resp)
    assert rec["response"] == "all lowercase here." and rec["pass"]
