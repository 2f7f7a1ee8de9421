"""What a run does at a limit and reports about it: a refused tool, the reserve for the final
answer and extensions in its explanation, its remaining budget (``runs/limits.py`` decides what
happens at a limit; ``runs/remaining.py`` words what is left)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import (
    TOOL_CAP_REASONS,
    Budget,
    BudgetExhausted,
    ToolLimits,
    ToolRefused,
    Usage,
)
from budgetspan.accounting.ledger import CallKind, Ledger, Refusal, Reservation
from budgetspan.runs import limits, remaining
from budgetspan.runs.loops import LoopWatch

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from budgetspan.accounting.scopes import Scope, ScopeRef
    from budgetspan.runs.run import Run


class AtLimit:
    """Mixed into ``Run``."""

    id: str
    workflow: str
    budget: Budget
    span: Span | None
    partial: dict[str, Any]
    exhausted: BudgetExhausted | None
    extensions: list[tuple[dict[str, float], str | None]]
    loops: LoopWatch | None
    scopes: tuple[Scope, ...]

    _ledger: Ledger

    @property
    def usage(self) -> Usage:
        raise NotImplementedError

    def _ledger_reserve(
        self,
        kind: CallKind,
        tool: str | None,
        tool_limits: ToolLimits | None,
        worst: tuple[float | None, int | None, int | None],
        final: bool,
        scopes: tuple[ScopeRef, ...] = (),
    ) -> Reservation:
        return self._ledger.reserve(
            self.id,
            kind,
            tool=tool,
            tool_limits=tool_limits,
            worst_case_cost=worst[0],
            worst_case_tokens=worst[1],
            worst_case_input_tokens=worst[2],
            final=final,
            scopes=scopes,
        )

    def limit_attributes(self) -> dict[str, Any]:
        """For the run span at its end: its extensions, and the loop that stopped it (the
        collector tier counts them from there)."""
        attrs: dict[str, Any] = {}
        if self.extensions:
            attrs[A.BUDGET_EXTENSIONS] = len(self.extensions)
            attrs[A.BUDGET_EXTENDED_LIMITS] = ",".join(n for amounts, _ in self.extensions for n in amounts)
        stopped = self.loops.stopped if self.loops is not None else None
        if stopped is not None:
            attrs[A.LOOP_STOPPED] = stopped
        return attrs

    def refuse_if_tool(self, refusal: Refusal) -> None:
        """Raise ``ToolRefused`` for a tool past its own cap."""
        if refusal.reason in TOOL_CAP_REASONS:
            raise self.refuse_tool(refusal)

    def _stop_words(
        self, refusal: Refusal, cls: type[BudgetExhausted] | None, detail: str | None, notes: tuple[str, ...]
    ) -> tuple[type[BudgetExhausted] | None, str | None, tuple[str, ...]]:
        """The class, head and notes of a stop's exception: a call refused again by the limit the
        run stopped at says what the first refusal said; else the notes get what the run kept for
        its final answer and its extensions."""
        first = self.exhausted
        if first is not None and first.reason == refusal.reason and cls is None and detail is None:
            return type(first), first.detail, first.notes
        return cls, detail, (*notes, *self._notes(refusal.reason))

    def _shown(self, refusal: Refusal, final: bool) -> Refusal:
        """A refusal by a limit less its reserve for the final answer names the whole limit."""
        kept = self.budget.reserve_for_final.get(refusal.reason)
        whole = self.budget.limits().get(refusal.reason)
        if final or not kept or whole is None:
            return refusal
        return Refusal(refusal.reason, whole, refusal.tool, refusal.worst)

    def refuse_tool(self, refusal: Refusal) -> ToolRefused:
        """A tool past its own cap: this call is refused, the run goes on (a span event says so)."""
        exc = ToolRefused(
            refusal.reason,
            refusal.limit,
            self.usage,
            self.partial,
            run_id=self.id,
            workflow=self.workflow,
            tool=refusal.tool,
        )
        if self.span is not None:
            self.span.add_event(
                A.EVENT_TOOL_REFUSED,
                {A.EXHAUSTED_REASON: refusal.reason, A.GEN_AI_TOOL_NAME: refusal.tool or ""},
            )
        events.emit("on_tool_refused", self, refusal.tool or "", refusal.reason)
        return exc

    def _notes(self, reason: str) -> tuple[str, ...]:
        kept = self.budget.reserve_for_final.get(reason)
        found = (limits.kept_note(reason, kept),) if kept else ()
        extended = limits.extension_note(self.extensions)
        return (*found, extended) if extended else found

    def extend(self, reason: str | None = None, **amounts: float) -> None:
        """Raise this run's limits by ``amounts`` now (what ``on_limit`` returning ``Extend`` does)."""
        limits.extend(cast("Run", self), limits.Extend(reason, **amounts).amounts, reason)

    @property
    def explanation(self) -> str | None:
        """Why the run stopped (with its final usage once ended), or what extended it."""
        if self.exhausted is not None:
            return self.exhausted.explain(self.usage)
        note = limits.extension_note(self.extensions)
        return note[0].upper() + note[1:] + "." if note else None

    def remaining(self) -> dict[str, float]:
        """What is left of each limit that is set, by name (never below zero)."""
        return remaining.left(self.budget, self.usage)

    def remaining_text(self) -> str:
        """One line for a system prompt: "3 of 6 model calls and $0.14 of $0.25 left", then what
        each scope with a budget has left in its window ("tenant acme: $12.00 of $200.00 left of
        its daily budget"): a tenant near its limit leaves a run less than the run's budget says."""
        parts = [] if self.budget.is_unlimited and self.scopes else [remaining.text(self.budget, self.usage)]
        for scope in self.scopes:
            try:
                used = self._ledger.scope_usage(scope.ref().key) or Usage()
            except Exception:  # (Redis down: the run's own line still stands)
                events.internal_error("remaining_text")
                continue
            words = remaining.text(scope.limits.budget, used)
            parts.append(f"{scope.kind} {scope.name}: {words} of its {scope.limits.window.adjective} budget")
        return "; ".join(parts)
