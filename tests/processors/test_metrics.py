"""processors/metrics.py: every required series, fed by real runs, calls, tools and phases."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, generate_latest

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.ledger import Spend
from budgetspan.accounting.pricing import default_resolver
from budgetspan.calls.call import Call
from budgetspan.events import CallRecord
from budgetspan.processors import metrics as M
from budgetspan.processors import metrics_endpoint as endpoint
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.processors.labels import LabelCap
from budgetspan.runs import context as bs_context


class Reader:
    """A private registry + metrics listener, so tests never see each other's numbers."""

    def __init__(self, max_label_values: int | None = None) -> None:
        self.registry = CollectorRegistry()
        self.metrics = M.BudgetspanMetrics(self.registry, max_label_values=max_label_values)

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def series(self, name: str) -> list[dict[str, str]]:
        return [s.labels for fam in self.registry.collect() for s in fam.samples if s.name == name]


@pytest.fixture
def reader(tracing: Any) -> Iterator[Reader]:
    r = Reader()
    events.add_listener(r.metrics)
    yield r
    events.remove_listener(r.metrics)


USAGE = Spend(1000, 200, 500, None, 30, None)  # input includes the 500 cached


def model_call(
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    spend: Spend | None = USAGE,
    ttft: bool = False,
) -> None:
    call = Call(A.OP_CHAT, f"chat {model}", provider=provider, model=model).start()
    with call.activate():
        if ttft:
            call.first_token()
        if spend is not None:
            call.set_usage(spend)
    call.end()


def test_run_outcome_cost_tokens_duration_and_utilisation(reader: Reader) -> None:
    with budgetspan.run("ticket", max_model_calls=4, max_cost_usd=0.01) as run:
        model_call()
        model_call()
        run.succeed()
    one = default_resolver().cost("openai", "gpt-4o-mini", 1000, 200, 500, None)
    assert one is not None and one > 0
    assert reader.value("budgetspan_runs_total", workflow="ticket", outcome="success") == 1
    labels = {"workflow": "ticket", "outcome": "success"}
    assert reader.value("budgetspan_run_cost_usd_sum", **labels) == pytest.approx(2 * one)
    assert reader.value("budgetspan_run_cost_usd_count", **labels) == 1
    assert reader.value("budgetspan_run_tokens_sum", **labels) == 2 * 1200
    assert reader.value("budgetspan_run_duration_seconds_count", **labels) == 1
    # Utilisation: share of each set limit, observed at run end.
    util = {"workflow": "ticket", "limit": "max_model_calls"}
    assert reader.value("budgetspan_budget_utilisation_ratio_sum", **util) == pytest.approx(0.5)
    cost_util = {"workflow": "ticket", "limit": "max_cost_usd"}
    assert reader.value("budgetspan_budget_utilisation_ratio_sum", **cost_util) == pytest.approx(
        2 * one / 0.01
    )
    # Tokens by type (input includes the cached read, as OTel says) and cost by phase and model.
    tok = {"workflow": "ticket", "provider": "openai", "model": "gpt-4o-mini"}
    assert reader.value("budgetspan_tokens_total", type="input", **tok) == 2000
    assert reader.value("budgetspan_tokens_total", type="output", **tok) == 400
    # The parts (cache_read of input, reasoning of output) are a family apart, so a plain sum over
    # budgetspan_tokens_total is the total, counting no token twice.
    assert reader.value("budgetspan_token_details_total", type="cache_read", **tok) == 1000
    assert reader.value("budgetspan_token_details_total", type="reasoning", **tok) == 60
    assert reader.value("budgetspan_token_details_total", type="cache_write", **tok) == 0
    assert {s["type"] for s in reader.series("budgetspan_tokens_total")} == {"input", "output"}
    total = sum(
        smp.value
        for fam in reader.registry.collect()
        for smp in fam.samples
        if smp.name == "budgetspan_tokens_total"
    )
    assert total == 2000 + 400
    assert reader.value("budgetspan_cost_usd_total", phase="model_decision", **tok) == pytest.approx(2 * one)
    calls = {"workflow": "ticket", "provider": "openai", "model": "gpt-4o-mini", "status": "ok"}
    assert reader.value("budgetspan_model_calls_total", **calls) == 2
    assert (
        reader.value("budgetspan_model_call_duration_seconds_count", provider="openai", model="gpt-4o-mini")
        == 2
    )


