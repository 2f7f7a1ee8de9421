"""The process-local ledger: one lock per run, a dict of runs guarded by a registry lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from budgetspan.accounting.budget import Budget, Limit, ToolLimits, Usage
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode, Refusal, Reservation, Spend
from budgetspan.accounting.rule import NOTHING_HELD, Held, refusal, spend_refusal, without_reserve
from budgetspan.accounting.scope_books import ScopeBooks, count_call, spend_into


@dataclass
class _RunBook:
    budget: Budget
    mode: Mode
    started_at: float
    usage: Usage = field(default_factory=Usage)
    held: Held = field(default_factory=Held)
    cancelled: bool = False
    #: How many scopes opened this run id and have not closed it: one run id used twice in a
    #: process is one budget, kept until the last of them closes.
    opened: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The limits outside the final_response phase (``rule.without_reserve``).
    short: Budget | None = None
    #: Any token or dollar limit (an extension raises limits, never sets one that was not set).
    spend_limited: bool = False
    #: Any limit the rule reads (counts, tokens, dollars, wall clock, a tool's): see ``_may_refuse``.
    limited: bool = True

    @property
    def deadline(self) -> float | None:
        w = self.budget.max_wall_clock_s
        return None if w is None else self.started_at + w

    def limits_for(self, final: bool) -> tuple[Budget, float | None]:
        """The budget a call is held to, and its deadline: the whole one in the final phase."""
        budget = self.budget if final or self.short is None else self.short
        w = budget.max_wall_clock_s
        return budget, None if w is None else self.started_at + w

    def add(self, spend: Spend) -> None:
        """Add one report's figures; only positive ones count (None, 0, negatives, NaN add nothing)."""
        spend_into(self.usage, spend)


def _worst(reservation: Reservation) -> tuple[float, int, int]:
    r = reservation
    return r.worst_case_cost, r.worst_case_input_tokens, r.worst_case_output_tokens


def _settle(book: _RunBook, reservation: Reservation) -> None:
    """Under the book's lock: the reservation done, its worst case no longer held by the run."""
    reservation.done = True
    r = reservation
    if r.worst_case_cost or r.worst_case_input_tokens or r.worst_case_output_tokens:
        book.held.add(*_worst(reservation), sign=-1)


def _may_refuse(book: _RunBook, tool_limits: ToolLimits | None) -> bool:
    """Whether the rule could refuse this call: not when the run has no limit at all (the default
    budget), the call brings no tool limits of its own and the run was not cancelled. Skipping
    the rule there saves about 18k CPU instructions per call (bench/README.md, second per-call pass).
    """
    return book.limited or book.cancelled or tool_limits is not None


def _held_worst(
    book: _RunBook,
    kind: CallKind,
    scopes: Sequence[Any],
    cost: float | None,
    input_tokens: int | None,
    output_tokens: int | None,
) -> Held:
    """What a call holds against token and dollar limits until it settles: its worst case, for a
    model call where a limit reads it (the run's or a scope's); nothing otherwise.

    Holding nothing where no limit reads it saves about 16k CPU instructions per model call (the
    ``Held`` made and added, then taken off at the commit; ``bench/README.md``, the per-call pass).
    """
    if not (book.spend_limited or scopes) or kind is not CallKind.MODEL:
        return NOTHING_HELD
    if not (cost or input_tokens or output_tokens):
        return NOTHING_HELD
    return Held(float(cost or 0.0), int(input_tokens or 0), int(output_tokens or 0))


def _reservation(
    run_id: str, kind: CallKind, tool: str | None, worst: Held, found: Refusal | None, scopes: Sequence[Any]
) -> Reservation:
    """The reservation made; the usual one (nothing held, no scope) with the fields' defaults:
    three keyword arguments fewer: about 6k CPU instructions less a call (bench/README.md,
    second per-call pass)."""
    if worst is NOTHING_HELD and not scopes:
        return Reservation(run_id, kind, tool, 0.0, found)
    return Reservation(
        run_id,
        kind,
        tool,
        worst.cost_usd,
        found,
        worst_case_input_tokens=worst.input_tokens,
        worst_case_output_tokens=worst.output_tokens,
        scopes=tuple(scopes),
    )


