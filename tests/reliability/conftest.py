"""Lean fixtures for the reliability suite: real SDK spans, no exporter, clean global state.

``BUDGETSPAN_TEST_SCALE`` (a float, default 1) scales the big counts (1,000 concurrent runs,
100,000 sequential runs) up or down, e.g. ``BUDGETSPAN_TEST_SCALE=0.1`` for a quick pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Sampler

from budgetspan import config as bs_config
from budgetspan import events
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.processors.budget import BudgetSpanProcessor
from tests.conftest import bs_context, bs_implicit

SCALE = float(os.environ.get("BUDGETSPAN_TEST_SCALE", "1") or 1)


def scaled(n: int, minimum: int = 10) -> int:
    """``n`` times BUDGETSPAN_TEST_SCALE, at least ``minimum``."""
    return max(minimum, int(n * SCALE))


class Lean:
    """budgetspan on a real SDK provider with the budget processor and no exporter."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.ledger = InMemoryLedger()
        self.processor = BudgetSpanProcessor()
        self.provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
        self.provider.add_span_processor(self.processor)

    def install(self) -> None:
        bs_context.set_ledger(self.ledger)
        bs_context.set_tracer_provider(self.provider)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("BUDGETSPAN_") or key == "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT":
            monkeypatch.delenv(key, raising=False)


@pytest.fixture
def lean(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lean]:
    _clean_env(monkeypatch)
    bs_config.set_config(None)
    bs_implicit.end_process_run()
    listeners = list(events._listeners)
    t = Lean()
    t.install()
    yield t
    bs_implicit.end_process_run()
    with bs_implicit._lock:
        stale = list(bs_implicit._trace_runs)
    for trace_id, root in stale:
        bs_implicit.end_trace_run(trace_id, root or 0)
    for extra in [x for x in events._listeners if x not in listeners]:
        events.remove_listener(extra)
    for missing in listeners:
        events.add_listener(missing)
    bs_context.set_ledger(InMemoryLedger())
    bs_context.set_tracer_provider(None)
    bs_config.set_config(None)
    t.provider.shutdown()
