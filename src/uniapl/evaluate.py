"""Generate for a model on a split and score it with IFEval's four metrics (plus sampled accuracy)."""

from __future__ import annotations

import torch

from uniapl import ifeval
from uniapl.models import autocast_dtype, decode_response, decode_responses, encode_prompt
from uniapl.rollout import HFEngine, row_seed


def evaluate_model(model, tokenizer, rows: list[dict], max_new_tokens: int, n_sampled: int, temperature: float,
                   seed: int, batch_size: int = 200, autocast_dtype: torch.dtype | None = None) -> tuple[dict, list[dict]]:
    """Greedy responses scored as official IFEval, plus ``n_sampled`` samples per prompt at ``temperature``.

    Returns (metrics, response rows in IFEval's format with ``n_tokens``, ``truncated``, ``pass`` and
    ``pass_loose`` (the greedy response's prompt-level verdicts) and ``sampled``).
    """
    engine = HFEngine(model, tokenizer, autocast_dtype)
    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    greedy = engine.generate(prompts, None, 0.0, max_new_tokens, batch_size)
    out_rows = []
    texts = decode_responses(tokenizer, greedy.response_ids)
    for r, ids, text, trunc in zip(rows, greedy.response_ids, texts, greedy.truncated.tolist()):
        out_rows.append({"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
                         "kwargs": r["kwargs"], "response": text, "n_tokens": len(ids),
                         "truncated": trunc, "sampled": []})
    verdicts: list = []
    metrics = ifeval.score_rows(out_rows, verdicts)
    for r, (strict, loose) in zip(out_rows, verdicts):  # per prompt: the paired tests of the claims read them
        r["pass"], r["pass_loose"] = all(strict), all(loose)
    sampled_pass = []
    if n_sampled:  # all samples in one call: finished rows leave the batch, so one big batch decodes fastest
        seeds = [row_seed(seed, 10_000 + k, i) for k in range(n_sampled) for i in range(len(rows))]
        s = engine.generate(prompts * n_sampled, seeds, temperature, max_new_tokens, batch_size * n_sampled)
        for j, (ids, text) in enumerate(zip(s.response_ids, decode_responses(tokenizer, s.response_ids))):
            r = out_rows[j % len(rows)]
            strict = ifeval.check_strict(r["prompt"], r["instruction_id_list"], r["kwargs"], text)
            r["sampled"].append({"response": text, "n_tokens": len(ids), "pass": all(strict)})
            sampled_pass.append(all(strict))
    metrics["prompt_strict_sampled"] = sum(sampled_pass) / len(sampled_pass) if sampled_pass else float("nan")
    metrics["mean_len"] = sum(r["n_tokens"] for r in out_rows) / len(out_rows)
    metrics["truncated"] = sum(r["truncated"] for r in out_rows) / len(out_rows)
    return metrics, out_rows


def decode(tokenizer, ids: list[int]) -> str:
    """The scored text of a response (:func:`~uniapl.models.decode_response`: any thinking stripped)."""
    return decode_response(tokenizer, ids)


@torch.no_grad()
def pass_at_k(model, tokenizer, rows: list[dict], k: int, temperature: float, max_new_tokens: int, seed: int,
              autocast_dtype: torch.dtype | None = None) -> float:
    """Share of prompts where at least one of ``k`` samples passes every instruction (strict)."""
    engine = HFEngine(model, tokenizer, autocast_dtype)
    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    hit = [False] * len(rows)
    for j in range(k):
        s = engine.generate(prompts, [row_seed(seed, 20_000 + j, i) for i in range(len(rows))], temperature, max_new_tokens)
        for i, (r, ids) in enumerate(zip(rows, s.response_ids)):
            if not hit[i]:
                hit[i] = all(ifeval.check_strict(r["prompt"], r["instruction_id_list"], r["kwargs"], decode(tokenizer, ids)))
    return sum(hit) / len(hit)


def evaluate_and_score(params, model, tokenizer, name: str, world_dir: str = "data/world",
                       results_dir: str = "results", teacher_dir: str | None = "models/teacher",
                       splits=("in_domain", "ood"), log=print, n_sampled: int | None = None) -> dict:
    """Everything the analyses read about one model, written under ``results_dir``:

    * ``eval/<name>/<split>.json`` (+ ``.jsonl`` responses): IFEval metrics (``evaluate_model``);
    * ``logp/<name>/in_domain.json``: mean token log-prob of each greedy in-domain response, scored by
      the teacher (``teacher_scored``) and by the model itself (``self_scored``);
    * ``ppl/<name>.json``: perplexity on held-out base-corpus text (general-ability retention).

    ``teacher_dir=None`` scores with ``model`` itself (the teacher's own row). ``n_sampled``: samples per
    prompt (None: ``params.evaluate.n_sampled``).
    """
    import time
    from pathlib import Path

    from uniapl import analysis as A
    from uniapl.io import read_jsonl, write_json, write_jsonl
    from uniapl.models import load_policy, load_tokenizer
    e, out = params.evaluate, {}
    res = Path(results_dir)
    for split in splits:
        t0 = time.time()
        rows = read_jsonl(f"{world_dir}/{split}.jsonl", keys=("key", "prompt", "instruction_id_list", "kwargs"))
        metrics, out_rows = evaluate_model(model, tokenizer, rows, e.max_new_tokens,
                                           e.n_sampled if n_sampled is None else n_sampled, e.temperature,
                                           e.seed, e.batch_size, autocast_dtype(e.dtype))
        metrics["seconds"] = round(time.time() - t0, 1)
        write_jsonl(res / "eval" / name / f"{split}.jsonl", out_rows)
        write_json(res / "eval" / name / f"{split}.json", metrics)
        out[split] = metrics
        log(name, split, {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()})
    greedy = read_jsonl(res / "eval" / name / "in_domain.jsonl")
    prompts, responses = [r["prompt"] for r in greedy], [r["response"] for r in greedy]
    self_scored = A.score_mean_logprobs(model, tokenizer, prompts, responses)
    heldout = [(r["prompt"], r["response"]) for r in read_jsonl(f"{world_dir}/base_heldout.jsonl",
                                                                              keys=("prompt", "response"))]
    write_json(res / "ppl" / f"{name}.json", {"ppl": A.perplexity(model, tokenizer, heldout)})
    if teacher_dir is None:
        teacher_scored = self_scored
    else:
        teacher = load_policy(teacher_dir).to(next(model.parameters()).device)
        teacher_scored = A.score_mean_logprobs(teacher, load_tokenizer(teacher_dir), prompts, responses)
    write_json(res / "logp" / name / "in_domain.json",
               {"scorer": "teacher", "teacher_scored": teacher_scored, "self_scored": self_scored})
    return out
