"""At a limit: ask the run's ``on_limit`` policy to extend the budget, stop, escalate or ask.

``budgetspan.run(..., on_limit=policy)``: when a call would be refused by one of the run's limits
(not a cancellation, not a tool's own cap), ``policy(reached)`` gets a ``LimitReached`` and
returns a decision:

- ``Extend(max_cost_usd=0.10, reason="approval")``: the run's limits are raised by these amounts in
  its ledger (with Redis, for every process sharing the run) and the call is tried again; the
  extension is a span event, ``budgetspan_budget_extensions_total`` and part of the explanation
  ("extended once by $0.10 after approval").
- ``Stop()`` (or None): the run stops at the limit, as without a policy.
- ``Escalate(reason)``: the run ends handed to a person (outcome ``escalated``, ``RunEscalated``).
- ``Clarify(question)``: the run ends asking for clarification (outcome ``needs_clarification``,
  ``ClarificationNeeded``).

The policy may be a coroutine function: async calls (``@tool`` on a coroutine, async SDK clients)
await it; a sync call runs it to completion on an event loop of its own (in a thread of its own when
the calling thread runs a loop already). A policy that raises is logged and counts as ``Stop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import LIMIT_NAMES, TOOL_CAP_REASONS, BudgetExhausted, Limit, Usage
from budgetspan.accounting.ledger import Refusal

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

log = logging.getLogger(__name__)

#: Decisions asked for one call at most; then the run stops at the limit.
MAX_ASKS = 3
#: Refusals no policy can lift.
NOT_ASKED = (Limit.CANCELLED.value, Limit.LEDGER_UNAVAILABLE.value, Limit.UNPRICED.value, *TOOL_CAP_REASONS)


@dataclass(frozen=True)
class LimitReached:
    """What the policy is asked about: the run, the limit that would refuse the call, the call."""

    run: Run
    reason: str  # the limit's name, e.g. "max_cost_usd"
    limit: float | None
    usage: Usage
    kind: str  # "model" | "tool" | "retry"
    tool: str | None
    phase: str | None

    @property
    def workflow(self) -> str:
        return self.run.workflow


@dataclass(frozen=True, init=False)
class Extend:
    """Raise the run's limits by these amounts (by limit name) and go on."""

    amounts: Mapping[str, float]
    reason: str | None

    def __init__(self, reason: str | None = None, **amounts: float) -> None:
        unknown = set(amounts) - set(LIMIT_NAMES)
        if unknown or not amounts:
            raise ValueError(f"Extend: name one or more of {', '.join(LIMIT_NAMES)} (got {sorted(amounts)})")
        for name, amount in amounts.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
                raise ValueError(f"Extend: {name} must be a positive number, got {amount!r}")
        object.__setattr__(self, "amounts", dict(amounts))
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True)
class Stop:
    """Stop the run at the limit (what happens without a policy)."""

    reason: str | None = None


@dataclass(frozen=True)
class Escalate:
    """Hand the task to a person: the run ends with the outcome ``escalated``."""

    reason: str | None = None


@dataclass(frozen=True)
class Clarify:
    """Ask the user a question: the run ends with the outcome ``needs_clarification``."""

    question: str


Decision = Extend | Stop | Escalate | Clarify | None
Policy = Callable[[LimitReached], "Decision | Awaitable[Decision]"]


class RunEscalated(BudgetExhausted):
    """The run reached a limit and its ``on_limit`` policy handed it to a person."""

    outcome = "escalated"


class ClarificationNeeded(BudgetExhausted):
    """The run reached a limit and its ``on_limit`` policy asks the user a question."""

    outcome = "needs_clarification"
    question: str = ""


@dataclass
class DecisionPending(Exception):
    """Internal: an async policy's answer, for an async call to await (``Call.astart``)."""

    reached: LimitReached
    answer: Awaitable[Decision] = field(repr=False)

    async def decide(self) -> None:
        """Await the answer and act on it: return after an extension, raise otherwise."""
        try:
            decision = await self.answer
        except Exception:
            log.warning("budgetspan: the on_limit policy of run %s failed; stopping", self.reached.run.id)
            decision = None
        apply(self.reached, decision)


