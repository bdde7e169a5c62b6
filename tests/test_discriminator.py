"""Tests for the POLAR-style discriminator (tiny Qwen3 backbone, CPU, seconds)."""

import json
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config

from uniapl.discriminator import (
    Discriminator,
    format_polar_input,
    format_split,
    gail_update,
    pairwise_accuracy,
    pairwise_loss,
    train_contrastive,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster and avoids oversubscribing shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = ["alpha", "beta", "gamma", "delta", "red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]


def make_tokenizer():
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(WORDS), "user reference candidate", "the a of and is what"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def make_disc(max_length=128, seed=0):
    torch.manual_seed(seed)
    tok = make_tokenizer()
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return Discriminator.from_config(cfg, tok, style="embedded", max_length=max_length)


# ------------------------------------------------------------------ formatting
def test_polar_format_exact():
    s = format_polar_input("What is the capital of China?", "Beijing.", "Shanghai.")
    assert s == (
        "What is the capital of China?\nBeijing.<|reward|>"
        "What is the capital of China?\nShanghai.[UNUSED_TOKEN_130]"
    )
    # chat-message lists are flattened by joining contents with "\n" (POLAR README format)
    msgs = format_polar_input(
        [{"role": "user", "content": "What is the capital of China?"}],
        [{"role": "assistant", "content": "Beijing."}],
        [{"role": "assistant", "content": "Shanghai."}],
    )
    assert msgs == s
    assert format_polar_input("P", "R", "C", wrapper="pretrain") == "PR<|reward|>PC[UNUSED_TOKEN_130]"
    assert format_polar_input("P", "", "C") == "P<|reward|>P\nC[UNUSED_TOKEN_130]"


def test_embedded_format_exact():
    s = format_polar_input("q?", "ref", "cand", style="embedded")
    assert s == (
        "<|im_start|>user\nq?<|im_end|>\n<|im_start|>reference\nref<|im_end|>\n"
        "<|im_start|>candidate\ncand<|im_end|>"
    )
    ctx, cand = format_split("q?", "ref", "cand", style="embedded")
    assert ctx + cand == s and cand.startswith("<|im_start|>candidate")
    with pytest.raises(ValueError):
        format_polar_input("a", "b", "c", style="nope")


# ------------------------------------------------------------------ model
def test_score_shape_padding_invariance_and_freeze():
    disc = make_disc()
    assert disc.frozen and not disc.training
    prompts = ["what is red", "what is the cat", "sun"]
    refs = ["alpha red green", "beta", "moon tree tree tree dog"]
    cands = ["alpha blue", "beta cat dog sun moon tree red green blue", "gamma"]
    s = disc.score(prompts, refs, cands)
    assert s.shape == (3,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    alone = disc.score(prompts[2:], refs[2:], cands[2:])  # shortest: heavily padded in the batch
    assert torch.allclose(alone, s[2:], atol=1e-5)
    # batch_size chunking does not change anything either
    assert torch.allclose(disc.score(prompts, refs, cands, batch_size=1), s, atol=1e-5)
    # frozen: no graph, no grads
    assert all(not p.requires_grad for p in disc.parameters())
    batch = disc.encode(prompts, refs, cands)
    assert not disc(**batch).requires_grad


def test_truncation_keeps_candidate():
    disc = make_disc(max_length=16)
    long_prompt = " ".join(WORDS * 5)
    batch = disc.encode([long_prompt], ["alpha beta"], ["cat dog"])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 16
    tail = disc.tokenizer.encode("<|im_start|>candidate\ncat dog<|im_end|>", add_special_tokens=False)
    assert ids[-len(tail):] == tail


def test_save_load_roundtrip(tmp_path):
    disc = make_disc()
    args = (["what is red", "dog"], ["alpha red", "beta moon moon"], ["alpha", "cat sun"])
    before = disc.score(*args)
    disc.save(tmp_path / "d")
    files = {p.name for p in (tmp_path / "d").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert json.loads((tmp_path / "d" / "discriminator.json").read_text())["style"] == "embedded"
    again = Discriminator.load(tmp_path / "d")
    assert again.frozen and again.style == "embedded" and again.max_length == disc.max_length
    assert torch.allclose(again.score(*args), before, atol=1e-6)


def test_pairwise_loss():
    assert pairwise_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(0.6931, abs=1e-4)
    assert pairwise_loss(torch.full((2,), 10.0), torch.zeros(2)).item() < 1e-4


def toy_triples(n, seed):
    """Two policies: 'alpha' and 'beta' stylists. Positive shares the reference's style token."""
    rng = random.Random(seed)
    content = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    out = []
    for _ in range(n):
        style, other = rng.sample(["alpha", "beta"], 2)
        words = lambda: " ".join(rng.choices(content, k=rng.randint(1, 3)))  # noqa: E731
        out.append({
            "prompt": "what is " + words(),
            "reference": f"{style} {words()}",
            "positive": f"{style} {words()}",
            "negative": f"{other} {words()}",
        })
    return out


def test_train_contrastive_separates_toy_policies():
    disc = make_disc(seed=1)
    train, test = toy_triples(128, seed=0), toy_triples(64, seed=1)
    acc0 = pairwise_accuracy(disc, test)
    assert 0.2 < acc0 < 0.8  # ~ chance before training
    logs = []
    m = train_contrastive(disc, train, steps=40, lr=3e-3, batch_size=16, seed=0, log_every=20,
                          callback=lambda step, mm: logs.append(step))
    assert logs == [20, 40]
    assert disc.frozen
    assert m["pairwise_accuracy"] > 0.9
    assert pairwise_accuracy(disc, test) > 0.9


def test_train_contrastive_deterministic():
    trip = toy_triples(32, seed=3)
    m1 = train_contrastive(make_disc(seed=2), trip, steps=5, lr=1e-3, batch_size=8, seed=7, log_every=5)
    m2 = train_contrastive(make_disc(seed=2), trip, steps=5, lr=1e-3, batch_size=8, seed=7, log_every=5)
    assert m1 == m2


def test_gail_update_step():
    disc = make_disc(seed=3)
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    w0 = [p.clone() for p in disc.parameters()]
    m = gail_update(disc, opt, ["what is red"] * 2, ["alpha red", "alpha blue"], ["alpha cat", "alpha dog"],
                    ["beta cat", "beta sun"])
    assert set(m) >= {"disc_loss", "disc_accuracy"} and m["disc_loss"] > 0
    assert disc.frozen  # previous state restored
    assert any(not torch.equal(a, b) for a, b in zip(w0, disc.parameters()))


def test_from_polar_without_trust_remote_code_raises(tmp_path):
    cfg = {
        "model_type": "internlm2",
        "architectures": ["InternLM2ForRewardModel"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception) as ei:
        Discriminator.from_polar(str(tmp_path), trust_remote_code=False)
    assert "trust_remote_code" in str(ei.value)
    assert "discriminator.trust_remote_code: true" in str(ei.value)


def test_polar_style_encoding_ends_with_reward_token():
    disc = make_disc(max_length=24)
    tok = disc.tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<|reward|>", "[UNUSED_TOKEN_130]"]})
    disc.backbone.resize_token_embeddings(len(tok))
    disc.style = "polar"
    disc.polar_max_response_length = 6
    reward_id = tok.convert_tokens_to_ids("[UNUSED_TOKEN_130]")
    sep_id = tok.convert_tokens_to_ids("<|reward|>")
    batch = disc.encode(["what is red", " ".join(WORDS * 3)], ["alpha red", "beta"], ["alpha", " ".join(WORDS)])
    for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        n = sum(mask)
        assert n <= 24 and ids[n - 1] == reward_id and sep_id in ids[:n]
    # short example is untouched: p \n r <|reward|> p \n c [UNUSED_TOKEN_130]
    ids0 = batch["input_ids"][0, : batch["attention_mask"][0].sum()].tolist()
    assert ids0 == tok.encode(format_polar_input("what is red", "alpha red", "alpha"), add_special_tokens=True)
    assert disc.score(["what is red"], ["alpha red"], ["alpha"]).shape == (1,)
