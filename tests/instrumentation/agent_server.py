"""A scripted OpenAI-compatible model server on loopback for agent-framework tests.

It speaks what the frameworks send through the real ``openai`` SDK: ``POST /v1/chat/completions``
(plain and streamed; the usage chunk only when ``stream_options.include_usage`` asks, as OpenAI
does) and ``POST /v1/responses`` (plain and streamed, usage in ``response.completed``).

The model name is the script: ``tools-N`` calls a tool in each of its first N turns (one call per
turn, the first offered function that is not a handoff, with arguments made from its JSON
schema), then answers with text; ``tools-NxK`` makes K calls in each of those turns (parallel
tool calls, to the first K functions offered, the last one again if fewer are offered). An
offered handoff (``transfer_to_*``) is taken first, once.
Any other model answers at once. Stateless (the turn is read from the conversation), so one
server serves a whole test session; every request is recorded with the usage it was answered
with, so tests can compare spans with what the server said.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.http_server import QuietHandler, Serving
from tests.instrumentation.chat_server import stream_chunks

FINAL = "Final answer after {n} tool results: {last}"
_SCRIPT = re.compile(r"^tools-(\d+)(?:x(\d+))?$")


@dataclass
class Request:
    path: str
    model: str
    stream: bool
    tools: list[str]
    input_tokens: int
    output_tokens: int
    answer: str  # "tool:NAME" (the first of the calls) or "text"
    headers: dict[str, str] = field(default_factory=dict)


def _arg_for(schema: dict[str, Any], turn: int) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        return turn
    if kind == "number":
        return float(turn)
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return f"x{turn}"


def _arguments(params: dict[str, Any], turn: int, index: int) -> str:
    """Arguments for the ``index``-th call of a turn: strings ``x{turn}`` (``x{turn}-{index}`` for
    the later calls of a parallel turn), numbers the turn."""
    props = params.get("properties") or {}
    required = params.get("required") or list(props)
    args = {name: _arg_for(props.get(name) or {}, turn) for name in required}
    if index:
        args = {k: f"{v}-{index}" if isinstance(v, str) else v for k, v in args.items()}
    return json.dumps(args)


@dataclass
class Tool:
    name: str
    params: dict[str, Any]

    @property
    def handoff(self) -> bool:
        return self.name.startswith("transfer_to_")


def _tools(body: dict[str, Any]) -> list[Tool]:
    found = []
    for t in body.get("tools") or []:
        fn = t.get("function", t)
        if fn.get("name"):
            found.append(Tool(fn["name"], fn.get("parameters") or {}))
    return found


def _conversation(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(names of the tools called, their results in order) from a chat or Responses body."""
    names: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    for m in body.get("messages") or []:
        for tc in m.get("tool_calls") or []:
            names[tc["id"]] = tc["function"]["name"]
        if m.get("role") == "tool":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            results.append((m.get("tool_call_id", ""), str(content)))
    items = body.get("input")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            names[item.get("call_id", "")] = item.get("name", "")
        elif item.get("type") == "function_call_output":
            results.append((item.get("call_id", ""), str(item.get("output"))))
    return [names.get(cid, "") for cid, _ in results], [r for _, r in results]


def _words(body: dict[str, Any]) -> int:
    """A deterministic input size: about one token per word of the whole request."""
    return len(json.dumps(body.get("messages") or body.get("input") or "").split()) + 10


