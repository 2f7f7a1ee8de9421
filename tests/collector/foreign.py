"""Services that run without budgetspan (a Node.js service, a plain Python service with
OpenLLMetry), started as their own processes against the tier, and what the tier must have done
to their spans.

Each service sends the same rounds of four runs (one trace each) until SIGTERM, printing
``round N`` after each round, then flushes its spans and exits 0:

- ``within``: a tool call (content in its arguments) and 2 chat calls of ``gpt-4o-mini``;
- ``over``: 3 chat calls: over the test profile's 2, so the third is marked;
- ``unpriced``: a failing tool call and a chat call of ``acme-llm-1`` (no known price);
- ``stream``: one streamed chat call that reports no usage.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from budgetspan import attributes as A
from budgetspan.accounting.pricing import default_resolver
from budgetspan.collector.content import is_content
from tests.prometheus_server import Prometheus, wait_for

from .model_server import COMPLETION_TOKENS, PROMPT_TOKENS, ModelServer
from .stack import REPO, ReceivedSpan, Receiver, empty_panels

#: The shape of each run: its model calls and tool calls (plus its root span).
SHAPES = {(2, 1): "within", (3, 0): "over", (1, 1): "unpriced", (1, 0): "stream"}
#: Panels that only budgetspan in-process feeds: enforcement (only the process can refuse a call),
#: retries (the instrumentation never sees them), extensions and loop stops (the run's policy),
#: and budgetspan's own cache.
IN_PROCESS_ONLY = {
    "Budget-exhaustion rate",
    "Budget-exhaustion share",
    "Budget exhaustions by reason",
    "Retries by type",
    "Budget extensions and loop stops",
    "Cache hit rate by tool",
    "Cache savings by tool ($/h)",
}


@contextmanager
def serving(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[ServiceProcess]:
    """The service running against a local model server (``OPENAI_BASE_URL`` set), two rounds done."""
    server = ModelServer()
    svc = ServiceProcess(cmd, {**env, "OPENAI_BASE_URL": server.url}, log)
    svc.start()
    try:
        svc.wait_rounds(2)
        yield svc
    finally:
        svc.stop()
        server.close()


def finished_runs(svc: ServiceProcess, receiver: Receiver) -> dict[str, list[list[ReceivedSpan]]]:
    """The service stopped (its spans flushed), and every run it sent as the receiver got it."""
    assert svc.stop() == 0, svc.log.read_text()
    return check_runs_arrived(settle(receiver, svc.rounds), svc.rounds)


@dataclass
class ServiceProcess:
    """A service under test, run as its own process; ``rounds`` counts the rounds it finished."""

    cmd: list[str]
    env: dict[str, str]
    log: Path
    rounds: int = 0
    proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("round "):
                self.rounds = int(line.split()[1]) + 1

    def stop(self) -> int:
        """SIGTERM: the service finishes its round, flushes its spans and exits."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        if self._thread is not None:
            self._thread.join(5)
        return code

    def wait_rounds(self, n: int, timeout: float = 60) -> None:
        def done() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}:\n{self.log.read_text()}")
            return self.rounds >= n

        wait_for(done, timeout, f"{n} rounds of the service")


def traces(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        out.setdefault(s.trace_id, []).append(s)
    return out


def is_chat(s: ReceivedSpan) -> bool:
    return s.attributes.get(A.GEN_AI_OPERATION_NAME) == A.OP_CHAT


def is_tool(s: ReceivedSpan) -> bool:
    return s.attributes.get(A.GEN_AI_OPERATION_NAME) == A.OP_EXECUTE_TOOL


def shape(spans: list[ReceivedSpan]) -> str | None:
    """Which run of the round a trace is, when all its spans are there (one root, nothing else)."""
    roots = [s for s in spans if not s.parent_id]
    chats, tools = sum(map(is_chat, spans)), sum(map(is_tool, spans))
    if len(roots) != 1 or len(spans) != 1 + chats + tools:
        return None
    return SHAPES.get((chats, tools))


def check_runs_arrived(spans: list[ReceivedSpan], rounds: int) -> dict[str, list[list[ReceivedSpan]]]:
    """Every run of every round came through whole (the tier drops nothing); runs by shape."""
    by_shape: dict[str, list[list[ReceivedSpan]]] = {}
    for trace_spans in traces(spans).values():
        name = shape(trace_spans)
        assert name is not None, [(s.name, s.attributes) for s in trace_spans]
        by_shape.setdefault(name, []).append(trace_spans)
    assert {k: len(v) for k, v in by_shape.items()} == {k: rounds for k in SHAPES.values()}
    return by_shape


def check_priced_tagged_redacted(runs: dict[str, list[list[ReceivedSpan]]], cache_read: int | None) -> None:
    """Chat calls priced from the one price table (the source marked), phases tagged, content gone."""
    expected = default_resolver().cost("openai", "gpt-4o-mini", PROMPT_TOKENS, COMPLETION_TOKENS, cache_read)
    assert expected is not None and expected > 0
    for run in runs["within"] + runs["over"]:
        for s in filter(is_chat, run):
            a = s.attributes
            assert a[A.GEN_AI_USAGE_INPUT_TOKENS] == PROMPT_TOKENS, a
            assert a[A.GEN_AI_USAGE_OUTPUT_TOKENS] == COMPLETION_TOKENS, a
            assert a.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS) == cache_read, a
            assert math.isclose(a[A.GEN_AI_USAGE_COST], expected), a
            assert a[A.COST_SOURCE] == A.COST_SOURCE_COLLECTOR and a[A.PHASE] == "model_decision", a
            assert not [k for k in a if is_content(k)] and a[A.CONTENT_REDACTED] >= 1, a
            assert "4111" not in json.dumps([a, s.events], default=str)
    for run in runs["within"] + runs["unpriced"]:
        (tool,) = filter(is_tool, run)
        assert tool.attributes[A.PHASE] == "tool_execution"
        assert (
            "gen_ai.tool.call.arguments" not in tool.attributes and tool.attributes[A.CONTENT_REDACTED] == 1
        )
    for run in runs["unpriced"]:
        (chat,) = filter(is_chat, run)
        assert chat.attributes[A.COST_UNPRICED] is True and A.GEN_AI_USAGE_COST not in chat.attributes
    for run in runs["stream"]:
        (chat,) = filter(is_chat, run)
        assert chat.attributes[A.USAGE_UNREPORTED] is True and A.GEN_AI_USAGE_COST not in chat.attributes


