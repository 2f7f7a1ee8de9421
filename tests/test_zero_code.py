"""Zero-code: ``opentelemetry-instrument python script.py`` with only ``BUDGETSPAN_BUDGET`` set.

The script talks to a loopback OpenAI-compatible server (``http.server`` in a thread) through the
real ``openai`` SDK. The third call must raise BudgetExhausted before any HTTP request leaves.

Two launches: a bare one (no OpenTelemetry distro installed: no SDK tracer provider, budgets are
still enforced by our wrappers and the post-instrument hook says why there are no spans), and one
with the OpenTelemetry SDK configurator registered the way ``opentelemetry-distro`` registers it
(a throwaway ``.dist-info`` on PYTHONPATH), where the hook adds our processors and the console
exporter prints our spans.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.instrumentation import zero_code

SCRIPT = r"""
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import budgetspan
import openai
from opentelemetry import trace

received = []
BODY = json.dumps({
    "id": "chatcmpl-zc", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}).encode()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        received.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
client = openai.OpenAI(api_key="test", base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=0)

answers, refused = [], None
for i in range(3):
    try:
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"ping {i}"}])
        answers.append(r.choices[0].message.content)
    except budgetspan.BudgetExhausted as e:
        refused = {"reason": e.reason, "after_requests": len(received), "partial": e.partial.get("last_model_answer"),
                   "explanation": e.explanation}
provider = trace.get_tracer_provider()
print("RESULT " + json.dumps({
    "answers": answers, "refused": refused, "requests": len(received),
    "provider": type(provider).__name__,
    "processors": [type(p).__name__ for p in getattr(provider, "_budgetspan_processors", None) or []],
    "wrapped": type(openai.resources.chat.completions.completions.Completions.create).__name__,
}), flush=True)
server.shutdown()
"""


def _launch(tmp_path: Path, sdk: bool) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    """The script run with ``max_model_calls=2``, and its result, which must show the refusal."""
    env = {
        "BUDGETSPAN_BUDGET": "max_model_calls=2",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    proc = zero_code.run(tmp_path, SCRIPT, env, sdk=sdk, keep=("anthropic",), timeout=90)
    res = zero_code.result(proc)
    _check_refusal(res)
    return proc, res


def _check_refusal(res: dict) -> None:  # type: ignore[type-arg]
    assert res["answers"] == ["pong", "pong"]
    assert res["refused"]["reason"] == "max_model_calls"
    assert res["refused"]["after_requests"] == 2  # the third request never left the process
    assert res["requests"] == 2
    assert res["refused"]["partial"] == "pong"
    assert "2 of 2 model calls" in res["refused"]["explanation"]
    assert res["wrapped"] == "BoundFunctionWrapper" or res["wrapped"] == "FunctionWrapper"


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_zero_code_without_a_distro_still_enforces(tmp_path: Path) -> None:
    proc, res = _launch(tmp_path, sdk=False)
    assert res["provider"] == "ProxyTracerProvider"
    # the post-instrument hook ran and said why there are no spans
    assert "not the SDK's" in proc.stderr


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_zero_code_with_the_sdk_configurator(tmp_path: Path) -> None:
    proc, res = _launch(tmp_path, sdk=True)
    assert res["provider"] == "TracerProvider"
    assert "BudgetSpanProcessor" in res["processors"]  # installed by the post-instrument hook
    # the console exporter printed our two model spans with tokens and cost
    spans = _console_spans(proc.stdout)
    chat = [s for s in spans if s["name"] == "chat gpt-4o-mini"]
    assert len(chat) == 2
    for s in chat:
        attrs = s["attributes"]
        assert attrs["gen_ai.usage.input_tokens"] == 9
        assert attrs["gen_ai.usage.output_tokens"] == 1
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["gen_ai.provider.name"] == "openai_compatible"
        assert s["kind"] == "SpanKind.CLIENT"


def _console_spans(stdout: str) -> list[dict]:  # type: ignore[type-arg]
    """The ConsoleSpanExporter prints one indented JSON object per span."""
    spans, depth, buf = [], 0, []
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            continue
        if depth == 0 and line.strip() != "{":
            continue
        buf.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0 and buf:
            try:
                spans.append(json.loads("\n".join(buf)))
            except json.JSONDecodeError:
                pass
            buf = []
    return spans


def test_repo_is_installed_with_our_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {e.name for e in entry_points(group="opentelemetry_instrumentor")}
    assert {"budgetspan_openai", "budgetspan_anthropic"} <= names
    hooks = {e.value for e in entry_points(group="opentelemetry_post_instrument")}
    assert "budgetspan.autoinstrument:post_instrument" in hooks
    assert (REPO / "src" / "budgetspan" / "autoinstrument.py").exists()