def test_exhaustion_counts_reason_and_outcome_once(reader: Reader) -> None:
    with budgetspan.run("ticket", max_model_calls=2, suppress_exhausted=True):
        for _ in range(5):
            model_call()
    assert reader.value("budgetspan_runs_total", workflow="ticket", outcome="budget_exhausted") == 1
    assert (
        reader.value("budgetspan_budget_exhaustions_total", workflow="ticket", reason="max_model_calls") == 1
    )
    calls = {"workflow": "ticket", "provider": "openai", "model": "gpt-4o-mini", "status": "ok"}
    assert reader.value("budgetspan_model_calls_total", **calls) == 2  # the refused 3rd never ran
    util = {"workflow": "ticket", "limit": "max_model_calls"}
    assert reader.value("budgetspan_budget_utilisation_ratio_sum", **util) == pytest.approx(1.0)


def test_observe_mode_counts_would_exhaust_not_exhaustion(reader: Reader) -> None:
    with budgetspan.run("ticket", mode="observe", max_model_calls=1):
        model_call()
        model_call()
    assert (
        reader.value("budgetspan_budget_would_exhaust_total", workflow="ticket", reason="max_model_calls")
        == 1
    )
    assert reader.series("budgetspan_budget_exhaustions_total") == []
    assert reader.value("budgetspan_runs_total", workflow="ticket", outcome="success") == 1
    util = {"workflow": "ticket", "limit": "max_model_calls"}
    assert reader.value("budgetspan_budget_utilisation_ratio_sum", **util) == pytest.approx(2.0)


def test_cancel_is_an_outcome_not_an_exhaustion(reader: Reader) -> None:
    with budgetspan.run("ticket", suppress_exhausted=True) as run:
        budgetspan.cancel(run.id)
        with pytest.raises(budgetspan.RunCancelled):
            model_call()
    assert reader.value("budgetspan_runs_total", workflow="ticket", outcome="cancelled") == 1
    assert reader.series("budgetspan_budget_exhaustions_total") == []


def test_unpriced_and_unreported_calls(reader: Reader) -> None:
    with budgetspan.run("ticket"):
        model_call(model="acme-local-7b", provider="acme", spend=Spend(10, 5))
        model_call(spend=None)  # a stream without a usage chunk: tokens never reported
    assert reader.value("budgetspan_unpriced_calls_total", provider="acme", model="acme-local-7b") == 1
    assert (
        reader.value("budgetspan_unreported_usage_calls_total", provider="openai", model="gpt-4o-mini") == 1
    )
    # Unpriced is not a fake $0: no cost series for it; unreported is not "unpriced".
    assert [s for s in reader.series("budgetspan_cost_usd_total") if s["model"] == "acme-local-7b"] == []
    assert [s for s in reader.series("budgetspan_unpriced_calls_total") if s["model"] == "gpt-4o-mini"] == []


def test_phase_blocks_and_default_phase_of_calls(reader: Reader) -> None:
    @budgetspan.tool
    def lookup(q: str) -> str:
        return q

    with budgetspan.run("ticket"):
        with budgetspan.phase("verification"):
            model_call()  # inside a block: the block counts, the call does not again
            lookup("x")
        model_call()  # outside: counts under its default phase
        lookup("y")

    def count(phase: str) -> float:
        return reader.value("budgetspan_phase_duration_seconds_count", workflow="ticket", phase=phase)

    assert count("verification") == 1
    assert count("model_decision") == 1
    assert count("tool_execution") == 1
    # Cost follows the phase the call was made in.
    cost_phases = {s["phase"] for s in reader.series("budgetspan_cost_usd_total")}
    assert cost_phases == {"verification", "model_decision"}


