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
