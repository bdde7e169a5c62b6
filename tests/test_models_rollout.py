import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from uniapl.config import ModelSpec
from uniapl.models import (Batch, build_policy, encode_prompt, encode_prompts, encode_response, encode_responses, pack,
                           pack_dense, scatter_rows, selected_logprobs, sequence_logprobs, train_tokenizer)
from uniapl import rollout
from uniapl.rollout import HFEngine, row_seed, sample_inverse_cdf

TEXTS = ["Write a note about cats. Answer in lowercase.", "cats are nice. i like cats a lot.",
         "<<Cats>>\nCats are simple to enjoy.", "Well, to be honest, I really think that cats are good."] * 20


def tiny(tmp_path):
    tok = train_tokenizer(TEXTS, 300)
    spec = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64)
    return tok, build_policy(spec, tok, seed=0)


def test_tokenizer_and_model_round_trip(tmp_path):
    tok, model = tiny(tmp_path)
    tok.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "m")
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    text = "<<Cats>>\nCats, dogs: 3.5 é!"
    assert tok2.decode(tok2(text, add_special_tokens=False)["input_ids"]) == text
    p = encode_prompt(tok2, "hi")
    assert tok2.decode(p) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([p])
    assert torch.equal(model(ids).logits, m2(ids).logits)


def test_pack_masks_response_only():
    ids, attn, lm = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert lm.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]


def test_pack_dense_layout():
    ids, pos, lm = pack_dense([[1, 2, 3], [4], [5]], [[6, 7], [8, 9, 10], [11]], pad_id=0, capacity=6)
    # lengths 5, 4, 2 -> first-fit decreasing: [seq0], [seq1, seq2]
    assert ids.tolist() == [[1, 2, 3, 6, 7, 0], [4, 8, 9, 10, 5, 11]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 1]]
    assert lm.tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 1]]
    ids, pos, lm = pack_dense([[1, 2]], [[3, 4, 5, 6]], pad_id=0, capacity=4)  # cut from the right
    assert ids.tolist() == [[1, 2, 3, 4]] and lm.tolist() == [[0, 0, 1, 1]]


def test_packed_nll_equals_padded_nll_and_grads(tmp_path):
    """The padding-free batch is the same batch: equal loss and gradients (no attention across sequences)."""
    import torch.nn.functional as F

    from uniapl.supervised import packed_response_nll

    def padded_nll(model, ids, attn, lmask):  # the reference: full logits of the right-padded batch
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        return (nll * lmask[:, 1:].reshape(-1)).sum() / lmask[:, 1:].sum()

    tok, model = tiny(tmp_path)
    prompts = [encode_prompt(tok, t) for t in TEXTS[:6]]
    responses = [encode_response(tok, t) for t in TEXTS[3:9]]
    padded = pack(prompts, responses, tok.pad_token_id)
    dense = pack_dense(prompts, responses, tok.pad_token_id, capacity=160)
    assert dense[0].shape[0] < len(prompts)  # sequences really share rows
    grads = []
    for nll, batch in ((padded_nll, padded), (packed_response_nll, dense)):
        model.zero_grad()
        loss = nll(model, *batch)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert abs(grads[0][0] - grads[1][0]) < 1e-5
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_sampling_is_per_row_reproducible(tmp_path):
    """A row's sample depends only on its seed: batch order and composition do not change it."""
    tok, model = tiny(tmp_path)
    eng = HFEngine(model, tok, None)
    prompts = [encode_prompt(tok, t) for t in ("cats", "Write a note about cats.", "hello there friend")]
    seeds = [row_seed(0, 3, i) for i in range(3)]
    a = eng.generate(prompts, seeds, 1.0, 12)
    b = eng.generate(prompts[::-1], seeds[::-1], 1.0, 12)
    c = eng.generate(prompts[1:2], seeds[1:2], 1.0, 12)
    assert a.response_ids == b.response_ids[::-1]
    assert a.response_ids[1] == c.response_ids[0]
    d = eng.generate(prompts, [row_seed(1, 3, i) for i in range(3)], 1.0, 12)
    assert d.response_ids != a.response_ids  # a different seed samples differently (P(equal) ~ 0)


def test_greedy_matches_transformers_generate(tmp_path):
    tok, model = tiny(tmp_path)
    model.eval()
    p = encode_prompt(tok, "Write a note about cats.")
    ours = HFEngine(model, tok, None).generate([p, encode_prompt(tok, "x")], None, 0.0, 10).response_ids[0]
    ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
    assert ours == ref[: len(ours)] and (len(ours) == 10 or ours[-1] == tok.eos_token_id)


def test_sampled_logprobs_match_a_full_forward(tmp_path):
    tok, model = tiny(tmp_path)
    eng = HFEngine(model, tok, None)
    p = encode_prompt(tok, "cats")
    out = eng.generate([p], [123], 1.0, 8)
    r = out.response_ids[0]
    ids, attn, lm = pack([p], [r], tok.pad_token_id)
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert torch.allclose(lp[len(p) - 1:], out.logprobs[0], atol=1e-4)