def test_tools_status_duration_and_retries(reader: Reader) -> None:
    attempts = {"n": 0}

    @budgetspan.tool(max_retries=2)
    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("first attempt fails")
        return "ok"

    @budgetspan.tool
    def broken() -> None:
        raise ValueError("always")

    with budgetspan.run("ticket"):
        assert flaky() == "ok"
        with pytest.raises(ValueError):
            broken()
    assert reader.value("budgetspan_tool_calls_total", workflow="ticket", tool="flaky", status="ok") == 1
    assert reader.value("budgetspan_tool_calls_total", workflow="ticket", tool="broken", status="error") == 1
    assert reader.value("budgetspan_retries_total", workflow="ticket", type="tool") == 1
    assert reader.value("budgetspan_tool_duration_seconds_count", workflow="ticket", tool="flaky") == 1


def test_time_to_first_token(reader: Reader) -> None:
    with budgetspan.run("ticket"):
        model_call(ttft=True)
        model_call(ttft=False)
    labels = {"provider": "openai", "model": "gpt-4o-mini"}
    assert reader.value("budgetspan_time_to_first_token_seconds_count", **labels) == 1


def test_live_runs_gauge(reader: Reader) -> None:
    with budgetspan.run("ticket"), budgetspan.run("ticket"):
        assert reader.value("budgetspan_live_runs", workflow="ticket") == 2
    assert reader.value("budgetspan_live_runs", workflow="ticket") == 0


def test_live_runs_never_negative_for_runs_started_before_install(tracing: Any) -> None:
    scope = budgetspan.run("early")
    scope.__enter__()
    r = Reader()
    events.add_listener(r.metrics)
    try:
        scope.__exit__(None, None, None)
    finally:
        events.remove_listener(r.metrics)
    assert r.value("budgetspan_live_runs", workflow="early") == 0
    assert r.value("budgetspan_runs_total", workflow="early", outcome="success") == 1


def test_sampled_out_and_foreign_spans_are_counted(tracing: Any) -> None:
    r = Reader()
    events.add_listener(r.metrics)
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    unsampled.add_span_processor(BudgetSpanProcessor())
    try:
        bs_context.set_tracer_provider(unsampled)
        with budgetspan.run("ticket"):
            model_call()  # budgetspan's own wrapper: counted though no span is sampled
        bs_context.set_tracer_provider(tracing.provider)
        # A span made by another instrumentation, recognised by its gen_ai attributes.
        foreign = tracing.provider.get_tracer("other-instrumentation")
        attrs = {
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
            A.GEN_AI_PROVIDER_NAME: "openai",
            A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        }
        with budgetspan.run("ticket"), foreign.start_as_current_span("chat x", attributes=attrs) as s:
            s.set_attribute(A.GEN_AI_USAGE_INPUT_TOKENS, 100)
            s.set_attribute(A.GEN_AI_USAGE_OUTPUT_TOKENS, 10)
    finally:
        events.remove_listener(r.metrics)
        unsampled.shutdown()
    calls = {"workflow": "ticket", "provider": "openai", "model": "gpt-4o-mini", "status": "ok"}
    assert r.value("budgetspan_model_calls_total", **calls) == 2
    assert r.value("budgetspan_runs_total", workflow="ticket", outcome="success") == 2
    tok = {"workflow": "ticket", "provider": "openai", "model": "gpt-4o-mini", "type": "input"}
    assert r.value("budgetspan_tokens_total", **tok) == 1000 + 100


def test_label_values_are_capped_per_label(tracing: Any) -> None:
    r = Reader(max_label_values=2)
    events.add_listener(r.metrics)
    try:
        for wf in ("a", "b", "c", "d"):
            with budgetspan.run(wf):
                model_call(model=f"model-{wf}", provider="acme", spend=Spend(1, 1))
    finally:
        events.remove_listener(r.metrics)
    runs = {s["workflow"] for s in r.series("budgetspan_runs_total")}
    assert runs == {"a", "b", "other"}
    assert r.value("budgetspan_runs_total", workflow="other", outcome="success") == 2
    models = {s["model"] for s in r.series("budgetspan_unpriced_calls_total")}
    assert models == {"model-a", "model-b", "other"}
    assert r.value("budgetspan_unpriced_calls_total", provider="acme", model="other") == 2