class AgentServer(Serving):
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._calls = 0
        super().__init__(self._handler(), quiet_errors=True)

    # --- the script -------------------------------------------------------------------------
    def decide(self, body: dict[str, Any]) -> tuple[list[tuple[Tool, str]], str]:
        """(the tool calls to make, each with its arguments; the final text)."""
        tools = _tools(body)
        called, results = _conversation(body)
        plain = [r for n, r in zip(called, results, strict=True) if not n.startswith("transfer_to_")]
        text = FINAL.format(n=len(plain), last=plain[-1] if plain else "none")
        handoffs = [t for t in tools if t.handoff]
        if handoffs and not any(n.startswith("transfer_to_") for n in called):
            return [(handoffs[0], "{}")], text
        m = _SCRIPT.match(str(body.get("model", "")))
        turns, per_turn = (int(m.group(1)), int(m.group(2) or 1)) if m else (0, 1)
        functions = [t for t in tools if not t.handoff]
        turn = len(plain) // per_turn + 1
        if not functions or turn > turns:
            return [], text
        picked = [functions[min(i, len(functions) - 1)] for i in range(per_turn)]
        return [(t, _arguments(t.params, turn, i)) for i, t in enumerate(picked)], text

    def _record(
        self, path: str, body: dict[str, Any], calls: list[tuple[Tool, str]], headers: dict[str, str]
    ) -> Request:
        with self._lock:
            self._calls += 1
            req = Request(
                path=path,
                model=str(body.get("model")),
                stream=bool(body.get("stream")),
                tools=[t.name for t in _tools(body)],
                input_tokens=_words(body),
                output_tokens=7 + len(self.requests) % 5,
                answer=f"tool:{calls[0][0].name}" if calls else "text",
                headers=headers,
            )
            self.requests.append(req)
            return req

    def _call_id(self, i: int) -> str:
        return f"call_{self._calls}_{i}"

    # --- chat completions ---------------------------------------------------------------------
    def chat(self, req: Request, calls: list[tuple[Tool, str]], text: str) -> dict[str, Any]:
        if calls:
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": self._call_id(i), "type": "function", "function": {"name": t.name, "arguments": a}}
                    for i, (t, a) in enumerate(calls)
                ],
            }
            finish = "tool_calls"
        else:
            msg, finish = {"role": "assistant", "content": text}, "stop"
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": req.input_tokens,
                "completion_tokens": req.output_tokens,
                "total_tokens": req.input_tokens + req.output_tokens,
            },
        }

    chat_chunks = staticmethod(stream_chunks)  # the same chunks as the chat server's

    # --- responses ------------------------------------------------------------------------------
    def response(
        self, body: dict[str, Any], req: Request, calls: list[tuple[Tool, str]], text: str
    ) -> dict[str, Any]:
        n = len(self.requests)
        if calls:
            output: list[dict[str, Any]] = [
                {
                    "type": "function_call",
                    "id": f"fc_{n}_{i}",
                    "call_id": self._call_id(i),
                    "name": t.name,
                    "arguments": a,
                    "status": "completed",
                }
                for i, (t, a) in enumerate(calls)
            ]
        else:
            output = [
                {
                    "type": "message",
                    "id": f"msg_{n}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
        return {
            "id": f"resp_{n}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": req.model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "usage": {
                "input_tokens": req.input_tokens,
                "output_tokens": req.output_tokens,
                "total_tokens": req.input_tokens + req.output_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }

    @staticmethod
    def response_events(full: dict[str, Any]) -> list[dict[str, Any]]:
        pending = full | {"status": "in_progress", "output": [], "usage": None}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": pending},
            {"type": "response.in_progress", "response": pending},
        ]
        for i, item in enumerate(full["output"]):
            events.append({"type": "response.output_item.added", "output_index": i, "item": item})
            events.append({"type": "response.output_item.done", "output_index": i, "item": item})
        events.append({"type": "response.completed", "response": full})
        for seq, event in enumerate(events):
            event["sequence_number"] = seq
        return events

    # --- http -------------------------------------------------------------------------------------
    def _handler(self) -> type[QuietHandler]:
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.body() or b"{}")
                calls, text = server.decide(body)
                path = self.path.rstrip("/")
                req = server._record(path, body, calls, {k.lower(): v for k, v in self.headers.items()})
                if path.endswith("/responses"):
                    full = server.response(body, req, calls, text)
                    if req.stream:
                        self._sse([e | {"_event": e["type"]} for e in server.response_events(full)])
                    else:
                        self._json(full)
                    return
                full = server.chat(req, calls, text)
                if req.stream:
                    usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._sse(server.chat_chunks(full, usage), done=True)
                else:
                    self._json(full)

            def _json(self, obj: Any) -> None:
                self.send_body(json.dumps(obj).encode(), "application/json")

            def _sse(self, events: list[dict[str, Any]], done: bool = False) -> None:
                frames = []
                for e in events:
                    name = e.pop("_event", None)
                    head = f"event: {name}\n".encode() if name else b""
                    frames.append(head + b"data: " + json.dumps(e).encode() + b"\n\n")
                self.send_stream([*frames, b"data: [DONE]\n\n"] if done else frames)

        return Handler

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def mark(self) -> int:
        """The number of requests so far: ``since(mark)`` gives those sent after it."""
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        with self._lock:
            return list(self.requests[mark:])


if __name__ == "__main__":  # a server for scripts run in a subprocess: prints its URL, serves until killed
    srv = AgentServer().start()
    print(srv.base_url, flush=True)
    threading.Event().wait()
