"""The one rule that decides whether a call may start: counts, tokens, dollars, time, cancellation.

Every ledger applies this rule: ``InMemoryLedger`` calls it under the run's lock, and the Redis
ledger's Lua script is its transcription (``tests/accounting`` runs the same cases through both).

- A **count** limit refuses the call that would be the (N+1)-th.
- A **token or dollar** limit refuses a call once the limit is used up (``>=``), and refuses a call
  whose worst case, added to what is spent and to the worst cases of the calls in flight, would
  pass it. With a known worst case the limit cannot be overshot, whatever runs in parallel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from budgetspan.accounting.budget import Budget, Limit, ToolLimits, Usage
from budgetspan.accounting.ledger import CallKind, Refusal


@dataclass(slots=True)
class Held:
    """The worst cases of the calls in flight, held against the spend limits until they settle."""

    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    def toward(self, limit: str) -> float:
        """What of these figures the spend limit named ``limit`` counts (0 for any other limit)."""
        if limit == "max_cost_usd":
            return self.cost_usd
        if limit == "max_input_tokens":
            return self.input_tokens
        if limit == "max_output_tokens":
            return self.output_tokens
        if limit == "max_total_tokens":
            return self.input_tokens + self.output_tokens
        return 0.0

    def add(self, cost_usd: float, input_tokens: int, output_tokens: int, sign: int = 1) -> None:
        self.cost_usd = max(0.0, self.cost_usd + sign * cost_usd)
        self.input_tokens = max(0, self.input_tokens + sign * input_tokens)
        self.output_tokens = max(0, self.output_tokens + sign * output_tokens)


NOTHING_HELD = Held()


def tool_limits_for(budget: Budget, tool: str, defaults: ToolLimits | None) -> ToolLimits:
    """The tool's limits: the budget's entry, over the tool's own defaults (from ``@tool``)."""
    own = budget.tool_limits(tool)
    return own if defaults is None else defaults.merged(own)


def count_refusal(
    budget: Budget, usage: Usage, kind: CallKind, tool: str | None, defaults: ToolLimits | None
) -> Refusal | None:
    """The count limit that refuses one more call of ``kind`` (``tool``), if any."""
    b, u = budget, usage
    if kind is CallKind.RETRY:
        own = tool_limits_for(b, tool, defaults).max_retries if tool is not None else None
        return _over(u.retries, b.max_retries, Limit.RETRIES) or _over(
            u.tool_retries_by_name.get(tool or "", 0), own, Limit.TOOL_MAX_RETRIES, tool
        )
    if b.max_steps is not None and u.model_calls + u.tool_calls >= b.max_steps:
        return Refusal(Limit.STEPS.value, b.max_steps)
    if kind is CallKind.MODEL:
        if b.max_model_calls is not None and u.model_calls >= b.max_model_calls:
            return Refusal(Limit.MODEL_CALLS.value, b.max_model_calls)
        return None
    own = tool_limits_for(b, tool, defaults).max_calls if tool is not None else None
    return _over(u.tool_calls, b.max_tool_calls, Limit.TOOL_CALLS) or _over(
        u.tool_calls_by_name.get(tool or "", 0), own, Limit.TOOL_MAX_CALLS, tool
    )


def _over(done: int, limit: int | None, name: Limit, tool: str | None = None) -> Refusal | None:
    """A count limit (the run's, or one tool's) refuses the call that would be the (N+1)-th."""
    if limit is not None and done >= limit:
        return Refusal(name.value, limit, tool)
    return None


def spend_refusal(
    budget: Budget, usage: Usage, held: Held = NOTHING_HELD, worst: Held | None = None
) -> Refusal | None:
    """The token or dollar limit that is used up, or that ``worst`` (this call's worst case) would
    pass together with what is spent and ``held`` by the calls in flight."""
    b, u = budget, usage
    w = worst or NOTHING_HELD
    if b.max_cost_usd is not None:
        found = _breaks(u.cost_usd, held.cost_usd + w.cost_usd, b.max_cost_usd, w.cost_usd, Limit.COST_USD)
        if found is not None:
            return found
    if b.max_input_tokens is not None:
        found = _breaks(
            u.input_tokens,
            held.input_tokens + w.input_tokens,
            b.max_input_tokens,
            w.input_tokens,
            Limit.INPUT_TOKENS,
        )
        if found is not None:
            return found
    if b.max_output_tokens is not None:
        found = _breaks(
            u.output_tokens,
            held.output_tokens + w.output_tokens,
            b.max_output_tokens,
            w.output_tokens,
            Limit.OUTPUT_TOKENS,
        )
        if found is not None:
            return found
    if b.max_total_tokens is not None:
        own = w.input_tokens + w.output_tokens
        pending = held.input_tokens + held.output_tokens + own
        return _breaks(u.input_tokens + u.output_tokens, pending, b.max_total_tokens, own, Limit.TOTAL_TOKENS)
    return None


def _breaks(spent: float, pending: float, limit: float, own: float, name: Limit) -> Refusal | None:
    """Used up (``>=``), or this call's worst case would pass it with the calls in flight."""
    if spent >= limit:
        return Refusal(name.value, limit)
    if own > 0 and spent + pending > limit:
        return Refusal(name.value, limit, worst=own)
    return None


def refusal(
    budget: Budget,
    usage: Usage,
    kind: CallKind,
    *,
    tool: str | None = None,
    defaults: ToolLimits | None = None,
    held: Held = NOTHING_HELD,
    worst: Held | None = None,
    cancelled: bool = False,
    past_deadline: bool = False,
) -> Refusal | None:
    """Why one more call of ``kind`` may not start, or None: the whole rule, in its order."""
    if cancelled:
        return Refusal(Limit.CANCELLED.value, None)
    if past_deadline:
        return Refusal(Limit.WALL_CLOCK_S.value, budget.max_wall_clock_s)
    by_count = count_refusal(budget, usage, kind, tool, defaults)
    if by_count is not None or kind is CallKind.RETRY:
        return by_count
    return spend_refusal(budget, usage, held, worst)


def without_reserve(budget: Budget) -> Budget:
    """The limits a call outside the ``final_response`` phase is held to: each limit less what
    ``reserve_for_final`` keeps of it (never below zero). The final phase has the whole budget."""
    keep = budget.reserve_for_final
    if not keep:
        return budget
    short = {
        name: max(getattr(budget, name) - amount, 0)
        for name, amount in keep.items()
        if getattr(budget, name) is not None
    }
    return dataclasses.replace(budget, **short)