def _enforced(book: _RunBook, found: Refusal) -> bool:
    """A refusal stops the call in enforce mode; cancellation stops it in any mode."""
    return book.mode is Mode.ENFORCE or found.reason == Limit.CANCELLED.value


class InMemoryLedger(Ledger):
    """Process-local ledger. Every method is safe to call from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._runs: dict[str, _RunBook] = {}
        self._lock = threading.Lock()
        self._monotonic = clock
        self.scope_books = ScopeBooks()  # the scope windows in use (budgets above the run)

    def __len__(self) -> int:
        return len(self._runs)

    def open(self, run_id: str, budget: Budget, mode: Mode, started_at: float | None = None) -> None:
        with self._lock:
            book = self._runs.get(run_id)
            if book is not None:
                book.opened += 1
                return
            start = self._monotonic() if started_at is None else started_at
            self._runs[run_id] = _RunBook(
                budget,
                mode,
                start,
                short=without_reserve(budget),
                spend_limited=budget.spend_limited,
                limited=not budget.is_unlimited,
            )

    def carry(self, run_id: str, usage: Usage, held: Held) -> None:
        """Start an open run's figures and held worst cases from what another ledger knew of it:
        a run ``RedisLedger`` moves here when Redis fails goes on from there, not from zero."""
        book = self._runs.get(run_id)
        if book is not None:
            with book.lock:
                book.usage, book.held = usage.copy(), held

    def _book(self, run_id: str) -> _RunBook:
        book = self._runs.get(run_id)
        if book is None:
            raise KeyError(f"run {run_id!r} is not open in the ledger")
        return book

    def reserve(
        self,
        run_id: str,
        kind: CallKind,
        *,
        tool: str | None = None,
        worst_case_cost: float | None = None,
        worst_case_tokens: int | None = None,
        worst_case_input_tokens: int | None = None,
        force: bool = False,
        tool_limits: ToolLimits | None = None,
        final: bool = False,
        scopes: Sequence[Any] = (),
    ) -> Reservation:
        book = self._book(run_id)
        worst = _held_worst(book, kind, scopes, worst_case_cost, worst_case_input_tokens, worst_case_tokens)
        found = None
        with book.lock:
            if _may_refuse(book, tool_limits):
                budget, deadline = book.limits_for(final)
                found = refusal(
                    budget,
                    book.usage,
                    kind,
                    tool=tool,
                    defaults=tool_limits,
                    held=book.held,
                    worst=worst,
                    cancelled=book.cancelled,
                    past_deadline=deadline is not None and self._monotonic() >= deadline,
                )
                if found is not None and not force and _enforced(book, found):
                    raise LedgerRefused(found)
            if scopes:
                enforce = book.mode is Mode.ENFORCE and not force
                in_scope, scopes = self.scope_books.reserve(scopes, kind, tool, worst, enforce)
                if in_scope is not None and enforce:
                    raise LedgerRefused(in_scope)
                found = found or in_scope
            count_call(book.usage, kind, tool, +1)
            if worst is not NOTHING_HELD:
                book.held.add(worst.cost_usd, worst.input_tokens, worst.output_tokens)
        return _reservation(run_id, kind, tool, worst, found, scopes)

    def reserve_in_scopes(
        self,
        run_id: str,
        kind: CallKind,
        scopes: Sequence[Any],
        worst: tuple[float | None, int | None, int | None],
        *,
        tool: str | None = None,
        enforce: bool = True,
    ) -> Reservation | None:
        cost, output, input_ = worst
        held = NOTHING_HELD
        if kind is CallKind.MODEL and (cost or input_ or output):
            held = Held(float(cost or 0.0), int(input_ or 0), int(output or 0))
        found, scopes = self.scope_books.reserve(scopes, kind, tool, held, enforce)
        if found is not None and enforce:
            raise LedgerRefused(found)
        return _reservation(run_id, kind, tool, held, found, scopes)

    def commit(
        self,
        reservation: Reservation,
        spend: Spend | None = None,
        *,
        finished: bool = True,
        unreported: bool = False,
        unpriced: bool = False,
    ) -> Refusal | None:
        book = self._runs.get(reservation.run_id)
        if book is None or reservation.done:
            self._settle_after_close(book, reservation, spend, None)
            return None
        with book.lock:
            _settle(book, reservation)
            if spend is not None:
                spend_into(book.usage, spend)
            if reservation.scopes:
                self.scope_books.settle(reservation.scopes, Held(*_worst(reservation)), spend, None, None)
            u = book.usage
            if unreported:
                u.unreported_usage_calls += 1
            if unpriced:
                u.unpriced_calls += 1
            if finished and reservation.kind is CallKind.TOOL:
                u.tools_finished += 1
            return spend_refusal(book.budget, u) if book.spend_limited else None

    def add_spend(self, run_id: str, spend: Spend, scopes: Sequence[Any] = ()) -> Refusal | None:
        book = self._runs.get(run_id)
        if book is None:
            if scopes:  # a stream read after its run closed: its scope windows are still open
                self.scope_books.settle(scopes, NOTHING_HELD, spend, None, None)
            return None
        with book.lock:
            book.add(spend)
            if scopes:
                self.scope_books.settle(scopes, NOTHING_HELD, spend, None, None)
            return spend_refusal(book.budget, book.usage)

    def release(self, reservation: Reservation) -> None:
        book = self._runs.get(reservation.run_id)
        if book is None or reservation.done:
            self._settle_after_close(book, reservation, None, reservation.kind)
            return
        with book.lock:
            _settle(book, reservation)
            count_call(book.usage, reservation.kind, reservation.tool, -1)
            if reservation.scopes:
                held = Held(*_worst(reservation))
                self.scope_books.settle(reservation.scopes, held, None, reservation.kind, reservation.tool)

    def _settle_after_close(
        self, book: _RunBook | None, reservation: Reservation, spend: Spend | None, uncount: CallKind | None
    ) -> None:
        """A call that ends after its run closed (a stream read after the block): the run's
        record is gone, but its scope windows outlive it and take the settlement."""
        if book is not None or not reservation.scopes:
            return
        with self._lock:
            if reservation.done:
                return
            reservation.done = True
        tool = reservation.tool if uncount is not None else None
        self.scope_books.settle(reservation.scopes, Held(*_worst(reservation)), spend, uncount, tool)

    def usage(self, run_id: str) -> Usage:
        book = self._book(run_id)
        with book.lock:
            u = book.usage.copy()
        u.wall_clock_s = self._monotonic() - book.started_at
        return u

    def check(self, run_id: str) -> Refusal | None:
        book = self._runs.get(run_id)
        if book is None:
            return None
        with book.lock:
            if book.cancelled:
                return Refusal(Limit.CANCELLED.value, None)
            d = book.deadline
            if d is not None and self._monotonic() >= d:
                return Refusal(Limit.WALL_CLOCK_S.value, book.budget.max_wall_clock_s)
            return spend_refusal(book.budget, book.usage)

    def cancel(self, run_id: str) -> bool:
        book = self._runs.get(run_id)
        if book is None:
            return False
        with book.lock:
            book.cancelled = True
        return True

    def close(self, run_id: str) -> Usage:
        with self._lock:
            book = self._runs.get(run_id)
            if book is None:
                return Usage()
            book.opened -= 1
            if book.opened <= 0:
                del self._runs[run_id]
        with book.lock:
            u = book.usage.copy()
        u.wall_clock_s = self._monotonic() - book.started_at
        return u

    def scope_usage(self, key: str) -> Usage | None:
        return self.scope_books.usage(key)

    def deadline(self, run_id: str) -> float | None:
        book = self._runs.get(run_id)
        return None if book is None else book.deadline

    def extend(self, run_id: str, amounts: Mapping[str, float]) -> Budget:
        book = self._book(run_id)
        with book.lock:
            book.budget = book.budget.extended(amounts)
            book.short = without_reserve(book.budget)
            book.limited = not book.budget.is_unlimited
            return book.budget
