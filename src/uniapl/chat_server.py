"""An OpenAI-compatible chat-completions server for a local transformers model (the embedded teacher).

    python -m uniapl.chat_server --model models/teacher [--host 127.0.0.1] [--port 8000]

It lets the paper-scale path of ``teacher_demos`` (``backend: openai``: concurrency, retries, resume by
shard) run end to end on a CPU against real HTTP, with the embedded teacher answering; at paper scale the
same client talks to ``vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507``. Endpoints:

* ``POST /v1/chat/completions``: ``messages`` rendered with the model's chat template (generation prompt,
  thinking off), one sample (``n`` must be 1) decoded by :class:`uniapl.rollout.HFEngine` with the request's
  ``seed`` at ``temperature`` (0: greedy) up to ``max_tokens`` (or ``max_completion_tokens``); the answer has
  ``message.content``, ``finish_reason`` ("stop" or "length"), ``usage`` and, with ``logprobs: true``, each
  token's log-prob under the sampling distribution. Settings this sampler cannot honour (``top_p`` < 1,
  ``top_k`` > 0, ``min_p`` > 0, ``repetition_penalty`` != 1, penalties != 0, ``n`` > 1) get a 400 naming the
  field, not a silently different sample. A sampled request without ``seed`` gets a 400 as well (answers
  must be reproducible).
* ``GET /v1/models``: the one model, under the name given by ``--served-model-name`` (default: the path).

Connections are served concurrently; generation is serialised (one request decodes at a time), so an
answer depends only on its own request. For tests of a client: ``fail_first`` answers the first N
completion requests with 503 (retries), ``fail_after`` every request after the first N (a server that
goes away: resume).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NEUTRAL = {"top_p": 1.0, "top_k": (-1, 0), "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
           "frequency_penalty": 0.0, "n": 1}
"""Sampling fields this server accepts only at their neutral value (``None`` / absent is neutral too)."""


class ChatModel:
    """A transformers causal LM and its tokenizer behind :meth:`complete` (one chat request -> response)."""

    def __init__(self, path: str, name: str | None = None, threads: int | None = None):
        import torch

        from uniapl.models import load_policy, load_tokenizer
        if threads:
            torch.set_num_threads(threads)
        self.tok = load_tokenizer(path)
        self.model = load_policy(path).eval()
        self.name = name or path
        self.lock = threading.Lock()

    def complete(self, body: dict) -> dict:
        from uniapl.models import decode_response
        from uniapl.rollout import HFEngine
        for key, neutral in NEUTRAL.items():
            v = body.get(key)
            if v is not None and v not in (neutral if isinstance(neutral, tuple) else (neutral,)):
                raise ValueError(f"{key}={v!r} is not supported by this server (only {neutral!r})")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("messages: a non-empty list is required")
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        temperature = float(temperature)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        seed = body.get("seed")
        if temperature > 0 and seed is None:
            raise ValueError("seed is required when temperature > 0 (answers must be reproducible)")
        ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False,
                                           enable_thinking=False)  # = models.encode_prompt for one user turn
        with self.lock:
            out = HFEngine(self.model, self.tok).generate([list(ids)], None if temperature == 0 else [int(seed)],
                                                          temperature, int(max_tokens))
        resp, lps = out.response_ids[0], out.logprobs[0].tolist()
        text = decode_response(self.tok, resp)
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": "length" if bool(out.truncated[0]) else "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": self.tok.decode([t]), "logprob": lp, "bytes": None,
                                               "top_logprobs": []} for t, lp in zip(resp, lps)]}
        return {"id": f"chatcmpl-{seed}-{len(resp)}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(resp),
                          "total_tokens": len(ids) + len(resp)}}


class ChatServer(ThreadingHTTPServer):
    """``ChatServer((host, port), ChatModel(...))``; ``requests`` records every completion request body."""

    daemon_threads = True

    def __init__(self, address, model: ChatModel, fail_first: int = 0, fail_after: int | None = None):
        super().__init__(address, _Handler)
        self.model, self.fail_first, self.fail_after = model, fail_first, fail_after
        self.requests: list[dict] = []
        self.count_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:  # quiet: one line per request is noise in a stage log
        pass

    def _reply(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._reply(code, {"error": {"message": message, "type": "invalid_request_error" if code == 400
                                     else "server_error", "code": code}})

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": self.server.model.name, "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        except (json.JSONDecodeError, ValueError) as e:
            self._error(400, f"request body is not JSON: {e}")
            return
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object")
            return
        with self.server.count_lock:
            self.server.requests.append(body)
            n = len(self.server.requests)
            fail = n <= self.server.fail_first or (self.server.fail_after is not None and n > self.server.fail_after)
        if fail:
            self._error(503, "injected failure (fail_first / fail_after)")
            return
        try:
            self._reply(200, self.server.model.complete(body))
        except (ValueError, TypeError, KeyError) as e:  # a malformed request: the client's to fix
            self._error(400, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - a server fault, reported as one line (the client retries 5xx)
            self._error(500, f"{type(e).__name__}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model directory (save_pretrained layout) with its tokenizer")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    srv = ChatServer((a.host, a.port), ChatModel(a.model, a.served_model_name, a.threads))
    print(f"serving {a.model} at {srv.base_url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