def at_limit(
    run: Run, refusal: Refusal, kind: str, tool: str | None, phase: str | None, can_await: bool, asks: int
) -> None:
    """A ledger refused a call of ``run``: return when the policy extended the budget (try the
    call again), else raise what the caller sees (ToolRefused, BudgetExhausted and its kinds)."""
    if refusal.reason in TOOL_CAP_REASONS:
        raise run.refuse_tool(refusal)
    policy = run.on_limit
    # A scope's limit (a tenant's day ...) is not the run's: an Extend could not raise it.
    if policy is None or refusal.reason in NOT_ASKED or refusal.scope is not None or asks > MAX_ASKS:
        raise run.exhaust(refusal)
    reached = LimitReached(run, refusal.reason, refusal.limit, run.usage, kind, tool, phase)
    try:
        answer = policy(reached)
        if inspect.isawaitable(answer):
            if can_await:
                raise DecisionPending(reached, answer)
            answer = _run_to_completion(answer)
    except DecisionPending:
        raise
    except Exception:
        events.log_failure(log, "budgetspan: the on_limit policy of run %s failed; stopping", run.id)
        answer = None
    apply(reached, answer)


def _run_to_completion(answer: Awaitable[Decision]) -> Decision:
    async def wait() -> Decision:
        return await answer

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="budgetspan-on-limit") as pool:
        return pool.submit(asyncio.run, wait()).result()


def apply(reached: LimitReached, decision: Any) -> None:
    """Act on the policy's decision: extend (and return), or raise the run's end."""
    run = reached.run
    refusal = Refusal(reached.reason, reached.limit, reached.tool)
    if isinstance(decision, Extend):
        extend(run, decision.amounts, decision.reason)
        return
    if isinstance(decision, Escalate):
        exc = run.exhaust(refusal, cls=RunEscalated, notes=(_said("handed to a person", decision.reason),))
        run.partial["escalation_reason"] = decision.reason or exc.explanation
        raise exc
    if isinstance(decision, Clarify):
        asked = run.exhaust(refusal, cls=ClarificationNeeded, notes=(f"asked: {decision.question}",))
        if isinstance(asked, ClarificationNeeded):
            asked.question = decision.question
        run.partial["clarification_question"] = decision.question
        raise asked
    if decision is not None and not isinstance(decision, Stop):
        log.warning("budgetspan: on_limit returned %r, not a decision; stopping", type(decision).__name__)
    raise run.exhaust(
        refusal, notes=(_said("stopped by policy", decision.reason),) if decision and decision.reason else ()
    )


def _said(what: str, reason: str | None) -> str:
    return f"{what} ({reason})" if reason else what


def extend(run: Run, amounts: Mapping[str, float], reason: str | None = None) -> None:
    """Raise ``run``'s limits in its ledger and record it (span event, metric, explanation)."""
    run.budget = run.ledger.extend(run.id, amounts)
    run.extensions.append((dict(amounts), reason))
    if run.span is not None:
        attrs: dict[str, Any] = {A.LIMIT_PREFIX + name: amount for name, amount in amounts.items()}
        if reason:
            attrs[A.EXTENSION_REASON] = reason
        run.span.add_event(A.EVENT_BUDGET_EXTENDED, attrs)
    for name in amounts:
        events.emit("on_budget_extended", run, name)


def _amount(name: str, amount: float) -> str:
    if name == "max_cost_usd":
        return f"${amount:.2f}" if amount >= 0.01 else f"${amount:.4f}"
    if name == "max_wall_clock_s":
        return f"{amount:g} s"
    noun = name.removeprefix("max_").replace("_", " ")
    return f"{amount:g} {noun if amount != 1 else noun.removesuffix('s')}"


def extension_note(extensions: list[tuple[dict[str, float], str | None]]) -> str | None:
    """ "extended once by $0.10 after approval": what the run's extensions added, in words."""
    if not extensions:
        return None
    times = {1: "once", 2: "twice"}.get(len(extensions), f"{len(extensions)} times")
    added: dict[str, float] = {}
    for amounts, _ in extensions:
        for name, amount in amounts.items():
            added[name] = added.get(name, 0) + amount
    text = f"extended {times} by " + " and ".join(_amount(n, a) for n, a in added.items())
    reasons = [r for _, r in extensions if r]
    return text + (f" after {reasons[-1]}" if reasons else "")


def kept_note(reason: str, amount: float) -> str:
    """ "1 model call kept for the final answer"."""
    return f"{_amount(reason, amount)} kept for the final answer"


__all__ = [
    "ClarificationNeeded",
    "Clarify",
    "Decision",
    "DecisionPending",
    "Escalate",
    "Extend",
    "LimitReached",
    "Policy",
    "RunEscalated",
    "Stop",
    "at_limit",
    "extend",
    "extension_note",
    "kept_note",
]