def test_non_finite_or_negative_figures_never_poison_a_series() -> None:
    r = Reader()
    for bad in (float("nan"), float("inf"), -1.0):
        r.metrics.on_call_end(
            CallRecord(
                "model",
                "wf",
                "model_decision",
                0.1,
                provider="p",
                model="m",
                spend=Spend(-5, 10, None, None, None, None),
                cost_usd=bad,
            )
        )
    assert r.series("budgetspan_cost_usd_total") == []
    assert r.value("budgetspan_tokens_total", workflow="wf", provider="p", model="m", type="output") == 30
    assert r.series("budgetspan_tokens_total") == [
        {"workflow": "wf", "provider": "p", "model": "m", "type": "output"}
    ]
    assert r.value("budgetspan_model_calls_total", workflow="wf", provider="p", model="m", status="ok") == 3


def test_label_cap_unit() -> None:
    cap = LabelCap("model", 2)
    assert [cap("x"), cap("y"), cap("z"), cap("x"), cap(None), cap("other")] == [
        "x",
        "y",
        "other",
        "x",
        "other",
        "other",
    ]
    cap2 = LabelCap("model", 3)
    assert cap2(None) == "unknown" and cap2("") == "unknown"
    assert cap2("m" * 500) == "m" * 120
    assert cap.overflowed == 2


def test_exposition_follows_prometheus_conventions(reader: Reader) -> None:
    with budgetspan.run("ticket", max_model_calls=3):
        model_call(ttft=True)
    text = generate_latest(reader.registry).decode()
    types = {
        line.split()[2]: line.split()[3]
        for line in text.splitlines()
        if line.startswith("# TYPE budgetspan_")
    }
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        if name.endswith("_created"):
            continue
        assert not any(u in name for u in ("_ms", "_millis", "_cents", "_dollars")), name
    assert types["budgetspan_run_cost_usd"] == "histogram"
    assert types["budgetspan_live_runs"] == "gauge"
    # Dollar buckets resolve sub-cent costs (OpenLIT's default buckets put all under $5 together).
    assert 'budgetspan_run_cost_usd_bucket{le="0.0005"' in text


def test_install_serves_and_port_in_use_is_logged(
    tracing: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "_server", None)
    proc = endpoint.install(0)
    try:
        assert isinstance(proc, endpoint.MetricsSpanProcessor) and proc.address is not None
        with budgetspan.run("served"):
            pass
        host, port = proc.address
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        assert 'budgetspan_runs_total{outcome="success",workflow="served"}' in body
        assert host == "127.0.0.1"
        # A second endpoint on a port that is taken: error logged, no exception.
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        monkeypatch.setattr(endpoint, "_server", None)
        with caplog.at_level(logging.ERROR, logger=M.__name__):
            assert endpoint.serve(busy.getsockname()[1]) is None
        busy.close()
        assert "cannot serve Prometheus metrics" in caplog.text
        assert A.ENV_METRICS_PORT in caplog.text
    finally:
        monkeypatch.setattr(endpoint, "_server", None)
        proc.shutdown()
        events.remove_listener(endpoint.get_metrics())


def test_metrics_addr_env_chooses_the_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "_server", None)
    monkeypatch.setenv(A.ENV_METRICS_ADDR, "127.0.0.2")  # another loopback address
    try:
        address = endpoint.serve(0)
        assert address is not None and address[0] == "127.0.0.2"
        with urllib.request.urlopen(f"http://127.0.0.2:{address[1]}/metrics", timeout=5) as r:
            assert r.status == 200
    finally:
        endpoint.stop_server()


def test_processor_shutdown_stops_the_endpoint(tracing: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint, "_server", None)
    proc = endpoint.install(0)
    try:
        assert proc.address is not None
        host, port = proc.address
        proc.shutdown()
        assert endpoint.server_address() is None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)
    finally:
        endpoint.stop_server()
        events.remove_listener(endpoint.get_metrics())


def test_bad_port_env_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(A.ENV_METRICS_PORT, "nine")
    with caplog.at_level(logging.ERROR, logger=M.__name__):
        assert endpoint.port_from_env() is None
    assert "BUDGETSPAN_METRICS_PORT='nine' is not a port number" in caplog.text
    monkeypatch.setenv(A.ENV_METRICS_PORT, "9464")
    assert endpoint.port_from_env() == 9464


