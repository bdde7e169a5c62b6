"""Teacher demonstrations: the SFT dataset of every method, from the embedded teacher or a served model."""

from __future__ import annotations

from uniapl import ifeval
from uniapl.models import autocast_dtype, decode_responses, encode_prompts, load_policy, load_tokenizer, strip_thinking
from uniapl.rollout import HFEngine, row_seed


def _record(row: dict, text: str, n_tokens: int, truncated: bool, logprob: float | None) -> dict:
    strict, loose = ifeval.check_response(row["prompt"], row["instruction_id_list"], row["kwargs"], text)
    return {"key": row["key"], "prompt": row["prompt"], "instruction_id_list": row["instruction_id_list"],
            "kwargs": row["kwargs"], "response": text, "n_tokens": n_tokens, "truncated": truncated,
            "teacher_logprob": logprob, "strict": strict, "loose": loose, "pass": all(strict)}


def generate_demos(cfg, teacher: str, rows: list[dict]) -> list[dict]:
    """One sample per prompt at ``cfg.temperature``; seeds from (cfg.seed, 0, prompt index)."""
    if cfg.backend == "openai":
        return openai_demos(cfg, rows)
    tok = load_tokenizer(teacher)
    prompts = encode_prompts(tok, [r["prompt"] for r in rows])
    seeds = [row_seed(cfg.seed, 0, i) for i in range(len(rows))]
    if cfg.backend == "vllm":
        from uniapl.rollout import VLLMEngine
        engine = VLLMEngine(teacher, tok, seed=cfg.seed)
    else:
        engine = HFEngine(load_policy(teacher), tok, autocast_dtype(cfg.dtype))
    out = engine.generate(prompts, seeds, cfg.temperature, cfg.max_new_tokens)
    texts = decode_responses(tok, out.response_ids)
    return [_record(r, text, len(ids), bool(tr), float(lp.sum()))
            for r, text, ids, lp, tr in zip(rows, texts, out.response_ids, out.logprobs, out.truncated.tolist())]


def openai_request(cfg, row: dict, index: int) -> dict:
    """The chat-completions request body for one prompt (pure: unit-tested without a server)."""
    return {"model": cfg.openai_model, "messages": [{"role": "user", "content": row["prompt"]}],
            "temperature": cfg.temperature, "max_tokens": cfg.max_new_tokens,
            "seed": row_seed(cfg.seed, 0, index) % (1 << 31), "logprobs": True}


def parse_openai_response(row: dict, resp: dict) -> dict:
    """Turn a chat-completions JSON response into a demonstration record."""
    choice = resp["choices"][0]
    text = strip_thinking(choice["message"]["content"] or "")
    lps = (choice.get("logprobs") or {}).get("content") or []
    return _record(row, text, len(lps) if lps else resp.get("usage", {}).get("completion_tokens", 0),
                   choice.get("finish_reason") == "length", sum(t["logprob"] for t in lps) if lps else None)


def openai_demos(cfg, rows: list[dict]) -> list[dict]:  # paper scale; verified on GPU: no
    from openai import OpenAI
    client = OpenAI(base_url=cfg.openai_base_url, api_key="EMPTY")
    return [parse_openai_response(r, client.chat.completions.create(**openai_request(cfg, r, i)).model_dump())
            for i, r in enumerate(rows)]
