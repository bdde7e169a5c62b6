"""Generate for a model on a split and score it with IFEval's four metrics (plus sampled accuracy)."""

from __future__ import annotations

import torch

from uniapl import ifeval
from uniapl.models import encode_prompt
from uniapl.rollout import HFEngine, row_seed


def evaluate_model(model, tokenizer, rows: list[dict], max_new_tokens: int, n_sampled: int, temperature: float,
                   seed: int, batch_size: int = 200) -> tuple[dict, list[dict]]:
    """Greedy responses scored as official IFEval, plus ``n_sampled`` samples per prompt at ``temperature``.

    Returns (metrics, response rows in IFEval's format with ``n_tokens``, ``truncated``, ``sampled``).
    """
    engine = HFEngine(model, tokenizer)
    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    greedy = engine.generate(prompts, None, 0.0, max_new_tokens, batch_size)
    out_rows = []
    for r, ids, trunc in zip(rows, greedy.response_ids, greedy.truncated.tolist()):
        out_rows.append({"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
                         "kwargs": r["kwargs"], "response": decode(tokenizer, ids), "n_tokens": len(ids),
                         "truncated": trunc, "sampled": []})
    metrics = ifeval.score_rows(out_rows)
    sampled_pass = []
    for k in range(n_sampled):
        seeds = [row_seed(seed, 10_000 + k, i) for i in range(len(rows))]
        s = engine.generate(prompts, seeds, temperature, max_new_tokens, batch_size)
        for r, ids in zip(out_rows, s.response_ids):
            text = decode(tokenizer, ids)
            strict, _ = ifeval.check_response(r["prompt"], r["instruction_id_list"], r["kwargs"], text)
            r["sampled"].append({"response": text, "n_tokens": len(ids), "pass": all(strict)})
            sampled_pass.append(all(strict))
    metrics["prompt_strict_sampled"] = sum(sampled_pass) / len(sampled_pass) if sampled_pass else float("nan")
    metrics["mean_len"] = sum(r["n_tokens"] for r in out_rows) / len(out_rows)
    metrics["truncated"] = sum(r["truncated"] for r in out_rows) / len(out_rows)
    return metrics, out_rows


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


@torch.no_grad()
def pass_at_k(model, tokenizer, rows: list[dict], k: int, temperature: float, max_new_tokens: int, seed: int) -> float:
    """Share of prompts where at least one of ``k`` samples passes every instruction (strict)."""
    engine = HFEngine(model, tokenizer)
    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    hit = [False] * len(rows)
    for j in range(k):
        s = engine.generate(prompts, [row_seed(seed, 20_000 + j, i) for i in range(len(rows))], temperature, max_new_tokens)
        for i, (r, ids) in enumerate(zip(rows, s.response_ids)):
            if not hit[i]:
                hit[i] = all(ifeval.check_response(r["prompt"], r["instruction_id_list"], r["kwargs"], decode(tokenizer, ids))[0])
    return sum(hit) / len(hit)
