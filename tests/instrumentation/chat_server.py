"""A scripted OpenAI-compatible chat server on 127.0.0.1 for agent-framework tests.

Every answer is decided from the request alone, so one server serves a whole test session and
tests running one after another do not disturb each other. The *model name* carries the script:

``fake-r3-TAG``
    three tool rounds: while the conversation holds fewer than 3 calls of the offered
    (non-handoff) tools, answer with a call to the first offered tool; then a final text.
``fake-r1p-TAG``
    ``p``: each round calls every offered non-handoff tool at once (parallel tool calls).

A handoff tool (``handoff`` or ``transfer_to_*``) is called once, before any other tool, by an
agent that offers one; an agent that already handed off answers with a final text. Arguments are
made from the tool's JSON schema (``to_agent`` is ``weather_agent``, other strings ``Paris``).
Requests without ``tools`` are ReAct prompts: ``Action: <first tool named in the prompt>`` until
as many ``Observation:`` lines as rounds are in the prompt, then ``Answer:``.

Usage differs per request (``prompt_tokens`` grows with the conversation) and is logged with the
request, so a test can compare a span's token counts with what the server reported.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.http_server import QuietHandler, Serving

ARG_VALUES = {"to_agent": "weather_agent", "reason": "weather question", "agent_name": "weather_agent"}
HANDOFF = re.compile(r"^(handoff|transfer_to_\w+)$")
MODEL = re.compile(r"-r(\d+)(p?)(?:-|$)")


@dataclass
class Logged:
    model: str
    stream: bool
    tools: list[str]
    usage: dict[str, int]
    answer: str  # "tool:NAME[,NAME]" or "text"


def _script(model: str) -> tuple[int, bool]:
    found = MODEL.search(model)
    return (int(found.group(1)), bool(found.group(2))) if found else (1, False)


def _args(schema: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        if name not in (schema.get("required") or []):
            continue
        kind = prop.get("type")
        args[name] = 1 if kind in ("integer", "number") else ARG_VALUES.get(name, "Paris")
    return args


def _called(messages: list[dict[str, Any]]) -> list[str]:
    """Names of the tools the assistant already called in this conversation."""
    names = []
    for m in messages:
        for call in m.get("tool_calls") or []:
            names.append(call.get("function", {}).get("name", ""))
    return names


def _text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        c = m.get("content")
        parts.append(c if isinstance(c, str) else json.dumps(c))
    return "\n".join(parts)


@dataclass
class ChatServer(Serving):
    requests: list[Logged] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        super().__init__(_handler(self), quiet_errors=True)

    # --- the script ---------------------------------------------------------------------------
    def decide(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The assistant message for this request, and a short label of what it is."""
        rounds, parallel = _script(str(body.get("model", "")))
        messages = body.get("messages") or []
        tools = [t.get("function", t) for t in body.get("tools") or []]
        if not tools:
            return self._react(messages, rounds)
        called = _called(messages)
        handoffs = [t for t in tools if HANDOFF.match(t["name"])]
        work = [t for t in tools if not HANDOFF.match(t["name"])]
        if handoffs and not any(HANDOFF.match(n) for n in called):
            chosen = handoffs[:1]
        elif work and sum(1 for n in called if n in {t["name"] for t in work}) < rounds * (
            len(work) if parallel else 1
        ):
            chosen = work if parallel else work[:1]
        else:
            return {"role": "assistant", "content": f"Done after {len(called)} tool calls."}, "text"
        n = len(called)
        calls = [
            {
                "id": f"call_{n + i + 1}",
                "type": "function",
                "function": {"name": t["name"], "arguments": json.dumps(_args(t.get("parameters") or {}))},
            }
            for i, t in enumerate(chosen)
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool:" + ",".join(
            t["name"] for t in chosen
        )

    def _react(self, messages: list[dict[str, Any]], rounds: int) -> tuple[dict[str, Any], str]:
        text = _text(messages)
        observed = text.count("Observation:")
        named = re.findall(r"Tool Name: (\S+)", text)
        if named and observed < rounds:
            content = f'Thought: I need a tool.\nAction: {named[0]}\nAction Input: {{"city": "Paris"}}'
            return {"role": "assistant", "content": content}, f"tool:{named[0]}"
        content = "Thought: I can answer without using any more tools.\nAnswer: sunny, done"
        return {"role": "assistant", "content": content}, "text"

    # --- responses ----------------------------------------------------------------------------
    def respond(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        message, label = self.decide(body)
        n_messages = len(body.get("messages") or [])
        usage = {"prompt_tokens": 11 + 7 * n_messages, "completion_tokens": 3 + len(label)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        logged = Logged(
            model=str(body.get("model")),
            stream=bool(body.get("stream")),
            tools=[t.get("function", t)["name"] for t in body.get("tools") or []],
            usage=usage,
            answer=label,
        )
        with self._lock:
            self.requests.append(logged)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        full = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage,
        }
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return full, wants_usage

    def for_model(self, model: str) -> list[Logged]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    # --- http ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def stream_chunks(full: dict[str, Any], with_usage: bool) -> list[dict[str, Any]]:
    """The SSE chunks of one answer: role, tool-call or text deltas, finish, then usage if asked."""
    message = full["choices"][0]["message"]
    base = {"id": full["id"], "created": full["created"], "model": full["model"]}
    base["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])

    chunks = [chunk({"role": "assistant", "content": ""})]
    for i, call in enumerate(message.get("tool_calls") or []):
        head = {"index": i, "id": call["id"], "type": "function"}
        chunks.append(
            chunk({"tool_calls": [dict(head, function={"name": call["function"]["name"], "arguments": ""})]})
        )
        chunks.append(
            chunk({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]})
        )
    if message.get("content"):
        chunks.append(chunk({"content": message["content"]}))
    chunks.append(chunk({}, full["choices"][0]["finish_reason"]))
    if with_usage:
        chunks.append(dict(base, choices=[], usage=full["usage"]))
    return chunks


def _handler(server: ChatServer) -> type[QuietHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.body() or b"{}")
            full, with_usage = server.respond(body)
            if not body.get("stream"):
                self.send_body(json.dumps(full).encode(), "application/json")
                return
            chunks = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in stream_chunks(full, with_usage)]
            self.send_stream([*chunks, b"data: [DONE]\n\n"])

    return Handler
