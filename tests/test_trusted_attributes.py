"""The trusted attribute write gives exactly what ``set_attributes`` gives, or falls back to it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext

from budgetspan.instrumentation import trusted_attributes as T

VALUES: dict[str, Any] = {
    "gen_ai.response.id": "chatcmpl-1",
    "gen_ai.usage.input_tokens": 15,
    "gen_ai.usage.cost": 0.0000455,
    "budgetspan.usage.unreported": True,
    "gen_ai.response.finish_reasons": ("stop",),
}


def _exported(limits: SpanLimits | None, write: Any, values: dict[str, Any]) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits) if limits else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("s", attributes={"gen_ai.operation.name": "chat"})
    write(span, values)
    span.end()
    (finished,) = exporter.get_finished_spans()
    return dict(finished.attributes or {})


def _sdk_write(span: Any, values: dict[str, Any]) -> None:
    span.set_attributes(values)


@pytest.mark.parametrize(
    "limits",
    [None, SpanLimits(max_span_attributes=3), SpanLimits(max_span_attribute_length=4)],
    ids=["no-limits", "count-limit", "length-limit"],
)
@pytest.mark.parametrize(
    "values",
    [
        VALUES,
        {**VALUES, "gen_ai.response.finish_reasons": ["stop", "length"]},  # a list: the SDK makes a tuple
        {"a": math.nan, "b": 1},
        {"gen_ai.operation.name": "embeddings", "x": 1},  # rewrites a key set at start
        {"a": {"nested": 1}},  # invalid for the SDK: dropped there, dropped here
        {"": 1, "b": 2},  # an empty key: dropped by the SDK
        {"a": ("x", 1)},  # a mixed tuple: the SDK's rules decide
    ],
    ids=["plain", "list", "nan", "rewrite", "invalid", "empty-key", "mixed-tuple"],
)
def test_same_attributes_as_the_sdk_write(limits: SpanLimits | None, values: dict[str, Any]) -> None:
    want = _exported(limits, _sdk_write, values)
    got = _exported(limits, T.set_trusted_attributes, values)
    assert list(got.items()) == list(want.items()) or (
        # NaN != NaN: compare the rest and that both kept a NaN
        {k: v for k, v in got.items() if v == v} == {k: v for k, v in want.items() if v == v}
        and [k for k, v in got.items() if v != v] == [k for k, v in want.items() if v != v]
    )


def test_the_fast_path_is_taken_only_where_it_is_equivalent() -> None:
    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("s")
    assert T._write(span, VALUES) is True  # plain values, no limits: written directly
    assert T._write(span, {"a": ["list"]}) is False  # needs the SDK's conversion
    limited = (
        TracerProvider(span_limits=SpanLimits(max_span_attribute_length=8)).get_tracer("t").start_span("s")
    )
    assert T._write(limited, VALUES) is False  # a length limit: the SDK truncates
    span.end()
    assert T._write(span, {"late": 1}) is False  # ended: the SDK ignores (and logs)
    assert "late" not in (span.attributes or {})


def test_spans_from_an_sdk_tracer_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    span = TracerProvider().get_tracer("t").start_span("s")

    def refuse(attributes: Any) -> None:
        raise AssertionError("set_attributes called: the fast path was not taken")

    monkeypatch.setattr(span, "set_attributes", refuse)
    T.set_trusted_attributes(span, VALUES)
    assert dict(span.attributes or {}) == VALUES


def test_non_sdk_spans_get_set_attributes() -> None:
    span = NonRecordingSpan(SpanContext(1, 2, False))
    T.set_trusted_attributes(span, VALUES)  # a no-op span: no error, nothing to write
    assert span.is_recording() is False


# --- attributes at creation only for samplers that read them ----------------------------------


class _Recorder(sampling.Sampler):
    """A sampler that decides on attributes (keeps model calls only) and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> sampling.SamplingResult:
        attrs = dict(attributes or {})
        self.seen.append(attrs)
        keep = attrs.get("gen_ai.operation.name") == "chat"
        decision = sampling.Decision.RECORD_AND_SAMPLE if keep else sampling.Decision.DROP
        return sampling.SamplingResult(decision, attributes if keep else None)

    def get_description(self) -> str:
        return "recorder"


@pytest.mark.parametrize(
    ("sampler", "blind"),
    [
        (sampling.DEFAULT_ON, True),
        (sampling.ParentBased(sampling.TraceIdRatioBased(0.5)), True),
        (sampling.ALWAYS_OFF, True),
        (sampling.ParentBased(_Recorder()), False),  # a stock wrapper around a reader: reads
        (_Recorder(), False),
    ],
)
def test_which_samplers_ignore_attributes(sampler: sampling.Sampler, blind: bool) -> None:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert T.attributes_unread_at_start(provider.get_tracer("t")) is blind


@contextlib.contextmanager
def _budgetspan_traces_to(provider: TracerProvider) -> Iterator[None]:
    """budgetspan's own spans go to ``provider`` inside the block."""
    from budgetspan.run import set_tracer_provider

    set_tracer_provider(provider)
    try:
        yield
    finally:
        set_tracer_provider(None)


