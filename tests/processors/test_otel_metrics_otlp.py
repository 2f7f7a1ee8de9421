"""Zero-code with the stock OTLP/HTTP exporters: the GenAI metrics and budgetspan's series arrive.

A program runs under ``opentelemetry-instrument`` with the SDK configurator (registered the way
``opentelemetry-distro`` registers it), ``OTEL_METRICS_EXPORTER=otlp`` over http/protobuf to a
loopback OTLP receiver in this test, and the real ``openai`` SDK against a loopback model server
that counts requests and reports known token figures. The receiver decodes the metrics with
opentelemetry-proto; budgetspan's own metric names go through the standard OTLP-to-Prometheus
translation (below, from the OpenTelemetry "Prometheus and OpenMetrics compatibility" spec) and
must give the names the dashboards query.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from budgetspan import attributes as A
from tests.conftest import COMPLETION_TOKENS, PROMPT_TOKENS, REPO
from tests.instrumentation import zero_code

SCRIPT = r"""
import os
import budgetspan, openai

client = openai.OpenAI(api_key="t", base_url=os.environ["MODEL_URL"], max_retries=0)
with budgetspan.run("otlp_wf", budget={"max_model_calls": 2}) as run:
    for i in range(3):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        except budgetspan.BudgetExhausted:
            print("REFUSED", flush=True)
"""


def prometheus_name(name: str, unit: str, monotonic_sum: bool) -> str:
    """The standard OTLP-to-Prometheus metric name (underscore escaping, with suffixes): the
    name's runs of invalid characters become ``_``; the unit (``s`` -> ``seconds``; none for
    ``1`` or ``{...}``) is appended unless already a word of the name; monotonic sums get
    ``_total``."""
    words = [w for w in re.split(r"[^a-zA-Z0-9]+", name) if w]
    unit_word = {"s": "seconds", "1": "", "By": "bytes", "ms": "milliseconds"}.get(unit, unit)
    if "{" in unit:
        unit_word = ""
    if unit_word and unit_word not in words:
        words.append(unit_word)
    if monotonic_sum:
        words = [w for w in words if w != "total"] + ["total"]
    return "_".join(words)


def _run(tmp_path: Path, server: Any) -> list[Any]:
    env = {
        "MODEL_URL": server.url + "/v1",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": server.url,
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # one export, at shutdown
        "OTEL_SERVICE_NAME": "otlp-metrics-test",
    }
    proc = zero_code.run(tmp_path, SCRIPT, env, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("REFUSED") == 1
    metrics = []
    for body in server.bodies.get("/v1/metrics", []):
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                if sm.scope.name == A.INSTRUMENTATION_SCOPE:
                    metrics.extend(sm.metrics)
    assert metrics, f"no budgetspan metrics arrived: {sorted(server.bodies)}\n{proc.stderr[-3000:]}"
    return metrics


def _attrs(point: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in point.attributes}


def _points(metrics: list[Any], name: str) -> list[Any]:
    found = [m for m in metrics if m.name == name]
    assert len(found) == 1, f"{name}: {[m.name for m in metrics]}"
    m = found[0]
    return list(getattr(m, m.WhichOneof("data")).data_points)


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_standard_and_budgetspan_metrics_arrive_over_otlp(tmp_path: Path, otlp_server: Any) -> None:
    server = otlp_server
    metrics = _run(tmp_path, server)
    assert server.model_requests == 2  # the third call was refused before it left
    # gen_ai.client.token.usage: one histogram point per token type, sums = the server's figures
    usage = {_attrs(p)[A.GEN_AI_TOKEN_TYPE]: p for p in _points(metrics, A.OTEL_GEN_AI_TOKEN_USAGE)}
    assert set(usage) == {"input", "output"}
    assert (usage["input"].count, usage["input"].sum) == (2, 2 * PROMPT_TOKENS)
    assert (usage["output"].count, usage["output"].sum) == (2, 2 * COMPLETION_TOKENS)
    attrs = _attrs(usage["input"])
    assert attrs[A.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[A.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "openai_compatible"
    (duration,) = _points(metrics, A.OTEL_GEN_AI_OPERATION_DURATION)
    assert duration.count == 2  # the refused call never reached the provider: no operation
    # budgetspan's series, as Prometheus names, with the figures the run produced
    prom = {_prom(m): m for m in metrics if m.name.startswith("budgetspan.")}
    runs = _by_label(prom["budgetspan_runs_total"], A.L_OUTCOME)
    assert sum(p.as_double or p.as_int for p in runs.values()) == 1
    exhaustions = _by_label(prom["budgetspan_budget_exhaustions_total"], A.L_REASON)
    assert (exhaustions["max_model_calls"].as_int or exhaustions["max_model_calls"].as_double) == 1
    tokens = _by_label(prom["budgetspan_tokens_total"], A.L_TYPE)
    assert tokens["input"].as_int == 2 * PROMPT_TOKENS and tokens["output"].as_int == 2 * COMPLETION_TOKENS
    assert _attrs(tokens["input"])[A.L_WORKFLOW] == "otlp_wf"
    assert prom["budgetspan_run_cost_usd"].histogram.data_points[0].count == 1
    assert "budgetspan_run_duration_seconds" in prom and "budgetspan_model_call_duration_seconds" in prom
    # every translated name is a series the Prometheus path exposes (so the dashboards query it)
    assert set(prom) <= _exposition_names()
    assert set(prom) >= _dashboard_names() & _exposition_names() - _not_exercised()


def _prom(m: Any) -> str:
    data = m.WhichOneof("data")
    return prometheus_name(m.name, m.unit, data == "sum" and m.sum.is_monotonic)


def _by_label(m: Any, label: str) -> dict[str, Any]:
    return {_attrs(p)[label]: p for p in m.sum.data_points}


def _exposition_names() -> set[str]:
    """Every series name of the Prometheus path (attributes.M_*; counters end in _total there)."""
    names = {v for k, v in vars(A).items() if k.startswith("M_") and isinstance(v, str)}
    return names | {n + "_total" for n in names}


def _dashboard_names() -> set[str]:
    text = "".join(p.read_text() for p in (REPO / "dashboards").glob("*.json"))
    names = set(re.findall(r"budgetspan_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _not_exercised() -> set[str]:
    """Series this workload cannot produce (no tools, retries, streams, retrievals, errors...)."""
    return {
        A.M_TOOL_CALLS + "_total",
        A.M_TOOL_DURATION,
        A.M_RETRIES + "_total",
        A.M_RETRIEVALS + "_total",
        A.M_TIME_TO_FIRST_TOKEN,
        A.M_UNPRICED_CALLS + "_total",
        A.M_UNREPORTED_USAGE_CALLS + "_total",
        A.M_BUDGET_WOULD_EXHAUST + "_total",
        A.M_SPANS_DROPPED + "_total",
        A.M_INTERNAL_ERRORS + "_total",
        A.M_TOKEN_DETAILS + "_total",  # the model server reports no cached or reasoning tokens
        # no cache, no background job, no loop, extension or tool cap, no tenant in this workload
        A.M_CACHE_REQUESTS + "_total",
        A.M_CACHE_SAVED_USD + "_total",
        A.M_CACHE_SAVED_SECONDS + "_total",
        A.M_PROMPT_CACHE_SAVED_USD + "_total",
        A.M_PROMPT_CACHE_WRITE_PREMIUM_USD + "_total",
        A.M_JOBS + "_total",
        A.M_JOB_QUEUE_WAIT,
        A.M_LOOPS + "_total",
        A.M_BUDGET_EXTENSIONS + "_total",
        A.M_TOOL_REFUSALS + "_total",
    }
