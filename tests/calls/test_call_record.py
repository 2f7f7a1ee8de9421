"""The record a finished call gives its listeners carries each of the call's figures in its own
field (``call_record`` passes them by position: a field out of order must fail here)."""

from __future__ import annotations

import dataclasses

from opentelemetry.sdk.trace import TracerProvider

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import Mode, Spend
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.calls.call import Call, call_record
from budgetspan.events import CallRecord
from budgetspan.runs.run import Run


def test_every_field_of_the_record_comes_from_its_own_figure() -> None:
    run = Run("checkout", Budget(), Mode.ENFORCE, ledger=InMemoryLedger())
    call = Call("chat", "chat m", provider="openai", model="gpt-4o", tool="t-name", label="Looking up")
    call.run = run
    call.phase, call.step = "model_decision", "plan"
    call.response_model = "gpt-4o-2024"
    call.cost_usd, call.retries, call.ttft_s, call.documents = 0.25, 2, 0.125, 7
    call.span = TracerProvider().get_tracer("t").start_span("chat m")
    spend = Spend(10, 3)

    record = call_record(call, 1.5, "timeout", spend, True, False)

    trace_id = call.span.get_span_context().trace_id
    assert {f.name: getattr(record, f.name) for f in dataclasses.fields(CallRecord)} == {
        "kind": "model",
        "workflow": "checkout",
        "phase": "model_decision",
        "duration_s": 1.5,
        "status": "timeout",
        "provider": "openai",
        "model": "gpt-4o-2024",
        "tool": "t-name",
        "spend": spend,
        "cost_usd": 0.25,
        "unreported_usage": True,
        "unpriced": False,
        "retries": 2,
        "time_to_first_token_s": 0.125,
        "documents": 7,
        "label": "Looking up",
        "operation": "chat",
        "step": "plan",
        "run": run,
        "trace_id": trace_id,
    }
