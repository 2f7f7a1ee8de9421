"""The run: the unit a budget applies to, its outcome, its partial result and its accounting.

A run spends from its own budget and from every enclosing run's (a nested run is a child of the
run that was current when it started): a call is reserved in the run and in each ancestor, and
refused by the first limit it would break.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from enum import Enum
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting import scopes
from budgetspan.accounting.budget import Budget, BudgetExhausted, Limit, RunCancelled, ToolLimits, Usage
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode, Refusal, Reservation, Spend
from budgetspan.accounting.scopes import Scope, ScopeRef
from budgetspan.runs import context, limits, registry, run_span
from budgetspan.runs.at_limit import AtLimit
from budgetspan.runs.loops import LoopWatch
from budgetspan.runs.phases import Phase
from budgetspan.runs.quality import Quality, check_score
from budgetspan.runs.run_scopes import after_close, scopes_of


class Outcome(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ESCALATED = "escalated"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CANCELLED = "cancelled"
    NEEDS_CLARIFICATION = "needs_clarification"


class Run(AtLimit, Quality):
    """One budgeted execution. Created by ``budgetspan.run(...)`` or implicitly."""

    def __init__(
        self,
        workflow: str,
        budget: Budget,
        mode: Mode,
        *,
        implicit: bool = False,
        ledger: Ledger | None = None,
        run_id: str | None = None,
        parent: Run | None = None,
    ) -> None:
        self.id = run_id or uuid.uuid4().hex
        self.workflow = workflow
        self.budget = budget
        self.mode = mode
        self.implicit = implicit
        self.parent = parent
        self.outcome: Outcome | None = None
        self.exhausted: BudgetExhausted | None = None
        #: Another instrumentation's call over a limit is in flight: the run stops at it (``hold``).
        self._held: Refusal | None = None
        self.would_exhaust: list[str] = []  # observe mode: limits that would have refused
        self.partial: dict[str, Any] = {"tool_results": [], "last_model_answer": None}
        self.result: Any = None
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self.span: Span | None = None
        self.trace_id: int | None = None
        self.started_at = time.monotonic()
        self.start_time_ns = time.time_ns()
        self.duration_s: float | None = None
        self.final_usage: Usage | None = None
        #: Who the run serves (``budgetspan.run(conversation_id=..., tenant=..., user=...,
        #: permissions=...)``): scope budgets and cache keys are built from these.
        self.conversation_id: str | None = None
        self.tenant: str | None = None
        self.user: str | None = None
        self.permissions: frozenset[str] = frozenset()
        #: At a limit (``runs/limits.py``): the policy asked, and the extensions it granted.
        self.on_limit: limits.Policy | None = None
        self.extensions: list[tuple[dict[str, float], str | None]] = []
        self.loops = LoopWatch(budget) if LoopWatch.wanted(budget) else None
        self.score: float | None = None  # a verifier's score (``succeed(score=...)``)
        self.rework: dict[str, int] = {}  # kind -> count (``record_rework``)
        #: The provider of every model call so far (``gen_ai.provider.name`` on the run span);
        #: "" once two providers were seen, None before the first call.
        self.provider: str | None = None
        #: The scopes above the run that have a budget (conversation, user, tenant, workflow,
        #: and those of the enclosing runs): each call reserves in their current windows too.
        self.scopes: tuple[Scope, ...] = ()
        self._ledger = ledger or context.get_ledger()
        self._tasks: set[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = set()
        self._explicit_outcome = False
        self._ended = False
        self._lock = threading.Lock()

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def ledger(self) -> Ledger:
        """The ledger this run is accounted in (chosen when it started)."""
        return self._ledger

    def saw_provider(self, provider: str | None) -> None:
        """A model call of ``provider`` ended in this run (and so in every enclosing run)."""
        if not provider:
            return
        run: Run | None = self
        while run is not None:
            if run.provider != provider and run.provider != "":
                with run._lock:
                    if run.provider is None:
                        run.provider = provider
                    elif run.provider != provider:
                        run.provider = ""
            run = run.parent

    def ancestors(self) -> list[Run]:
        """The enclosing runs that keep a budget of their own, innermost first: a run that shares
        this run's id is one budget, counted once, also through another ledger object on the same
        store (a worker forked inside the run that made its own ``RedisLedger``)."""
        if self.parent is None:
            return []
        found: list[Run] = []
        seen = {self.id}
        run: Run | None = self.parent
        while run is not None:
            if run.id not in seen:
                seen.add(run.id)
                found.append(run)
            run = run.parent
        return found

    # lifecycle -------------------------------------------------------------------------
    def _start(self, with_span: bool) -> None:
        self.scopes = scopes_of(self)
        self._ledger.open(self.id, self.budget, self.mode, self.started_at)
        if with_span:
            try:
                self.span = context.get_tracer().start_span(
                    A.SPAN_RUN.format(workflow=self.workflow),
                    kind=SpanKind.INTERNAL,
                    attributes=run_span.start_attributes(self),
                )
                self.trace_id = self.span.get_span_context().trace_id or None
            except Exception:
                events.internal_error("Run span")  # the run is still accounted, without a span
        registry.add(self, self.trace_id, registry.local_root(self.span))
        events.emit("on_run_start", self)

    def scope_refs(self) -> tuple[ScopeRef, ...]:
        """The current window of each of the run's scopes."""
        return tuple(s.ref() for s in self.scopes) if self.scopes else ()

    def _end(self, exc: BaseException | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        held = self._held
        if held is not None and self.exhausted is None:
            self.exhaust(held)  # a foreign call over a limit that never ended
        self.outcome = self._final_outcome(exc)
        self.final_usage = self._ledger.close(self.id)
        self.duration_s = time.monotonic() - self.started_at
        registry.remove(self, self.trace_id)
        span = self.span
        if span is not None:
            try:
                if span.is_recording():  # a sampled-out span would drop the attributes anyway
                    self._finish_span(span, exc)
            finally:
                span.end()
        events.emit("on_run_end", self)

    def _final_outcome(self, exc: BaseException | None) -> Outcome:
        if isinstance(exc, RunCancelled) or isinstance(self.exhausted, RunCancelled):
            return Outcome.CANCELLED
        stop = self.exhausted or (exc if isinstance(exc, BudgetExhausted) else None)
        if stop is not None:
            return Outcome(stop.outcome)
        if self._explicit_outcome and self.outcome is not None:
            return self.outcome
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            return Outcome.CANCELLED
        if exc is not None:
            self.error = exc
            return Outcome.FAILURE
        return self.outcome or Outcome.SUCCESS

    def _finish_span(self, span: Span, exc: BaseException | None) -> None:
        span.set_attributes(run_span.end_attributes(self, exc))
        if self.outcome is Outcome.FAILURE and exc is not None:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute(A.ERROR_TYPE, type(exc).__qualname__)

    # outcomes --------------------------------------------------------------------------
    def succeed(self, result: Any = None, *, score: float | None = None) -> None:
        """Mark the run successful (the default on a clean exit); ``score``: a verifier's."""
        self.score = check_score(score) if score is not None else self.score
        self._set_outcome(Outcome.SUCCESS)
        if result is not None:
            self.result = result

    def fail(self, error: BaseException | str | None = None) -> None:
        self._set_outcome(Outcome.FAILURE)
        if isinstance(error, BaseException):
            self.error = error

    def escalate(self, reason: str | None = None) -> None:
        """The run handed the task to a human; neither a success nor a failure."""
        self._set_outcome(Outcome.ESCALATED)
        if reason:
            self.partial["escalation_reason"] = reason

    def _set_outcome(self, outcome: Outcome) -> None:
        # Exhaustion and cancellation outrank what the code says: the run did stop at a limit.
        if self.exhausted is None:
            self.outcome = outcome
            self._explicit_outcome = True

    # partial results -------------------------------------------------------------------
    def add_partial(self, key: str, value: Any) -> None:
        """Keep something the run produced, for ``BudgetExhausted.partial``."""
        self.partial[key] = value

    def record_tool_result(self, tool: str, result: Any) -> None:
        self.partial["tool_results"].append({"tool": tool, "result": result})

    def record_model_answer(self, text: str | None) -> None:
        if text:
            self.partial["last_model_answer"] = text

    # accounting ------------------------------------------------------------------------
    @property
    def usage(self) -> Usage:
        if self.final_usage is not None:
            return self.final_usage
        try:
            return self._ledger.usage(self.id)
        except KeyError:
            return Usage()

    def remaining_s(self) -> float | None:
        """Seconds left before the earliest wall-clock deadline of this run and its ancestors."""
        if self.parent is None and self.budget.max_wall_clock_s is None:
            return None  # (the usual run: no deadline to look up)
        left = None
        for run in (self, *self.ancestors()):
            deadline = run._ledger.deadline(run.id)
            if deadline is not None:
                here = max(0.0, deadline - time.monotonic())
                left = here if left is None else min(left, here)
        return left

    def reserve(
        self,
        kind: CallKind,
        *,
        tool: str | None = None,
        worst_case_cost: float | None = None,
        worst_case_tokens: int | None = None,
        worst_case_input_tokens: int | None = None,
        tool_limits: ToolLimits | None = None,
        phase: str | None = None,
        can_await: bool = False,
    ) -> Reservation:
        """Reserve one call in this run and every enclosing run; raise BudgetExhausted (from the
        run whose limit refuses it) when a limit refuses it. Exhaustion is sticky: once a run has
        stopped at a limit, every later call is refused too (but a final answer from a reserve).
        ``can_await``: an async policy's answer is left to the caller to await."""
        worst = (worst_case_cost, worst_case_tokens, worst_case_input_tokens)
        own = self._reserve_here(kind, tool, tool_limits, worst, phase, can_await, self.scope_refs())
        if self.parent is None:
            return own
        for outer in self.ancestors():
            try:
                own.linked.append(
                    (outer, outer._reserve_here(kind, tool, tool_limits, worst, phase, can_await))
                )
            except BaseException:
                self.release(own)
                raise
        return own

    def _reserve_here(
        self,
        kind: CallKind,
        tool: str | None,
        tool_limits: ToolLimits | None,
        worst: tuple[float | None, int | None, int | None],
        phase: str | None = None,
        can_await: bool = False,
        in_scopes: tuple[ScopeRef, ...] = (),
    ) -> Reservation:
        """Reserve in this run's ledger record (and, for the call's own run, its scope windows:
        one step in the ledger); at a limit, the run's ``on_limit`` policy is asked."""
        final = self._final_phase(phase)
        if self.exhausted is not None or self._held is not None:  # (else nothing has stopped it)
            stopped = self._stopped(final)
            if stopped is not None:
                raise self.exhaust(stopped)
        asks = 0
        while True:
            try:
                res = self._ledger_reserve(kind, tool, tool_limits, worst, final, in_scopes)
                break
            except LedgerRefused as refused:
                asks += 1  # returns after an extension (try again); raises otherwise
                limits.at_limit(
                    self, self._shown(refused.refusal, final), kind.value, tool, phase, can_await, asks
                )
            except KeyError:  # run already closed (work after the run ended): its scopes' only
                return after_close(self, kind, tool, worst, in_scopes)
        if res.would_refuse is not None:
            self.note_would_refuse(res.would_refuse)
        return res

    def _final_phase(self, phase: str | None) -> bool:
        """Whether a call in ``phase`` may use what the run keeps for its final answer (if any)."""
        return bool(self.budget.reserve_for_final) and phase == Phase.FINAL_RESPONSE

    def adopt(self, reservation: Reservation | None) -> Reservation | None:
        """Take over a reservation the processor made for this same call (another
        instrumentation's span around it); refused where ``reserve`` would refuse. A reservation
        the processor found over a limit is this call's refusal: given back, then refused, so the
        run's exception and its span tell the same story as when no other span is around."""
        if reservation is not None and reservation.would_refuse is not None and self.mode is Mode.ENFORCE:
            self.release(reservation)
            self.refuse_if_tool(reservation.would_refuse)
            if self.exhausted is None:
                raise self.exhaust(reservation.would_refuse)
            reservation = None
        stopped = self._stopped()
        if stopped is not None:
            if reservation is not None:
                self.release(reservation)
            raise self.exhaust(stopped)
        return reservation

    def _stopped(self, final: bool = False) -> Refusal | None:
        """The limit an enforcing run has already stopped at: every later call is refused by it,
        but the final answer of a run that keeps budget for it (held to the whole limits)."""
        if (s := self.exhausted) is not None and self.mode is Mode.ENFORCE:
            if final and self.budget.reserve_for_final and not isinstance(s, RunCancelled):
                return None
            return Refusal(s.reason, s.limit, s.tool, s.worst, s.scope_ref, s.spent)
        return self._held if self.mode is Mode.ENFORCE else None

    def hold(self, refusal: Refusal) -> None:
        """Another instrumentation's call over a limit has started, and its span cannot be
        refused: the run stops at it, and every other call is refused meanwhile. The exception is
        made once it is known whose call it is: budgetspan's own call for it takes the
        reservation over and is refused before it is sent (``adopt``), or it was a foreign call
        and ended (``settle``)."""
        with self._lock:
            if self.exhausted is None and self._held is None:
                self._held = refusal

    def settle(self, refusal: Refusal) -> None:
        """A foreign call over a limit ended: it did happen, and the run stopped after it."""
        if self.exhausted is None:
            self.exhaust(refusal)

    def check(self) -> None:
        """Raise BudgetExhausted if the run (or an enclosing one) is already at a limit."""
        for run in (self, *self.ancestors()):
            refusal = run._ledger.check(run.id)
            if refusal is not None:
                if run.mode is Mode.ENFORCE or refusal.reason == Limit.CANCELLED.value:
                    raise run.exhaust(refusal)
                run.note_would_refuse(refusal)

    def exhaust(
        self,
        refusal: Refusal,
        *,
        cls: type[BudgetExhausted] | None = None,
        detail: str | None = None,
        notes: tuple[str, ...] = (),
    ) -> BudgetExhausted:
        """Build the exception for ``refusal``; the first one sets the outcome and is recorded.
        ``detail`` replaces the explanation's head; ``notes`` follow it (with what the run kept
        for its final answer, and its extensions)."""
        cls, detail, notes = self._stop_words(refusal, cls, detail, notes)
        if cls is None:
            cls = RunCancelled if refusal.reason == Limit.CANCELLED.value else BudgetExhausted
        ref = refusal.scope
        exc = cls(
            refusal.reason,
            refusal.limit,
            self.usage,
            self.partial,
            None
            if ref is None
            else scopes.explain_scope(ref, refusal.reason, refusal.limit, refusal.spent, refusal.worst),
            run_id=self.id,
            workflow=self.workflow,
            tool=refusal.tool,
            worst=refusal.worst,
            detail=detail,
            notes=notes,
            scope=None if ref is None else ref.describe(),
            scope_ref=ref,
            spent=refusal.spent,
        )
        with self._lock:
            first = self.exhausted is None
            if first:
                self.exhausted = exc
                self._held = None
        if first:
            self.outcome = Outcome(exc.outcome)
            if self.span is not None:
                self.span.add_event(
                    A.EVENT_CANCELLED if cls is RunCancelled else A.EVENT_BUDGET_EXHAUSTED,
                    {A.EXHAUSTED_REASON: refusal.reason, A.EXHAUSTED_EXPLANATION: exc.explanation},
                )
            events.emit("on_exhausted", self, refusal.reason, False)
        return exc

    def note_would_refuse(self, refusal: Refusal) -> None:
        """Observe mode: record (once per limit) that enforce mode would have refused."""
        with self._lock:
            if refusal.reason in self.would_exhaust:
                return
            self.would_exhaust.append(refusal.reason)
        if self.span is not None:
            self.span.add_event(A.EVENT_WOULD_EXHAUST, {A.EXHAUSTED_REASON: refusal.reason})
        events.emit("on_exhausted", self, refusal.reason, True)

    def commit(
        self,
        reservation: Reservation,
        spend: Spend | None = None,
        *,
        finished: bool = True,
        unreported: bool = False,
        unpriced: bool = False,
    ) -> None:
        """Settle a call: its worst case released, what it spent added, here and in the outer runs."""
        pairs = [(self, reservation), *reservation.linked] if reservation.linked else ((self, reservation),)
        for run, res in pairs:
            refusal = run._ledger.commit(
                res, spend, finished=finished, unreported=unreported, unpriced=unpriced
            )
            if refusal is not None:
                run.note_spend_limit(refusal)

    def add_spend(self, spend: Spend, reservation: Reservation | None = None) -> None:
        """Usage reported mid-call (a stream chunk): here, in the enclosing runs, in the call's windows."""
        for run in (self, *self.ancestors()):
            into = (reservation.scopes if reservation else self.scope_refs()) if run is self else ()
            refusal = run._ledger.add_spend(run.id, spend, into)
            if refusal is not None:
                run.note_spend_limit(refusal)

    def note_spend_limit(self, refusal: Refusal) -> None:
        """A commit reached a token or dollar limit: in enforce mode the ledger refuses the next
        reservation; observe mode records what it would have refused."""
        if self.mode is Mode.OBSERVE:
            self.note_would_refuse(refusal)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call never started (here and in the enclosing runs)."""
        self._ledger.release(reservation)
        for run, res in reservation.linked:
            run._ledger.release(res)

    # cancellation ----------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel the run: its next call raises RunCancelled, in-flight async calls are cancelled."""
        ok = self._ledger.cancel(self.id)
        for loop, task in list(self._tasks):
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop closed
                pass
        return ok

    @property
    def cancelled(self) -> bool:
        refusal = self._ledger.check(self.id)
        return refusal is not None and refusal.reason == Limit.CANCELLED.value

    def track_task(self, task: asyncio.Task[Any]) -> Callable[[], None]:
        """Cancel ``task`` with the run; returns the function that stops tracking it."""
        entry = (task.get_loop(), task)
        self._tasks.add(entry)
        return lambda: self._tasks.discard(entry)

    def __repr__(self) -> str:
        return f"<Run {self.workflow} id={self.id[:8]} outcome={self.outcome and self.outcome.value}>"