def _exporting(sampler: sampling.Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_sampler_that_reads_attributes_sees_the_request_at_creation(tracing: Any) -> None:
    from budgetspan.instrumentation.calls import Call

    recorder = _Recorder()
    provider, exporter = _exporting(recorder)
    with _budgetspan_traces_to(provider):
        for op in ("chat", "embeddings"):
            call = Call(op, f"{op} m", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "m"})
            call.start()
            call.end()
    assert [s.get("gen_ai.operation.name") for s in recorder.seen] == ["chat", "embeddings"]
    assert all(s.get("gen_ai.request.model") == "m" for s in recorder.seen)
    (kept,) = exporter.get_finished_spans()  # the sampler's decision on the attributes held
    assert kept.attributes is not None and kept.attributes["gen_ai.operation.name"] == "chat"


def test_with_a_stock_sampler_the_span_gets_every_attribute_at_the_end(tracing: Any) -> None:
    from budgetspan.instrumentation.calls import Call

    provider, exporter = _exporting()
    with _budgetspan_traces_to(provider):
        call = Call("chat", "chat m", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "m"})
        call.start()
        assert dict(call.span.attributes or {}) == {}  # type: ignore[union-attr]  # nothing validated at creation
        call.end()
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["gen_ai.request.model"] == "m"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["budgetspan.phase"] == "model_decision"


class _ReadsOnStart(SpanProcessor):
    """A processor that reads attributes when a span starts (routing, filtering, enrichment)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.seen.append(dict(span.attributes or {}))


def test_a_processor_that_may_read_attributes_sees_them_at_start(tracing: Any) -> None:
    from budgetspan.instrumentation.calls import Call
    from budgetspan.processors.budget import BudgetSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BudgetSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("budgetspan")
    assert T.attributes_unread_at_start(tracer) is True  # stock and budgetspan's own: deferred
    reader = _ReadsOnStart()
    provider.add_span_processor(reader)  # added later: the cached answer must change
    assert T.attributes_unread_at_start(tracer) is False
    with _budgetspan_traces_to(provider):
        call = Call("chat", "chat m", {"gen_ai.provider.name": "openai", "gen_ai.request.model": "m"})
        call.start()
        call.end()
    (seen,) = reader.seen
    assert seen["gen_ai.operation.name"] == "chat" and seen["gen_ai.request.model"] == "m"
    assert seen["budgetspan.phase"] == "model_decision"


def test_what_code_sets_on_the_span_during_the_call_wins(tracing: Any) -> None:
    from budgetspan.instrumentation.calls import Call

    provider, exporter = _exporting()
    with _budgetspan_traces_to(provider):
        call = Call("chat", "chat m", {"gen_ai.provider.name": "openai"})
        call.start()
        assert call.span is not None
        call.span.set_attribute("budgetspan.phase", "verification")  # user code, mid-call
        call.end()
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["budgetspan.phase"] == "verification"
    assert span.attributes["gen_ai.provider.name"] == "openai"


@pytest.mark.parametrize(
    "limits",
    [
        None,
        SpanLimits(max_span_attributes=6),
        SpanLimits(max_span_attributes=7),
        SpanLimits(max_span_attribute_length=4),
    ],
    ids=["no-limits", "no-room-for-both", "room-for-both", "length-limit"],
)
@pytest.mark.parametrize(
    "start",
    [{"gen_ai.operation.name": "chat"}, {"gen_ai.operation.name": "chat", "budgetspan.phase": "mine"}],
    ids=["new-keys", "key-already-set"],
)
def test_tagging_a_starting_span_gives_what_the_sdk_write_gives(
    limits: SpanLimits | None, start: dict[str, Any]
) -> None:
    """tag_starting_span, called from a processor's on_start, against set_attributes in the same place."""
    start = {**start, **{f"a{i}": i for i in range(4)}}

    def run(tag: Any) -> dict[str, Any]:
        class Tagger(SpanProcessor):
            def on_start(self, span: Any, parent_context: Any = None) -> None:
                tag(span)

        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits) if limits else TracerProvider()
        provider.add_span_processor(Tagger())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.get_tracer("t").start_span("s", attributes=start).end()
        (finished,) = exporter.get_finished_spans()
        return dict(finished.attributes or {})

    ours = run(
        lambda span: T.tag_starting_span(
            span, "budgetspan.phase", "model_decision", "budgetspan.run_id", "r-1"
        )
    )
    sdk = run(
        lambda span: span.set_attributes({"budgetspan.phase": "model_decision", "budgetspan.run_id": "r-1"})
    )
    assert ours == sdk
    assert list(ours) == list(sdk)  # the same keys in the same order (an evicted key is the same one)


def test_tagging_a_span_that_is_not_the_sdks_goes_through_set_attributes() -> None:
    span = NonRecordingSpan(SpanContext(1, 2, False))
    T.tag_starting_span(span, "budgetspan.phase", "x", "budgetspan.run_id", "y")  # no error, nothing kept
    assert not span.is_recording()