def test_encode_response_ends_with_eos(tmp_path):
    tok, _ = tiny(tmp_path)
    assert encode_response(tok, "cats")[-1] == tok.eos_token_id


def test_batched_encoding_equals_one_by_one(tmp_path):
    tok, _ = tiny(tmp_path)
    texts = TEXTS[:4] + ["", "é, \n\n* x"]
    assert encode_prompts(tok, texts) == [encode_prompt(tok, t) for t in texts]
    assert encode_responses(tok, texts) == [encode_response(tok, t) for t in texts]
    assert encode_prompts(tok, []) == [] and encode_responses(tok, []) == []


def test_selected_logprobs_and_entropy_equal_the_full_log_softmax_and_scatter_to_the_mask():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64).float().requires_grad_()
    labels = torch.randint(0, 11, (3, 5), generator=g)
    m = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    lp_sel, ent_sel = selected_logprobs(logits[m], labels[m], with_entropy=True)
    lp, ent = scatter_rows(lp_sel, m), scatter_rows(ent_sel, m)
    full = torch.log_softmax(logits, -1)
    ref = full.gather(-1, labels[..., None]).squeeze(-1)
    assert lp.dtype == torch.float32 and lp.shape == (3, 5)
    assert torch.allclose(lp[m], ref[m], atol=1e-6) and torch.all(lp[~m] == 0)
    p = full.exp()
    assert torch.allclose(ent[m], -(p * full).sum(-1)[m], atol=1e-5) and torch.all(ent[~m] == 0)
    assert not ent_sel.requires_grad
    w = torch.randn(3, 5, generator=g)  # gradients equal those of the full log-softmax restricted to the mask
    (g1,) = torch.autograd.grad((lp * w).sum(), logits)
    (g2,) = torch.autograd.grad((ref * w * m).sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6) and torch.all(g1[~m] == 0)
    assert selected_logprobs(logits[m], labels[m])[1] is None
    uniform = selected_logprobs(torch.zeros(1, 5), torch.tensor([0]), with_entropy=True)[1]
    assert torch.allclose(uniform, torch.tensor([math.log(5)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 700])
def test_selected_logprobs_blocks_are_bitwise_equal_to_one_block(n, dtype):
    """Working in row blocks is a speed change only: log-probs, entropies and the logits' gradient are
    bit-for-bit those of a single block (so recorded runs stay valid)."""
    g = torch.Generator().manual_seed(n)
    logits = (torch.randn(n, 301, generator=g) * 4).to(dtype)
    logits[0, :7] = -300.0  # underflowing probabilities take the entropy's p == 0 branch
    labels = torch.randint(0, 301, (n,), generator=g)
    w = torch.randn(n, generator=g)
    outs = []
    for rows in (n, 1, 7, 256):
        x = logits.clone().requires_grad_()
        lp, ent = selected_logprobs(x, labels, with_entropy=True, block_rows=rows)
        (lp * w).sum().backward()
        outs.append((lp.detach(), ent, x.grad))
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other))
    with pytest.raises(ValueError, match="logits has 1 rows but labels has 2"):
        selected_logprobs(logits[:1], torch.zeros(2, dtype=torch.long))


def test_sequence_logprobs_keep_only_response_positions_and_match_full_logits(tmp_path):
    """The LM head runs from the first response token on; the log-probs equal those of full logits there."""
    tok, model = tiny(tmp_path)
    prompts = [encode_prompt(tok, t) for t in TEXTS[:3]]
    responses = [encode_response(tok, t) for t in TEXTS[1:4]]
    b = Batch(*pack(prompts, responses, tok.pad_token_id))
    lp, ent = sequence_logprobs(model, b, with_entropy=True)
    full = torch.log_softmax(model(input_ids=b.ids, attention_mask=b.attn).logits[:, :-1].float(), -1)
    ref = torch.nn.functional.pad(full.gather(-1, b.ids[:, 1:, None])[..., 0], (1, 0))
    m = b.lmask.bool()
    assert m.any() and lp.shape == b.ids.shape == ent.shape
    assert torch.allclose(lp[m], ref[m], atol=1e-5)
    first = int(m.any(0).nonzero()[0])
    assert first > 1 and torch.all(lp[:, :first] == 0)  # columns before any response token are never computed


def test_inverse_cdf_sampling_follows_the_distribution_and_never_draws_a_zero_probability_token():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    logp = torch.log(probs).expand(4000, 5).contiguous()
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000  # stratified uniforms
    draws = sample_inverse_cdf(logp, u)
    freq = torch.bincount(draws, minlength=5).float() / 4000
    assert torch.allclose(freq, probs, atol=1e-3)
    assert freq[1] == 0 and freq[4] == 0
    edge = sample_inverse_cdf(torch.log(probs)[None].expand(2, 5), torch.tensor([1e-12, 1 - 1e-12], dtype=torch.float64))
    assert edge.tolist() == [0, 3]


def test_hash_uniforms_are_uniform_and_depend_only_on_seed_and_position():
    seeds = torch.tensor([row_seed(0, 0, i) for i in range(20000)])
    u = rollout._hash_uniform(seeds, 3)
    assert u.shape == (20000,) and 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    assert torch.equal(rollout._hash_uniform(seeds[5:9], 3), u[5:9])
    assert not torch.equal(rollout._hash_uniform(seeds, 4), u)


