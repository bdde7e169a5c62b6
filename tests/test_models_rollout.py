import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from uniapl.config import ModelSpec
from uniapl.models import build_policy, encode_prompt, encode_response, pack, train_tokenizer
from uniapl.rollout import HFEngine, row_seed

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


def test_sequence_logprobs_keep_only_response_positions_and_match_full_logits(tmp_path):
    """The LM head runs from the first response token on; the log-probs equal those of full logits there."""
    from uniapl.trainer import Batch, sequence_logprobs
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
