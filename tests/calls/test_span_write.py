"""The end-of-call attribute write equals the SDK's ``set_attributes`` wherever it is taken, and
falls back to it wherever it would not be equal (limits, other value types, other span classes)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from budgetspan.calls import span_write
from budgetspan.calls.span_write import write_end_attributes

ATTRS: dict[str, Any] = {
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.cost": 2.5e-05,
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.finish_reasons": ("stop",),
    "budgetspan.stream": True,
    "gen_ai.request.model": "gpt-4o-mini",  # also given at start: rewritten with the same value
}


def _pair(limits: SpanLimits | None = None) -> tuple[Any, Any]:
    tracer = (
        TracerProvider(span_limits=limits).get_tracer("t") if limits else TracerProvider().get_tracer("t")
    )
    start = {"gen_ai.request.model": "gpt-4o-mini", "gen_ai.operation.name": "chat"}
    return tracer.start_span("a", attributes=start), tracer.start_span("b", attributes=start)


@pytest.mark.parametrize(
    "attrs",
    [ATTRS, {**ATTRS, "budgetspan.list": ["a", "b"]}, {**ATTRS, "budgetspan.mixed": ("a", 1)}, {"": 1}],
)
def test_the_written_attributes_equal_set_attributes(attrs: dict[str, Any]) -> None:
    ours, sdk = _pair()
    write_end_attributes(ours, attrs)
    sdk.set_attributes(attrs)
    ours.end()
    sdk.end()
    assert dict(ours.attributes) == dict(sdk.attributes)


def test_limits_and_ended_spans_take_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[bool] = []
    real = span_write._write
    monkeypatch.setattr(span_write, "_write", lambda span, a: used.append(real(span, a)) or used[-1])
    for limits in (SpanLimits(max_attribute_length=5), SpanLimits(max_span_attributes=3)):
        ours, sdk = _pair(limits)
        write_end_attributes(ours, ATTRS)
        sdk.set_attributes(ATTRS)
        assert dict(ours.attributes) == dict(sdk.attributes)  # truncated / evicted as the SDK does
    assert used == [False, False]
    ours, _ = _pair()
    ours.end()
    write_end_attributes(ours, ATTRS)
    assert "gen_ai.usage.input_tokens" not in ours.attributes  # an ended span is not written
    ours, _ = _pair()
    write_end_attributes(ours, ATTRS)
    assert used[-1] is True  # the usual span takes the direct write


def test_only_a_sampler_that_could_read_attributes_gets_them_at_start() -> None:
    from opentelemetry.sdk.trace import sampling

    from budgetspan.calls.span_write import sampler_reads_attributes

    class PicksByModel(sampling.Sampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
            attributes = kwargs.get("attributes") or (args[4] if len(args) > 4 else None) or {}
            decision = (
                sampling.Decision.RECORD_AND_SAMPLE
                if attributes.get("gen_ai.request.model")
                else sampling.Decision.DROP
            )
            return sampling.SamplingResult(decision)

        def get_description(self) -> str:
            return "PicksByModel"

    stock = [TracerProvider(sampler=s).get_tracer("t") for s in (
        sampling.DEFAULT_ON, sampling.ALWAYS_OFF, sampling.TraceIdRatioBased(0.5), sampling.ParentBasedTraceIdRatio(0.2)
    )]  # fmt: skip
    assert not any(sampler_reads_attributes(t) for t in stock)
    assert sampler_reads_attributes(TracerProvider(sampler=PicksByModel()).get_tracer("t"))
    assert sampler_reads_attributes(
        TracerProvider(sampler=sampling.ParentBased(root=PicksByModel())).get_tracer("t")
    )


def test_a_sampler_selecting_on_the_model_sees_it_on_a_real_call(tracing: Any) -> None:
    """End to end: a sampler keyed on gen_ai.request.model keeps budgetspan's chat span."""
    import openai
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from budgetspan.instrumentation.openai import OpenAIInstrumentor
    from budgetspan.runs import context
    from tests.replay import Recorder, chat_completion, json_response

    class PicksByModel(sampling.Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> sampling.SamplingResult:  # fmt: skip
            keep = (attributes or {}).get("gen_ai.request.model") == "gpt-4o-mini"
            return sampling.SamplingResult(
                sampling.Decision.RECORD_AND_SAMPLE if keep else sampling.Decision.DROP
            )

        def get_description(self) -> str:
            return "PicksByModel"

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=PicksByModel())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    context.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    try:
        rec = Recorder(json_response(chat_completion()))
        client = openai.OpenAI(api_key="k", http_client=rec.sync(), max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        OpenAIInstrumentor().uninstrument()
        context.set_tracer_provider(tracing.provider)
    assert [s.name for s in exporter.get_finished_spans()] == ["chat gpt-4o-mini"]
