"""Teacher demonstrations: the SFT dataset of every method, from the embedded teacher or a served model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from uniapl import ifeval
from uniapl.errors import UserError
from uniapl.io import atomic_path
from uniapl.models import autocast_dtype, decode_responses, encode_prompts, load_policy, load_tokenizer, strip_thinking
from uniapl.rollout import HFEngine, row_seed


def _record(row: dict, text: str, n_tokens: int, truncated: bool, logprob: float | None) -> dict:
    strict, loose = ifeval.check_response(row["prompt"], row["instruction_id_list"], row["kwargs"], text)
    return {"key": row["key"], "prompt": row["prompt"], "instruction_id_list": row["instruction_id_list"],
            "kwargs": row["kwargs"], "response": text, "n_tokens": n_tokens, "truncated": truncated,
            "teacher_logprob": logprob, "strict": strict, "loose": loose, "pass": all(strict)}


def generate_demos(cfg, teacher: str, rows: list[dict], work_dir: str | Path | None = None) -> list[dict]:
    """``cfg.n_samples`` samples per prompt at ``cfg.temperature``, prompt-major (each record has ``sample``);
    seeds from (cfg.seed, sample, prompt index), so sample 0 is the same for any ``n_samples``.

    ``work_dir``: the openai backend's shard directory (resume); None: no resume."""
    if cfg.backend == "openai":
        return [dict(d, sample=0) for d in openai_demos(cfg, rows, work_dir)]
    tok = load_tokenizer(teacher)
    k = cfg.n_samples
    prompts = [p for p in encode_prompts(tok, [r["prompt"] for r in rows]) for _ in range(k)]
    seeds = [row_seed(cfg.seed, j, i) for i in range(len(rows)) for j in range(k)]
    rows = [dict(r, sample=j) for r in rows for j in range(k)]
    if cfg.backend == "vllm":
        from uniapl.rollout import VLLMEngine
        engine = VLLMEngine(teacher, tok, seed=cfg.seed)
    else:
        engine = HFEngine(load_policy(teacher), tok, autocast_dtype(cfg.dtype))
    out = engine.generate(prompts, seeds, cfg.temperature, cfg.max_new_tokens)
    texts = decode_responses(tok, out.response_ids)
    return [dict(_record(r, text, len(ids), bool(tr), float(lp.sum())), sample=r["sample"])
            for r, text, ids, lp, tr in zip(rows, texts, out.response_ids, out.logprobs, out.truncated.tolist())]


def demo_pools(demos: list[dict], only_passing: bool) -> tuple[list[dict], list[dict]]:
    """(RL prompt pool, SFT pool) from the teacher's samples (records with ``key``, ``sample``, ``pass``).

    RL pool: one row per prompt, every prompt (never filtered); its ``response`` is the discriminator's
    reference, the prompt's first passing sample (else its first sample), and ``alt_response`` another sample
    of the same prompt when there is one (the co-trained discriminator's positive). SFT pool: every passing
    sample (``only_passing``), else each prompt's first sample."""
    by_key: dict[str, list[dict]] = {}
    for d in demos:
        by_key.setdefault(d.get("key", d["prompt"]), []).append(d)
    rl, sft = [], []
    for group in by_key.values():
        group = sorted(group, key=lambda d: d.get("sample", 0))
        ref = next((d for d in group if d.get("pass")), group[0])
        alt = next((d for d in group if d is not ref), None)
        rl.append(dict(ref, alt_response=None if alt is None else alt["response"]))
        sft += [d for d in group if d["pass"]] if only_passing else [group[0]]
    return rl, sft


def openai_request(cfg, row: dict, index: int) -> dict:
    """The chat-completions request body for one prompt, as sent (pure: unit-tested without a server).

    Every sampling setting is explicit, neutral ones included, so the server's defaults (vLLM applies the
    model's generation_config.json to what a request leaves out) cannot change the sample."""
    return {"model": cfg.openai_model, "messages": [{"role": "user", "content": row["prompt"]}],
            "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k, "min_p": 0.0,
            "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "n": 1,
            "max_tokens": cfg.max_new_tokens, "seed": row_seed(cfg.seed, 0, index) % (1 << 31), "logprobs": True}


