"""What travels with a job's task: its id (the run id), workflow, budget, mode, notification target
trace context and identity (tenant, user, permissions, conversation), as plain strings in the message headers of any queue.

The budget is resolved where the job is submitted (profile plus limits, from that process's
configuration) and sent whole, so the worker enforces the budget the submitter chose, whatever
the worker's own configuration says. The trace context is W3C ``traceparent``/``baggage``: the
worker's run is a child of the span that submitted the job, and the baggage names the job's run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import baggage, propagate

from budgetspan import attributes as A
from budgetspan.accounting.budget import LIMIT_NAMES, Budget, ToolLimits
from budgetspan.accounting.ledger import Mode
from budgetspan.config import get_config
from budgetspan.runs import context

#: Header names (one namespace, so any queue can carry them next to its own).
H_JOB = "budgetspan-job-id"
H_WORKFLOW = "budgetspan-workflow"
H_BUDGET = "budgetspan-budget"
H_MODE = "budgetspan-mode"
H_NOTIFY = "budgetspan-notify"
H_TENANT = "budgetspan-tenant"
H_USER = "budgetspan-user"
H_PERMISSIONS = "budgetspan-permissions"  # a JSON list
H_CONVERSATION = "budgetspan-conversation"
H_PARENTS = "budgetspan-parents"  # a JSON list of the submitting run and its enclosing runs
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
class ParentRun:
    """A declared run the job was submitted from (or one enclosing it): the job spends from it too,
    as a nested run spends from its parents. Only runs kept on a shared Redis ledger travel."""

    run_id: str
    workflow: str
    budget: Budget
    mode: Mode

    def as_json(self) -> dict[str, str]:
        return {
            "id": self.run_id,
            "workflow": self.workflow,
            "budget": budget_to_json(self.budget),
            "mode": self.mode.value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> ParentRun:
        return cls(
            str(data["id"]),
            str(data["workflow"]),
            budget_from_json(str(data["budget"])),
            Mode(str(data["mode"])),
        )


def parents_here() -> tuple[ParentRun, ...]:
    """The current declared run and those enclosing it, innermost first, when they are kept on a
    Redis ledger (a job's worker can reach them there); none on a process's own ledger."""
    from budgetspan.accounting.redis_ledger import RedisLedger

    here = context.current_run()
    if here is None or here.implicit or not isinstance(here.ledger, RedisLedger):
        return ()
    chain = [here, *here.ancestors()]
    return tuple(
        ParentRun(r.id, r.workflow, r.budget, r.mode)
        for r in chain
        if not r.implicit and isinstance(r.ledger, RedisLedger)
    )


@dataclass(frozen=True)
class JobSpec:
    """One job: ``job_id`` is also the id of the run that spends its budget."""

    job_id: str
    workflow: str
    budget: Budget
    mode: Mode
    notify: str | None = None  # "package.module:function" or an http(s) URL
    trace: Mapping[str, str] = field(default_factory=dict)
    # The run's identity (``budgetspan.run``'s): who the job works for.
    tenant: str | None = None
    user: str | None = None
    permissions: frozenset[str] = frozenset()
    conversation_id: str | None = None
    parents: tuple[ParentRun, ...] = ()  # innermost first

    @classmethod
    def new(
        cls,
        workflow: str,
        budget: Budget | str | Mapping[str, Any] | None = None,
        mode: Mode | str | None = None,
        *,
        notify: str | None = None,
        job_id: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        permissions: Iterable[str] | None = None,
        conversation_id: str | None = None,
        **limits: Any,
    ) -> JobSpec:
        """Resolve the budget here (profiles, workflow defaults, limits), capture the trace, with the
        job's run id in W3C baggage, and the identity: given, else the submitting run's."""
        cfg = get_config()
        job_id = job_id or uuid.uuid4().hex
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=baggage.set_baggage(A.RUN_ID, job_id))
        if isinstance(permissions, str):
            raise TypeError("permissions: a collection of names, not one string")
        here = context.current_run()
        return cls(
            job_id=job_id,
            workflow=workflow,
            budget=cfg.budget_for(workflow, budget, **limits),
            mode=cfg.mode if mode is None else Mode(mode),
            notify=notify,
            trace={k: v for k, v in carrier.items() if k in TRACE_HEADERS},
            tenant=tenant or (here.tenant if here else None),
            user=user or (here.user if here else None),
            permissions=frozenset(
                permissions if permissions is not None else (here.permissions if here else ())
            ),
            conversation_id=conversation_id or (here.conversation_id if here else None),
            parents=parents_here(),
        )

    def headers(self) -> dict[str, str]:
        out = {
            H_JOB: self.job_id,
            H_WORKFLOW: self.workflow,
            H_BUDGET: budget_to_json(self.budget),
            H_MODE: self.mode.value,
        }
        for name, value in (
            (H_NOTIFY, self.notify),
            (H_TENANT, self.tenant),
            (H_USER, self.user),
            (H_CONVERSATION, self.conversation_id),
        ):
            if value:
                out[name] = value
        if self.permissions:
            out[H_PERMISSIONS] = json.dumps(sorted(self.permissions))
        if self.parents:
            out[H_PARENTS] = json.dumps([p.as_json() for p in self.parents])
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
            tenant=headers.get(H_TENANT) or None,
            user=headers.get(H_USER) or None,
            permissions=frozenset(json.loads(headers.get(H_PERMISSIONS) or "[]")),
            conversation_id=headers.get(H_CONVERSATION) or None,
            parents=tuple(ParentRun.from_json(p) for p in json.loads(headers.get(H_PARENTS) or "[]")),
        )


__all__ = ["TRACE_HEADERS", "JobSpec", "ParentRun", "budget_from_json", "budget_to_json", "parents_here"]
