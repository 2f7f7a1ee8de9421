"""A plain Python service with OpenLLMetry and no budgetspan: the ``openai`` SDK instrumented by
Traceloop's ``opentelemetry-instrumentation-openai``, the OpenTelemetry SDK's OTLP/HTTP exporter;
its tools traced by hand as Traceloop's ``@tool`` decorator names them.

Run in the peers' environment (``bench/setup_peers.sh``: OpenLLMetry registers the same ``openai``
instrumentation entry point as budgetspan, so it never shares the test suite's). Environment and
protocol as ``node/service.js`` (see ``foreign.py``): rounds of four runs until SIGTERM, ``round N``
after each, then the spans flushed and exit 0.
"""

from __future__ import annotations

import os
import signal
import threading

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": os.environ["SERVICE_NAME"]}))
provider.add_span_processor(
    BatchSpanProcessor(
        OTLPSpanExporter(endpoint=os.environ["OTLP_ENDPOINT"] + "/v1/traces"), schedule_delay_millis=100
    )
)
trace.set_tracer_provider(provider)
OpenAIInstrumentor().instrument()

import openai  # noqa: E402  (after the instrumentation, as OpenLLMetry's docs do it)

client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="test-key", max_retries=0)
tracer = trace.get_tracer("support-service")
CARD = "my card number is 4111 1111 1111 1111"
stopping = threading.Event()


def chat(model: str, stream: bool = False) -> None:
    messages = [{"role": "user", "content": CARD}]
    if not stream:
        client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
        return
    for _ in client.chat.completions.create(model=model, messages=messages, stream=True):  # type: ignore[arg-type]
        pass


def tool(name: str, ok: bool) -> None:
    with tracer.start_as_current_span(f"{name}.tool") as span:
        span.set_attributes(
            {
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": name,
                "traceloop.entity.input": '{"order": "A-1", "email": "a@example.com"}',
            }
        )
        if not ok:
            span.set_status(trace.StatusCode.ERROR, "order service unavailable")


def round_() -> None:
    with tracer.start_as_current_span("POST /support", kind=trace.SpanKind.SERVER):
        tool("lookup_order", True)
        chat("gpt-4o-mini")
        chat("gpt-4o-mini")
    with tracer.start_as_current_span("POST /support", kind=trace.SpanKind.SERVER):
        for _ in range(3):  # over its profile (2 model calls)
            chat("gpt-4o-mini")
    with tracer.start_as_current_span("POST /support", kind=trace.SpanKind.SERVER):
        tool("lookup_order", False)
        chat("acme-llm-1")  # no known price
    with tracer.start_as_current_span("POST /support", kind=trace.SpanKind.SERVER):
        chat("gpt-4o-mini", stream=True)  # reports no usage


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    n = 0
    while not stopping.is_set():
        round_()
        print(f"round {n}", flush=True)
        n += 1
        stopping.wait(0.3)
    provider.shutdown()


if __name__ == "__main__":
    main()
