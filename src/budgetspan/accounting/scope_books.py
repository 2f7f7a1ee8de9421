"""The process-local records of scope windows (``InMemoryLedger``'s): only the windows in use.

A record is made when a call first reserves in a scope window and dropped when the window ends
(a scope without a window: ``IDLE_TTL_S`` after its last use), so memory follows the scopes in
use, not the scopes configured. The ledger calls in under its run's lock; one lock guards all the
records, so a call's check and count in every scope are one step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from budgetspan import events
from budgetspan.accounting import windows
from budgetspan.accounting.budget import Usage
from budgetspan.accounting.ledger import CallKind, Refusal, Spend
from budgetspan.accounting.rule import Held, refusal, spend_refusal
from budgetspan.accounting.scopes import ScopeRef, ScopeWarning, share_used

#: Look for ended windows every this many reservations.
SWEEP_EVERY = 1024


def spend_into(usage: Usage, spend: Spend) -> None:
    """Add one report's figures; only positive ones count (None, 0, negatives, NaN add nothing)."""
    u, s = usage, spend
    if s.input_tokens is not None and s.input_tokens > 0:
        u.input_tokens += s.input_tokens
    if s.output_tokens is not None and s.output_tokens > 0:
        u.output_tokens += s.output_tokens
    if s.cache_read_tokens is not None and s.cache_read_tokens > 0:
        u.cache_read_tokens += s.cache_read_tokens
    if s.cache_write_tokens is not None and s.cache_write_tokens > 0:
        u.cache_write_tokens += s.cache_write_tokens
    if s.reasoning_tokens is not None and s.reasoning_tokens > 0:
        u.reasoning_tokens += s.reasoning_tokens
    if s.cost_usd is not None and s.cost_usd > 0:
        u.cost_usd += s.cost_usd


@dataclass
class ScopeBook:
    """One scope window's usage and the worst cases its calls in flight hold."""

    expires: float
    usage: Usage = field(default_factory=Usage)
    held: Held = field(default_factory=Held)
    warned: bool = False


class ScopeBooks:
    def __init__(self) -> None:
        self._books: dict[str, ScopeBook] = {}
        self.lock = threading.Lock()
        self._uses = 0

    def __len__(self) -> int:
        return len(self._books)

    def _book(self, ref: ScopeRef, now: float) -> ScopeBook:
        book = self._books.get(ref.key)
        if book is None or book.expires <= now:
            book = self._books[ref.key] = ScopeBook(now + ref.ttl_s())
        elif ref.refresh:
            book.expires = now + ref.ttl_s()
        return book

    def _sweep(self, now: float) -> None:
        self._uses += 1
        if self._uses % SWEEP_EVERY == 0:
            for key in [k for k, b in self._books.items() if b.expires <= now]:
                del self._books[key]

    def usage(self, key: str) -> Usage | None:
        with self.lock:
            book = self._books.get(key)
            return None if book is None or book.expires <= windows.now() else book.usage.copy()

    def reserve(
        self,
        refs: Sequence[ScopeRef],
        kind: CallKind,
        tool: str | None,
        worst: Held,
        enforce: bool,
    ) -> tuple[Refusal | None, tuple[ScopeRef, ...]]:
        """Check the call in every scope window; the first that refuses it wins. Counted in all
        unless ``enforce`` and refused (then nothing changes). Also returns the windows as the
        call's settlement must name them (``bound``)."""
        now = windows.now()
        warnings: list[tuple[ScopeRef, ScopeWarning]] = []
        with self.lock:
            self._sweep(now)
            books = [self._book(ref, now) for ref in refs]
            found: Refusal | None = None
            for ref, book in zip(refs, books, strict=True):
                got = refusal(ref.budget, book.usage, kind, held=book.held, worst=worst)  # (no tool limits)
                if got is not None:
                    value = _used(book.usage, got)
                    if ref.limits.window.rolling:  # it resets when its book, from its first call, ends
                        ref = dataclasses.replace(ref, end=book.expires)
                    found = Refusal(got.reason, got.limit, got.tool, got.worst, scope=ref, spent=value)
                    break
            if found is not None and enforce:
                return found, tuple(refs)
            for ref, book in zip(refs, books, strict=True):
                count_call(book.usage, kind, tool, +1)
                book.held.add(worst.cost_usd, worst.input_tokens, worst.output_tokens)
                warnings.extend(_crossed(ref, book))
            bound = tuple(_bound(ref, book) for ref, book in zip(refs, books, strict=True))
        _warn(warnings)
        return found, bound

    def settle(
        self,
        refs: Sequence[ScopeRef],
        worst: Held,
        spend: Spend | None,
        uncount: CallKind | None,
        tool: str | None,
    ) -> None:
        """Give back the worst cases, add what was spent (or un-count a call never made)."""
        now = windows.now()
        warnings: list[tuple[ScopeRef, ScopeWarning]] = []
        with self.lock:
            for ref in refs:
                book = self._books.get(ref.key)
                if book is None or book.expires <= now or not _same_record(ref, book):
                    continue  # the window ended: the next window starts empty
                book.held.add(worst.cost_usd, worst.input_tokens, worst.output_tokens, sign=-1)
                if spend is not None:
                    spend_into(book.usage, spend)
                if uncount is not None:
                    count_call(book.usage, uncount, tool, -1)
                warnings.extend(_crossed(ref, book))
        _warn(warnings)

    def spend_refusal(self, ref: ScopeRef) -> Refusal | None:
        with self.lock:
            book = self._books.get(ref.key)
            return None if book is None else spend_refusal(ref.budget, book.usage)