def test_dropping_finished_rows_early_or_late_gives_the_same_rollouts(tmp_path, monkeypatch):
    """Finished rows leave the decoding batch in groups (COMPACT_FRACTION); when does not change any output."""
    tok, model = tiny(tmp_path)
    eng = HFEngine(model, tok, None)
    prompts = [encode_prompt(tok, t) for t in TEXTS[:12]]
    seeds = [row_seed(0, 1, i) for i in range(12)]
    outs = {}
    for frac in (0.0, 0.25, 10.0):  # 0: drop at every end-of-turn; 10: never drop
        monkeypatch.setattr(rollout, "COMPACT_FRACTION", frac)
        outs[frac] = (eng.generate(prompts, seeds, 1.0, 24), eng.generate(prompts, None, 0.0, 24))
    lens = {len(r) for r in outs[0.0][0].response_ids}
    assert len(lens) > 2, "the rows should end at different steps for this test to mean anything"
    for frac in (0.25, 10.0):
        for a, b in zip(outs[0.0], outs[frac]):
            assert a.response_ids == b.response_ids and torch.equal(a.truncated, b.truncated)
            assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.logprobs, b.logprobs))


def test_fused_kv_decoder_matches_the_transformers_forward(tmp_path):
    """The fused preallocated-cache decoder gives transformers' logits on left-padded batches, prefill and
    steps."""
    from uniapl import qwen3_fused
    tok = train_tokenizer(TEXTS, 300)
    spec = ModelSpec(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64)
    model = build_policy(spec, tok, seed=0).eval()
    assert qwen3_fused.supports(model)
    prompts = [encode_prompt(tok, t) for t in TEXTS[:3]]
    B, L = len(prompts), max(map(len, prompts))
    assert len({len(p) for p in prompts}) > 1  # really left-padded
    ids = torch.full((B, L), tok.pad_token_id)
    attn = torch.zeros((B, L), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):], attn[b, L - len(p):] = torch.tensor(p), 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    follow = torch.randint(5, 300, (B, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dec = qwen3_fused.KVDecoder(model, B, L + 4, "cpu")
        got = [dec.prefill(ids, attn, pos)]
        for t in range(3):
            got.append(dec.step(follow[:, t], pos[:, -1:] + 1 + t))
        full_ids = torch.cat([ids, follow[:, :3]], 1)
        full_attn = torch.cat([attn, torch.ones((B, 3), dtype=torch.long)], 1)
        ref = model(input_ids=full_ids, attention_mask=full_attn, position_ids=(full_attn.cumsum(-1) - 1).clamp(min=0)).logits
    for t, g in enumerate(got):
        assert torch.allclose(g, ref[:, L - 1 + t], atol=1e-4), t
    with torch.no_grad():  # dropping a row keeps the others' caches
        dec.select(torch.tensor([0, 2]))
        kept = dec.step(follow[[0, 2], 3], pos[[0, 2], -1:] + 4)
        ref4 = model(input_ids=torch.cat([ids, follow], 1)[[0, 2]], attention_mask=torch.cat(
            [attn, torch.ones((B, 4), dtype=torch.long)], 1)[[0, 2]]).logits[:, -1]
    assert torch.allclose(kept, ref4, atol=1e-4)


def test_fast_and_transformers_decoding_agree(tmp_path):
    tok, model = tiny(tmp_path)
    prompts = [encode_prompt(tok, t) for t in TEXTS[:10]]
    seeds = [row_seed(2, 0, i) for i in range(10)]
    for s, temp in ((seeds, 1.0), (None, 0.0)):
        a = HFEngine(model, tok, None, fast=True).generate(prompts, s, temp, 20)
        b = HFEngine(model, tok, None, fast=False).generate(prompts, s, temp, 20)
        assert a.response_ids == b.response_ids and torch.equal(a.truncated, b.truncated)
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a.logprobs, b.logprobs))


def test_sequence_logprobs_head_on_selected_rows_equals_the_full_forward_path(tmp_path):
    """Plain-head models run the LM head on response rows only; any other module (e.g. a DeepSpeed engine)
    goes through its forward. Both give the same log-probs, entropies and gradients."""
    from uniapl.models import plain_head
    tok, model = tiny(tmp_path)

    class Wrapped(torch.nn.Module):  # no config: the generic path
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**kw)
    wrapped = Wrapped(model)
    assert plain_head(model) is not None and plain_head(wrapped) is None
    b = Batch(*pack([encode_prompt(tok, t) for t in TEXTS[:4]], [encode_response(tok, t) for t in TEXTS[2:6]],
                    tok.pad_token_id))
    out = []
    for mod in (model, wrapped):
        model.zero_grad()
        lp, ent = sequence_logprobs(mod, b, with_entropy=True)
        (lp * b.lmask).sum().backward()
        out.append((lp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    (lp1, e1, g1), (lp2, e2, g2) = out
    assert torch.allclose(lp1, lp2, atol=1e-5) and torch.allclose(e1, e2, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(g1, g2))
