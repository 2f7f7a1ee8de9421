"""What travels in a job's headers comes back the same in the worker."""

from __future__ import annotations

import pytest

from budgetspan.accounting.budget import Budget, ToolLimits
from budgetspan.accounting.ledger import Mode
from budgetspan.jobs.spec import JobSpec


def test_the_budget_profile_limits_and_tool_caps_survive_the_headers() -> None:
    budget = Budget(
        max_model_calls=4, max_cost_usd=0.25, tools={"search": ToolLimits(max_calls=2)}, profile="bg"
    )
    spec = JobSpec(
        "j1", "triage", budget, Mode.OBSERVE, notify="app.hooks:on_end", trace={"traceparent": "00-x"}
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
    assert spec.job_id and spec.trace == {}  # no span current: no trace context to send
