"""The fused Qwen3 forward (uniapl.qwen3_fused) computes transformers' function: hidden states, gradients,
sequence log-probs and discriminator scores; wrappers and other architectures take transformers' path."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForSequenceClassification

from uniapl import qwen3_fused as QF
from uniapl.config import ModelSpec
from uniapl.discriminator import Discriminator
from uniapl.models import Batch, build_policy, encode_prompt, encode_response, pack, sequence_logprobs, train_tokenizer

TEXTS = ["Write a note about cats. Answer in lowercase.", "cats are nice. i like cats a lot.",
         "Write about dogs in two paragraphs.", "dogs are loyal.\n\n***\n\ndogs are fun.",
         "A title <<x>> and more words here.", "no commas please just words"]


def _model(heads=4, kv=2):
    tok = train_tokenizer(TEXTS * 4, 300)
    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=heads, num_kv_heads=kv, head_dim=8, intermediate_size=64)
    return tok, build_policy(spec, tok, seed=0)


def _batch(tok):
    b = Batch(*pack([encode_prompt(tok, t) for t in TEXTS[:4]], [encode_response(tok, t) for t in TEXTS[2:6]],
                    tok.pad_token_id))
    assert len(set(b.attn.sum(1).tolist())) > 1  # really right-padded
    return b


@pytest.mark.parametrize("heads,kv", [(4, 2), (4, 4), (4, 1)])
def test_hidden_states_and_gradients_equal_transformers(heads, kv):
    tok, model = _model(heads, kv)
    torch.manual_seed(1)
    for p in model.parameters():  # non-trivial norm weights (they start at 1)
        p.data.add_(0.05 * torch.randn_like(p))
    assert QF.supports(model)
    b = _batch(tok)
    valid = b.attn.bool()
    w = torch.randn(b.ids.shape + (32,))
    out = []
    for fused in (False, True):
        model.zero_grad()
        h = QF.hidden_states(model, b.ids) if fused else model.model(input_ids=b.ids, attention_mask=b.attn).last_hidden_state
        (h * w * valid[..., None]).sum().backward()
        out.append((h.detach()[valid], [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    for g0, g1 in zip(out[0][1], out[1][1]):
        assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-4 * float(g0.abs().max()))


def test_sequence_logprobs_take_the_fused_path_and_agree():
    tok, model = _model()
    b = _batch(tok)
    calls = []
    real = QF.hidden_states
    try:
        QF.hidden_states = lambda *a, **k: calls.append(1) or real(*a, **k)
        lp_fused, ent_fused = sequence_logprobs(model, b, with_entropy=True)
    finally:
        QF.hidden_states = real
    assert calls, "a plain Qwen3 should go through the fused forward"
    logits = model(input_ids=b.ids, attention_mask=b.attn).logits[:, :-1]
    ref = torch.log_softmax(logits, -1).gather(-1, b.ids[:, 1:, None])[..., 0] * b.lmask[:, 1:]
    assert torch.allclose(lp_fused[:, 1:], ref, atol=1e-5)


def test_wrappers_and_other_models_are_not_claimed():
    tok, model = _model()

    class Engine(torch.nn.Module):  # forwards attribute lookups, as DeepSpeed's engine does
        def __init__(self, m):
            super().__init__()
            self.module = m

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)
    assert Engine(model).config.model_type == "qwen3" and not QF.supports(Engine(model))
    model.config.hidden_act = "gelu"
    assert not QF.supports(model)


def test_discriminator_scores_equal_the_transformers_classifier():
    tok, _ = _model()
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, intermediate_size=64, num_labels=1,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    disc = Discriminator(Qwen3ForSequenceClassification(cfg), tok, style="embedded", max_length=128)
    enc = disc.encode(TEXTS[:3], TEXTS[1:4], TEXTS[3:6])
    assert len(set(enc["attention_mask"].sum(1).tolist())) > 1
    fused = disc(**enc)
    ref = disc.backbone(**enc).logits[:, 0].float()
    assert torch.allclose(fused, ref, atol=1e-5)