def parse_openai_response(row: dict, resp: dict) -> dict:
    """Turn a chat-completions JSON response into a demonstration record."""
    choice = resp["choices"][0]
    text = strip_thinking(choice["message"]["content"] or "")
    lps = (choice.get("logprobs") or {}).get("content") or []
    return _record(row, text, len(lps) if lps else resp.get("usage", {}).get("completion_tokens", 0),
                   choice.get("finish_reason") == "length", sum(t["logprob"] for t in lps) if lps else None)


def _shard_stamp(cfg, rows: list[dict]) -> str:
    """What a shard directory was made for: the request settings and the rows (key, prompt, instructions and
    kwargs: a record's verdicts depend on them), hashed."""
    h = hashlib.sha256(json.dumps([{k: r.get(k) for k in ("key", "prompt", "instruction_id_list", "kwargs")}
                                   for r in rows], sort_keys=True).encode()).hexdigest()
    req = {k: v for k, v in openai_request(cfg, {"prompt": ""}, 0).items() if k not in ("messages", "seed")}
    return json.dumps({"request": req, "seed": cfg.seed, "shard_size": cfg.openai_shard_size, "n": len(rows),
                       "rows_sha256": h}, sort_keys=True)


def openai_demos(cfg, rows: list[dict], work_dir: str | Path | None = None) -> list[dict]:
    """Demonstrations from an OpenAI-compatible server (``vllm serve ...``; tested against
    ``uniapl.chat_server`` on loopback): ``openai_concurrency`` requests in flight, the client's retries with
    back-off, and shards of ``openai_shard_size`` prompts written to ``work_dir`` as they finish, so a
    restarted stage asks only for the missing ones. Records come back in prompt order."""
    import openai
    key = os.environ.get(cfg.openai_api_key_env) or "EMPTY"
    client = openai.OpenAI(base_url=cfg.openai_base_url, api_key=key, max_retries=cfg.openai_max_retries,
                           timeout=cfg.openai_timeout)

    def one(i: int) -> dict:
        body = openai_request(cfg, rows[i], i)
        try:
            resp = client.chat.completions.create(model=body["model"], messages=body["messages"],
                                                  extra_body={k: v for k, v in body.items() if k not in ("model", "messages")})
        except (openai.APIConnectionError, openai.APIStatusError) as e:
            raise UserError(f"{cfg.openai_base_url}: the request for prompt {rows[i].get('key', i)} failed ({e}; "
                            f"connection errors, 408, 409, 429 and 5xx are retried up to {cfg.openai_max_retries} "
                            "times)") from None
        return parse_openai_response(rows[i], resp.model_dump())

    shards = None
    if work_dir is not None:
        shards = Path(work_dir)
        stamp = _shard_stamp(cfg, rows)
        if shards.exists() and (not (shards / "stamp.json").exists() or (shards / "stamp.json").read_text() != stamp):
            print(f"{shards}: removing shards made with other request settings or prompts")
            shutil.rmtree(shards)
        shards.mkdir(parents=True, exist_ok=True)
        (shards / "stamp.json").write_text(stamp)
    size = cfg.openai_shard_size
    out: list[dict] = []
    with ThreadPoolExecutor(cfg.openai_concurrency) as pool:
        for s, lo in enumerate(range(0, len(rows), size)):
            path = shards / f"shard-{s:05d}.jsonl" if shards is not None else None
            if path is not None and path.exists():
                out += [json.loads(x) for x in path.read_text().splitlines()]
                continue
            futures = [pool.submit(one, i) for i in range(lo, min(lo + size, len(rows)))]
            try:
                done = [f.result() for f in futures]
            except BaseException:  # the first failure ends the stage: queued requests are not sent
                for f in futures:
                    f.cancel()
                raise
            if path is not None:
                with atomic_path(path) as tmp:
                    tmp.write_text("".join(json.dumps(d) + "\n" for d in done))
            out += done
    return out
