"""An OpenAI-compatible chat model server on loopback, for the demo and its tests.

It speaks ``POST /v1/chat/completions`` (plain and streamed, with ``stream_options.include_usage``)
and ``GET /v1/models`` well enough for the real ``openai`` SDK. Answers are deterministic: a
scripted "model" writes a reply from the facts in the prompt, or a JSON verdict when asked to
review one. Usage is counted the way OpenAI does (roughly four characters a token, a few tokens
per message) and latency follows it (time to first token grows with the prompt, then a steady
rate per output token), so the spans, costs and phase times look like a real run's.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Request model -> the dated id the API answers with (as OpenAI does).
RESPONSE_MODELS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
}


def count_tokens(text: str) -> int:
    """About four characters per token, as OpenAI's guidance says for English."""
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += 4 + count_tokens(str(content))
    return total


@dataclass(frozen=True)
class Latency:
    """Seconds: base + prefill per prompt token (time to first token), then per output token."""

    base_s: float = 0.12
    prefill_s: float = 0.00004
    per_token_s: float = 0.0025
    scale: float = 1.0

    def first_token(self, prompt: int) -> float:
        return (self.base_s + self.prefill_s * prompt) * self.scale

    def per_token(self) -> float:
        return self.per_token_s * self.scale


def _lines(text: str, prefix: str) -> list[str]:
    return [ln[len(prefix) :].strip() for ln in text.splitlines() if ln.startswith(prefix)]


# The routing trial (``budgetspan demo --routes``) marks its requests with this header naming its
# cheap model. That model then leaves the facts out of SLOPPY_SHARE of its drafts (the reviewer
# asks for a revision), and answers BUSY_SHARE of first attempts with 429 (retry after 20 ms: the
# SDK's retries show on the call's span). Deterministic: decided by hashes of the prompt.
TRIAL_HEADER = "x-demo-route-trial"
SLOPPY_SHARE = 0.4
REVISION_SLOPPY_SHARE = 0.5  # a revision asked for by the reviewer is no easier for it
BUSY_SHARE = 0.3


def share(key: str) -> float:
    """A stable number in [0, 1) for ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32


def scripted_answer(messages: list[dict[str, Any]], sloppy: bool = False) -> str:
    """What the scripted model says. Reviews get a JSON verdict; everything else a reply draft."""
    system = " ".join(str(m.get("content") or "") for m in messages if m.get("role") == "system")
    user = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")
    if "review" in system.lower():
        draft = user.split("Draft:", 1)[-1]
        orders = re.findall(r"\border ([A-Z]-\d{4})\b", user.split("Draft:", 1)[0])
        missing = [o for o in orders if o not in draft]
        if missing:
            return json.dumps(
                {"verdict": "revise", "issues": [f"the draft does not mention {', '.join(missing)}"]}
            )
        return json.dumps({"verdict": "approve", "issues": []})
    name = (_lines(user, "Customer:") or ["there"])[0].split(" (")[0].split()[0]
    facts = _lines(user, "- ")
    policy = _lines(user, "Policy:")
    request = (_lines(user, "Request:") or ["your request"])[0].rstrip(".")
    revision = "Revise this draft" in user
    if sloppy and share("sloppy" + user) < (REVISION_SLOPPY_SHARE if revision else SLOPPY_SHARE):
        facts, request = [], "your request"  # a sloppy draft: no order number for the reviewer
    body = [f"Hi {name},", "", f"Thank you for contacting us about {request[0].lower() + request[1:]}."]
    if facts:
        body.append("Here is where things stand:")
        body += [f"  * {f[0].upper() + f[1:]}" + ("" if f.endswith(".") else ".") for f in facts]
    if policy:
        body.append(f"Under our policy, {policy[0][0].lower() + policy[0][1:]}")
    body += [
        "If anything here does not match what you see on your side, just reply to this message",
        "and we will look into it right away.",
        "",
        "Best regards,",
        "Support team",
    ]
    return "\n".join(body)


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:24])
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "budgetspan-demo"}
                        for m in RESPONSE_MODELS
                    ],
                },
            )
        else:
            self._error(404, f"no route {self.path}")

    # long: one request handler that answers each endpoint of the fake model server
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "the body is not JSON")
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self._error(400, "'messages' must be a non-empty list")
            return
        self.server.requests += 1
        model = str(body.get("model", "gpt-4o-mini"))
        if self._busy(model, messages):
            return
        text = scripted_answer(messages, sloppy=self.headers.get(TRIAL_HEADER) == model)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and count_tokens(text) > limit:
            text, finish = text[: limit * 4], "length"
        n_prompt, n_completion = prompt_tokens(messages), count_tokens(text)
        usage: dict[str, Any] = {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        base = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": RESPONSE_MODELS.get(model, model),
            "system_fingerprint": "fp_budgetspan_demo",
            "service_tier": "default",
        }
        lat = self.server.latency
        time.sleep(lat.first_token(n_prompt))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(base, text, finish, usage if include_usage else None)
            return
        time.sleep(lat.per_token() * n_completion)
        self._json(
            200,
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            },
        )

    def _busy(self, model: str, messages: list[Any]) -> bool:
        """The routing trial's busy cheap model: a 429 on some first attempts (see TRIAL_HEADER)."""
        first = self.headers.get("x-stainless-retry-count", "0") == "0"
        if (
            self.headers.get(TRIAL_HEADER) != model
            or not first
            or share("busy" + json.dumps(messages)) >= BUSY_SHARE
        ):
            return False
        payload = b'{"error": {"message": "busy", "type": "rate_limit_error"}}'
        self.send_response(429)
        self.send_header("retry-after-ms", "20")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        return True

    def _stream(self, base: dict[str, Any], text: str, finish: str, usage: dict[str, Any] | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(payload: dict[str, Any] | str) -> None:
            data = (
                "data: " + (payload if isinstance(payload, str) else json.dumps(payload)) + "\n\n"
            ).encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        chunk = {**base, "object": "chat.completion.chunk"}
        send(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
        pieces = re.findall(r".{1,16}", text, flags=re.S)
        step = self.server.latency.per_token() * 4  # ~4 tokens per 16 characters
        for piece in pieces:
            time.sleep(step)
            send(
                {
                    **chunk,
                    "choices": [
                        {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}
                    ],
                }
            )
        send({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
        if usage is not None:
            send({**chunk, "choices": [], "usage": usage})
        send("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class ModelServer(ThreadingHTTPServer):
    """The loopback server; ``start()`` serves in a daemon thread, ``stop()`` shuts it down."""

    daemon_threads = True
    request_queue_size = 128  # the routing trial connects 16 clients at once

    def __init__(self, latency: Latency | None = None, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.latency = latency or Latency()
        self.requests = 0
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self.serve_forever, name="budgetspan-demo-model", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["RESPONSE_MODELS", "Latency", "ModelServer", "count_tokens", "scripted_answer"]
