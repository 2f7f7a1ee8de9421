"""What travels with a job's task: its id (the run id), workflow, budget, mode, notification target
and trace context, as plain strings in the message headers of any queue.

The budget is resolved where the job is submitted (profile plus limits, from that process's
configuration) and sent whole, so the worker enforces the budget the submitter chose, whatever
the worker's own configuration says. The trace context is W3C ``traceparent``/``baggage``: the
worker's run is a child of the span that submitted the job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate

from budgetspan.accounting.budget import LIMIT_NAMES, Budget, ToolLimits
from budgetspan.accounting.ledger import Mode
from budgetspan.config import get_config

#: Header names (one namespace, so any queue can carry them next to its own).
H_JOB = "budgetspan-job-id"
H_WORKFLOW = "budgetspan-workflow"
H_BUDGET = "budgetspan-budget"
H_MODE = "budgetspan-mode"
H_NOTIFY = "budgetspan-notify"
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def budget_to_json(budget: Budget) -> str:
    data: dict[str, Any] = dict(budget.limits())
    if budget.profile:
        data["profile"] = budget.profile
    if budget.tools:
        data["tools"] = {
            name: {
                k: v
                for k, v in (
                    ("timeout_s", t.timeout_s),
                    ("max_calls", t.max_calls),
                    ("max_retries", t.max_retries),
                )
                if v is not None
            }
            for name, t in budget.tools.items()
        }
    return json.dumps(data, sort_keys=True)


def budget_from_json(text: str) -> Budget:
    data = json.loads(text)
    limits = {n: data[n] for n in LIMIT_NAMES if n in data}
    tools = {name: ToolLimits(**t) for name, t in (data.get("tools") or {}).items()}
    return Budget(**limits, tools=tools, profile=data.get("profile"))


@dataclass(frozen=True)
class JobSpec:
    """One job: ``job_id`` is also the id of the run that spends its budget."""

    job_id: str
    workflow: str
    budget: Budget
    mode: Mode
    notify: str | None = None  # "package.module:function" or an http(s) URL
    trace: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        workflow: str,
        budget: Budget | str | Mapping[str, Any] | None = None,
        mode: Mode | str | None = None,
        *,
        notify: str | None = None,
        job_id: str | None = None,
        **limits: Any,
    ) -> JobSpec:
        """Resolve the budget here (profiles, workflow defaults, limits) and capture the trace."""
        cfg = get_config()
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return cls(
            job_id=job_id or uuid.uuid4().hex,
            workflow=workflow,
            budget=cfg.budget_for(workflow, budget, **limits),
            mode=cfg.mode if mode is None else Mode(mode),
            notify=notify,
            trace={k: v for k, v in carrier.items() if k in TRACE_HEADERS},
        )

    def headers(self) -> dict[str, str]:
        out = {
            H_JOB: self.job_id,
            H_WORKFLOW: self.workflow,
            H_BUDGET: budget_to_json(self.budget),
            H_MODE: self.mode.value,
        }
        if self.notify:
            out[H_NOTIFY] = self.notify
        out.update(self.trace)
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any]) -> JobSpec:
        """Read a spec back; raises KeyError when the message carries no job."""
        return cls(
            job_id=str(headers[H_JOB]),
            workflow=str(headers[H_WORKFLOW]),
            budget=budget_from_json(str(headers[H_BUDGET])),
            mode=Mode(str(headers.get(H_MODE) or Mode.ENFORCE.value)),
            notify=headers.get(H_NOTIFY) or None,
            trace={k: str(headers[k]) for k in TRACE_HEADERS if headers.get(k)},
        )


__all__ = ["TRACE_HEADERS", "JobSpec", "budget_from_json", "budget_to_json"]