ZERO_CODE_AGENT = """
import urllib.request
import budgetspan
from budgetspan.processors import metrics_endpoint as endpoint

@budgetspan.tool
def lookup(q):
    return q

with budgetspan.run("zero_code"):
    lookup("x")
host, port = endpoint.server_address()
print(urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode())
"""


def test_zero_code_serves_metrics_under_opentelemetry_instrument(tmp_path: Any) -> None:
    """BUDGETSPAN_METRICS_PORT alone turns the endpoint on under opentelemetry-instrument, even
    with no SDK tracer provider configured (metrics come from events, not spans)."""
    script = tmp_path / "agent.py"
    script.write_text(ZERO_CODE_AGENT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OTEL_"))}
    env.update(
        {
            A.ENV_METRICS_PORT: "0",
            "OTEL_TRACES_EXPORTER": "none",
            # Only the hook matters here; skip importing the heavy instrumented libraries.
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(
                f"budgetspan_{n}"
                for n in (
                    "openai",
                    "anthropic",
                    "langchain",
                    "llamaindex",
                    "mcp",
                    "chroma",
                    "qdrant",
                    "openai_agents",
                    "pydantic_ai",
                    "langgraph",
                    "llamaindex_agents",
                )
            ),
        }
    )
    bindir = Path(sys.executable).parent
    r = subprocess.run(
        [str(bindir / "opentelemetry-instrument"), sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert 'budgetspan_runs_total{outcome="success",workflow="zero_code"} 1.0' in r.stdout
    assert 'budgetspan_tool_calls_total{status="ok",tool="lookup",workflow="zero_code"} 1.0' in r.stdout


@pytest.mark.parametrize("enabled", [True, False])
def test_created_series_follow_prometheus_clients_switch(
    reader: Reader, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    import prometheus_client.metrics

    monkeypatch.setattr(prometheus_client.metrics, "_use_created", enabled)
    model_call()
    created = [
        n for fam in reader.registry.collect() for s in fam.samples if (n := s.name).endswith("_created")
    ]
    assert ("budgetspan_model_calls_created" in created) is enabled
    assert ("budgetspan_model_call_duration_seconds_created" in created) is enabled
    assert len(reader.series("budgetspan_model_calls_total")) == 1  # the value itself is there


def test_counter_cells_refuse_to_go_down() -> None:
    from budgetspan.processors.metric_cells import CounterCell

    cell = CounterCell()
    cell.inc(2)
    with pytest.raises(ValueError):
        cell.inc(-1)
    assert cell.value == 2


def test_extensions_loops_and_tool_refusals_are_counted(reader: Reader) -> None:
    """Issue 18: budgetspan_budget_extensions_total, budgetspan_loops_total and
    budgetspan_tool_refusals_total, and a loop stop is an exhaustion with reason no_progress."""

    @budgetspan.tool(max_calls=1)
    def lookup(i: int) -> str:
        return "same"

    @budgetspan.tool
    def poll(i: int) -> str:
        return "same"

    def approve(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        return budgetspan.Extend(max_tool_calls=1, reason="approval")

    with budgetspan.run(
        "ticket", max_tool_calls=3, max_repeated_calls=2, on_limit=approve, suppress_exhausted=True
    ):
        lookup(1)
        with pytest.raises(budgetspan.ToolRefused):
            lookup(2)
        poll(1)
        poll(2)
        poll(3)  # the 4th tool call: extended
        poll(3)  # the same call again with the same result: a loop
    ext = {"workflow": "ticket", "limit": "max_tool_calls"}
    assert reader.value("budgetspan_budget_extensions_total", **ext) == 1
    loop = {"workflow": "ticket", "type": "repeated_call", "status": "stopped"}
    assert reader.value("budgetspan_loops_total", **loop) == 1
    refused = {"workflow": "ticket", "tool": "lookup", "reason": "tool.max_calls"}
    assert reader.value("budgetspan_tool_refusals_total", **refused) == 1
    stops = {"workflow": "ticket", "reason": "no_progress"}
    assert reader.value("budgetspan_budget_exhaustions_total", **stops) == 1
