"""Concurrency-safe accounting per run: reserve -> commit / release.

The ledger is the single authority on limits. A call reserves *before* it starts: a count limit
is checked and incremented under one lock, so the (N+1)-th call is refused even when calls race.
Tokens and dollars are committed when the response (or a stream chunk) reports them.

``Ledger`` is the interface a shared backend (e.g. Redis) implements; ``InMemoryLedger`` is the
process-local one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from budgetspan.accounting.budget import Budget, ToolLimits, Usage


class Mode(str, Enum):
    ENFORCE = "enforce"
    OBSERVE = "observe"


class CallKind(str, Enum):
    MODEL = "model"
    TOOL = "tool"
    RETRY = "retry"  # one extra attempt of a model or tool call


@dataclass(frozen=True)
class Refusal:
    """Why a reservation was (or, in observe mode, would have been) refused."""

    reason: str
    limit: float | None
    tool: str | None = None
    #: A token or dollar limit refused by a worst case: what this call could have added.
    worst: float | None = None
    #: The scope window whose limit refused the call (an ``accounting.scopes.ScopeRef``; None: the
    #: run's own), and what that scope had used of the limit.
    scope: Any = None
    spent: float | None = None


@dataclass(slots=True)
class Reservation:
    """A granted slot. ``would_refuse`` is set in observe mode when enforce mode would refuse.

    The ``worst_*`` figures are what the call may spend at most (0: unknown); the ledger holds them
    against the run's token and dollar limits until the call settles.
    """

    run_id: str
    kind: CallKind
    tool: str | None = None
    worst_case_cost: float = 0.0
    would_refuse: Refusal | None = None
    done: bool = False
    #: Made by a fallback ledger (``RedisLedger`` during an outage), not by the shared one.
    fallback: bool = False
    worst_case_input_tokens: int = 0
    worst_case_output_tokens: int = 0
    #: The same call's reservations in the enclosing runs (nested runs), settled with this one:
    #: pairs of (run, reservation), filled by the run layer.
    linked: list[Any] = field(default_factory=list)
    #: The scope windows (``accounting.scopes.ScopeRef``) the call is reserved in with the run,
    #: settled with it.
    scopes: tuple[Any, ...] = ()


@dataclass(slots=True)
class Spend:
    """What one call consumed, as reported by the provider (None: not reported)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    #: Built-in tools' per-use fees (web search...), added to the tokens' price (``tool_fees``).
    tool_fees_usd: float | None = None


class LedgerRefused(Exception):
    """Internal: the ledger refused a reservation in enforce mode. Turned into BudgetExhausted."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class Ledger(ABC):
    """Accounting backend. Every method is safe to call from any thread."""

    @abstractmethod
    def open(self, run_id: str, budget: Budget, mode: Mode, started_at: float | None = None) -> None:
        """Start accounting a run (idempotent)."""

    @abstractmethod
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
        """Reserve one call; raise LedgerRefused (enforce) or mark would_refuse (observe).

        ``force``: count the call even if a limit would refuse it (a call we cannot stop, such
        as one made by another instrumentation); the refusal is returned in ``would_refuse``.
        ``tool_limits``: the tool's own defaults (from ``@tool``); the budget's entry wins.
        ``worst_case_*``: the most this call may spend (output tokens, input tokens, dollars); held
        against the token and dollar limits, with every other call in flight, until it settles.
        ``final``: a call of the ``final_response`` phase, which may use the budget's
        ``reserve_for_final``; any other call is refused where it would eat into it.
        ``scopes``: the scope windows (``ScopeRef``) the call also reserves in, in the same step;
        the first whose limit it would pass refuses it (``Refusal.scope`` names it).
        """

    @abstractmethod
    def commit(
        self,
        reservation: Reservation,
        spend: Spend | None = None,
        *,
        finished: bool = True,
        unreported: bool = False,
        unpriced: bool = False,
    ) -> Refusal | None:
        """Add what the call consumed (beyond ``add_spend``); return the limit now reached, if any.

        ``unreported``: the provider never said the tokens; ``unpriced``: no price for the model.
        """

    @abstractmethod
    def add_spend(self, run_id: str, spend: Spend, scopes: Sequence[Any] = ()) -> Refusal | None:
        """Add usage reported mid-call (a stream chunk), also to ``scopes``; return the run's
        limit now reached, if any."""

    @abstractmethod
    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call never started."""

    @abstractmethod
    def usage(self, run_id: str) -> Usage:
        """A copy of the run's usage so far."""

    @abstractmethod
    def check(self, run_id: str) -> Refusal | None:
        """The limit the run has reached (or its cancellation), without reserving anything."""

    @abstractmethod
    def cancel(self, run_id: str) -> bool:
        """Mark the run cancelled; its next reservation is refused. False if unknown."""

    @abstractmethod
    def close(self, run_id: str) -> Usage:
        """Stop accounting the run and return its final usage."""

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
        """A call of a run that has closed (work that outlived its block): reserve it in the run's
        scope windows only, which outlive the run (``worst``: dollars, output and input tokens).
        Raises LedgerRefused like ``reserve``; None: this ledger cannot (no limit applies)."""
        return None

    def scope_usage(self, key: str) -> Usage | None:
        """What a scope window (``ScopeRef.key``) has used so far; None: nothing recorded."""
        return None

    @abstractmethod
    def deadline(self, run_id: str) -> float | None:
        """The run's wall-clock deadline on the ``time.monotonic`` clock, if any."""

    def extend(self, run_id: str, amounts: Mapping[str, float]) -> Budget:
        """Raise the run's limits by ``amounts`` (by limit name; an unset limit stays unset), for
        every process that shares the run; return the run's budget now. KeyError if unknown."""
        raise NotImplementedError(f"{type(self).__name__} cannot extend a run's limits")