def _bound(ref: ScopeRef, book: ScopeBook) -> ScopeRef:
    """A rolling window's next record has the same key as the one before: the call's settlement
    names the record it reserved in by its end (a call in flight when the window rolled over
    gave back, in the next one, a worst case that window never held)."""
    return dataclasses.replace(ref, end=book.expires) if ref.limits.window.rolling else ref


def _same_record(ref: ScopeRef, book: ScopeBook) -> bool:
    return not ref.limits.window.rolling or ref.end is None or ref.end == book.expires


def _used(usage: Usage, found: Refusal) -> float:
    """The figure of the scope's usage that ``found``'s limit is compared to."""
    if found.reason == "tool.max_calls":
        return usage.tool_calls_by_name.get(found.tool or "", 0)
    if found.reason == "tool.max_retries":
        return usage.tool_retries_by_name.get(found.tool or "", 0)
    return usage.value_of(found.reason)


def _crossed(ref: ScopeRef, book: ScopeBook) -> list[tuple[ScopeRef, ScopeWarning]]:
    """The warning of a scope that just reached its threshold (once per window)."""
    warn_at = ref.limits.warn_at
    if warn_at is None or book.warned:
        return []
    most = share_used(ref.budget, book.usage)
    if most is None or most[1] < warn_at * most[2]:
        return []
    book.warned = True
    label = ref.key.rsplit(":", 1)[-1]
    return [(ref, ScopeWarning(ref.kind, ref.name, label, most[0], most[1], most[2], warn_at))]


def _warn(warnings: Sequence[tuple[ScopeRef, ScopeWarning]]) -> None:
    for ref, warning in warnings:
        emit_warning(ref, warning)


def emit_warning(ref: ScopeRef, warning: ScopeWarning) -> None:
    """The event (listeners: the metric), and the scope's own callback; neither refuses anything."""
    events.emit("on_scope_warning", warning)
    callback = ref.limits.on_warn
    if callback is not None:
        try:
            _await(callback(warning))
        except Exception:
            events.internal_error("scope warning callback")


#: The async ``on_warn`` callbacks running on an event loop (a task needs a reference kept).
_running: set[asyncio.Task[Any]] = set()


def _await(result: Any) -> None:
    """An async ``on_warn`` callback's coroutine: a task on the caller's event loop, or run to
    its end on a loop of its own when the call is sync (never dropped unawaited)."""
    if not inspect.isawaitable(result):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_wait(result))
        return
    task = loop.create_task(_wait(result))
    _running.add(task)
    task.add_done_callback(_done)


async def _wait(result: Awaitable[Any]) -> None:
    await result


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        events.internal_error("scope warning callback")


def count_call(usage: Usage, kind: CallKind, tool: str | None, step: int) -> None:
    """Add ``step`` (+1 reserve, -1 release) to the counters a call of ``kind`` uses."""
    if kind is CallKind.MODEL:
        usage.model_calls += step
    elif kind is CallKind.TOOL:
        usage.tool_calls += step
        if tool is not None:
            usage.tool_calls_by_name[tool] = usage.tool_calls_by_name.get(tool, 0) + step
    else:
        usage.retries += step
        if tool is not None:
            usage.tool_retries_by_name[tool] = usage.tool_retries_by_name.get(tool, 0) + step
