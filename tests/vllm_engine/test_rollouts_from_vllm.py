"""``rollouts_from_vllm`` on stand-ins for vLLM's ``RequestOutput`` (no vLLM needed: runs in the main venv)."""

from types import SimpleNamespace as NS

import pytest
import torch

from uniapl.rollout import rollouts_from_vllm

EOS = 2


def out(ids, lps):
    return NS(outputs=[NS(token_ids=ids, logprobs=[{t: NS(logprob=lp), 99: NS(logprob=-9.0)} for t, lp in zip(ids, lps)])])


def test_tokens_logprobs_and_truncation():
    r = rollouts_from_vllm([out([5, 6, EOS], [-0.5, -1.0, -0.25]), out([7, 8], [-2.0, -3.0])], EOS)
    assert r.response_ids == [[5, 6, EOS], [7, 8]]
    assert torch.equal(r.logprobs[0], torch.tensor([-0.5, -1.0, -0.25]))
    assert torch.equal(r.logprobs[1], torch.tensor([-2.0, -3.0]))
    assert r.truncated.tolist() == [False, True]


def test_a_missing_logprob_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="logprobs=0"):
        rollouts_from_vllm([NS(outputs=[NS(token_ids=[5], logprobs=None)])], EOS)
    with pytest.raises(ValueError, match="sampled token 5"):
        rollouts_from_vllm([NS(outputs=[NS(token_ids=[5], logprobs=[{6: NS(logprob=-1.0)}])])], EOS)


def test_sync_weights_without_the_weight_transfer_api_is_a_clear_error():
    from uniapl.rollout import VLLMEngine
    eng = VLLMEngine.__new__(VLLMEngine)  # no vLLM: an engine whose LLM predates the weight-transfer API
    eng.llm, eng.weight_version, eng.in_process = NS(generate=None), 0, True
    with pytest.raises(RuntimeError, match="no weight-transfer API .*start_weight_update"):
        eng.sync_weights(torch.nn.Linear(2, 2))


def test_sync_weights_of_an_engine_in_another_process_is_a_clear_error():
    from uniapl.rollout import VLLMEngine
    api = {a: None for a in ("start_weight_update", "update_weights", "finish_weight_update", "get_weight_version")}
    eng = VLLMEngine.__new__(VLLMEngine)
    eng.llm, eng.weight_version, eng.in_process = NS(**api), 0, False
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        eng.sync_weights(torch.nn.Linear(2, 2))
