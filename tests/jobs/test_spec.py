"""What travels in a job's headers comes back the same in the worker."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

import budgetspan
from budgetspan.accounting.budget import Budget, ToolLimits
from budgetspan.accounting.ledger import Mode
from budgetspan.jobs.spec import JobSpec


def test_the_budget_profile_limits_and_tool_caps_survive_the_headers() -> None:
    budget = Budget(
        max_model_calls=4, max_cost_usd=0.25, tools={"search": ToolLimits(max_calls=2)}, profile="bg"
    )
    spec = JobSpec(
        "j1",
        "triage",
        budget,
        Mode.OBSERVE,
        notify="app.hooks:on_end",
        trace={"traceparent": "00-x"},
        tenant="acme",
        user="u-7",
        permissions=frozenset({"refund", "read"}),
        conversation_id="c-1",
    )
    headers = spec.headers()
    assert all(isinstance(v, str) for v in headers.values())  # any queue can carry them
    assert JobSpec.from_headers(headers) == spec


def test_a_message_without_a_job_is_not_a_job() -> None:
    with pytest.raises(KeyError):
        JobSpec.from_headers({"traceparent": "00-x"})


def test_new_resolves_the_budget_where_the_job_is_submitted() -> None:
    spec = JobSpec.new("triage", {"max_model_calls": 3}, "enforce")
    assert spec.budget.max_model_calls == 3 and spec.mode is Mode.ENFORCE
    # no span current: no traceparent to send, only the baggage naming the job's run
    assert spec.job_id and spec.trace == {"baggage": f"budgetspan.run.id={spec.job_id}"}


def test_new_takes_the_submitting_runs_identity_and_names_the_job_in_baggage() -> None:
    with TracerProvider().get_tracer("t").start_as_current_span("submit"):
        with budgetspan.run("web", tenant="acme", user="u-7", permissions=["refund"]):
            spec = JobSpec.new("triage", job_id="job-1")
            other = JobSpec.new("triage", user="u-8", permissions=[])
    assert (spec.tenant, spec.user, spec.permissions) == ("acme", "u-7", frozenset({"refund"}))
    assert (other.tenant, other.user, other.permissions) == ("acme", "u-8", frozenset())
    assert spec.trace["traceparent"].startswith("00-")
    assert "budgetspan.run.id=job-1" in spec.trace["baggage"]  # W3C baggage: the job's run
    back = JobSpec.from_headers(spec.headers())
    assert back == spec


def test_the_runs_a_sub_job_spends_from_survive_the_headers() -> None:
    from budgetspan.jobs.spec import ParentRun

    parents = (
        ParentRun("inner", "fanout", Budget(max_model_calls=3), Mode.ENFORCE),
        ParentRun("outer", "batch", Budget(max_cost_usd=1.5, profile="bg"), Mode.OBSERVE),
    )
    spec = JobSpec("j2", "child", Budget(), Mode.ENFORCE, parents=parents)
    assert JobSpec.from_headers(spec.headers()) == spec


def test_a_run_on_the_process_s_own_ledger_is_no_parent_a_worker_could_reach() -> None:
    from budgetspan.accounting.memory import InMemoryLedger
    from budgetspan.runs import context

    previous = context.get_ledger()
    context.set_ledger(InMemoryLedger())
    try:
        with budgetspan.run("local", max_model_calls=2):  # no other process sees this ledger
            spec = JobSpec.new("child")
    finally:
        context.set_ledger(previous)
    assert spec.parents == ()
    assert "budgetspan-parents" not in spec.headers()