def check_marks(runs: dict[str, list[list[ReceivedSpan]]]) -> None:
    """The run over its profile is marked once, on its third call (the one enforce mode would have
    refused); runs within their profile carry no mark."""
    for run in runs["over"]:
        chats = sorted(filter(is_chat, run), key=lambda s: s.start_ns)
        assert [s.attributes.get(A.WOULD_REFUSE) for s in chats] == [None, None, "max_model_calls"]
        assert chats[2].attributes[A.BUDGET_MODE] == "observe"
    for run in runs["within"] + runs["unpriced"] + runs["stream"]:
        assert not [s for s in run if A.WOULD_REFUSE in s.attributes]


def check_dashboards(prom: Prometheus, service: str, cannot: dict[str, str]) -> None:
    """Every panel of both dashboards has data from the tier for this service, except those only
    budgetspan in-process feeds and ``cannot`` (title: why this instrumentation never records it)."""
    allowed = IN_PROCESS_ONLY | cannot.keys()
    wait_for(
        lambda: float(prom.query('count_over_time(up{job="budgetspan-collector"}[1m])')[0]["value"][1]) >= 6,
        60,
        "six scrapes",
    )
    for name, variables in (
        ("budgetspan-overview", {"workflow": ".*", "service": service}),
        ("budgetspan-workflow", {"workflow": service, "phase": ".*", "service": service}),
    ):
        dash = json.loads((REPO / "dashboards" / f"{name}.json").read_text())
        empty = empty_panels(prom, dash, variables)
        titles = {e.split(" / ")[1].split(":")[0] for e in empty}
        assert titles <= allowed, "panels without data:\n" + "\n".join(empty)
    would = prom.query(
        f'budgetspan_budget_would_exhaust_total{{reason="max_model_calls",service="{service}"}}'
    )
    assert would and float(would[0]["value"][1]) >= 1


def settle(receiver: Receiver, rounds: int, timeout: float = 20) -> list[ReceivedSpan]:
    """What the receiver holds once every run of ``rounds`` rounds has come through whole."""

    def whole() -> bool:
        got = traces(receiver.snapshot())
        return len(got) >= len(SHAPES) * rounds and all(shape(t) for t in got.values())

    wait_for(whole, timeout, "every run through the tier")
    return receiver.snapshot()


class ForeignServiceChecks:
    """What the tier must have done for any foreign service: a ``Test…`` subclass names it
    (``SERVICE``), the panels it cannot feed (``CANNOT``) and the cache-read tokens it reports
    (``CACHE_READ``), and gives the running service as the ``service`` fixture."""

    SERVICE: str
    CANNOT: dict[str, str]
    CACHE_READ: int | None

    @pytest.fixture(scope="class")
    def runs(self, service: ServiceProcess, receiver: Receiver) -> dict[str, list[list[ReceivedSpan]]]:
        return finished_runs(service, receiver)

    def test_every_dashboard_query_returns_data_for_the_service(
        self, service: ServiceProcess, prometheus: Prometheus
    ) -> None:
        check_dashboards(prometheus, self.SERVICE, self.CANNOT)

    def test_every_run_arrives_whole_priced_tagged_and_redacted(
        self, runs: dict[str, list[list[ReceivedSpan]]]
    ) -> None:
        check_priced_tagged_redacted(runs, self.CACHE_READ)

    def test_the_run_over_its_profile_is_marked_on_its_third_call(
        self, runs: dict[str, list[list[ReceivedSpan]]]
    ) -> None:
        check_marks(runs)
