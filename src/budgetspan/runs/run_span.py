"""What a run's ``invoke_agent`` span says: who and what at its start, the outcome, usage,
limits and quality at its end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from budgetspan import attributes as A
from budgetspan.accounting.budget import BudgetExhausted, Usage
from budgetspan.runs.quality import quality_attributes

if TYPE_CHECKING:
    from budgetspan.runs.run import Run


def start_attributes(run: Run) -> dict[str, Any]:
    """Known when the run starts (a sampler can read them)."""
    attrs: dict[str, Any] = {
        A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
        A.GEN_AI_AGENT_NAME: run.workflow,
        A.RUN_ID: run.id,
        A.WORKFLOW: run.workflow,
        A.BUDGET_MODE: run.mode.value,
    }
    if run.conversation_id:
        attrs[A.GEN_AI_CONVERSATION_ID] = run.conversation_id
    if run.tenant:
        attrs[A.TENANT_ID] = run.tenant
    if run.user:
        attrs[A.USER_ID] = run.user
    if run.parent is not None:
        attrs[A.RUN_PARENT_ID] = run.parent.id
    if run.budget.profile:
        attrs[A.BUDGET_PROFILE] = run.budget.profile
    for name, value in run.budget.limits().items():
        attrs[A.LIMIT_PREFIX + name] = value
    return attrs


def end_attributes(run: Run, exc: BaseException | None) -> dict[str, Any]:
    """The final word on the run: outcome, time, usage at the end, why it stopped."""
    u = run.final_usage or Usage()
    attrs: dict[str, Any] = {
        A.RUN_OUTCOME: run.outcome.value if run.outcome else "unknown",
        A.RUN_BUSY_S: run.busy_s,
        A.RUN_WALL_S: run.duration_s or 0.0,
        A.RUN_PARALLELISM: (run.busy_s / run.duration_s) if run.duration_s else 0.0,
    }
    for key, value in u.as_dict().items():
        if isinstance(value, (int, float)):
            attrs[A.USAGE_PREFIX + key] = value
    attrs.update(run.limit_attributes())
    if run.provider:  # every model call used this one provider
        attrs[A.GEN_AI_PROVIDER_NAME] = run.provider
    exhausted = run.exhausted
    if exhausted is None and isinstance(exc, BudgetExhausted):
        exhausted = exc  # refused by an enclosing run's limit
    if exhausted is not None:
        attrs[A.EXHAUSTED_REASON] = exhausted.reason
        # The final word: the usage at the end, not at the first refusal.
        attrs[A.EXHAUSTED_EXPLANATION] = exhausted.explain(u)
    attrs.update(quality_attributes(run.score, run.rework))
    return attrs
