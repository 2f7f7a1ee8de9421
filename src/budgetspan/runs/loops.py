"""Loops without progress: the same tool call again and again, a ping-pong, no new result.

Each tool call of a run has a **signature** (the tool and its canonical arguments, hashed) and,
once it returns, a **digest** of its result (or of its error's type and message), hashed too:
results are digested, never stored. From them, per run:

- ``max_repeated_calls=k``: the k-th call with a signature whose last k-1 calls all gave the
  same result is a loop (reason ``no_progress``); it is refused before it runs.
- A ping-pong: two calls taking turns (A-B-A-B), each giving the same result each time; the
  next A is a loop (checked whenever ``max_repeated_calls`` is set).
- ``max_steps_without_progress=m``: m tool steps in a row gave no result not seen before in the
  run; the run stops after the m-th.

Each limit's action is ``stop`` (the default: the run stops with reason ``no_progress``, its partial
result kept, and an explanation naming the tool and the repetition) or ``warn`` (a span event and
``budgetspan_loops_total``, and the call goes on). The state lives in the process that runs the
tool (a run's calls in other processes are watched there, separately).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import Budget, BudgetExhausted, Limit
from budgetspan.accounting.ledger import Mode, Refusal

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

REPEATED = "repeated_call"
PING_PONG = "ping_pong"
NO_PROGRESS = "steps_without_progress"


def _plain(value: Any) -> Any:
    """A value JSON can hold: a pydantic model's dump, a dataclass's fields, else itself."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return dump()
        except Exception:
            return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return (
        repr(value)
        if not isinstance(value, (dict, list, tuple, str, int, float, bool, type(None)))
        else value
    )


def _hash(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, default=lambda v: _plain(v), separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:24]


def signature(tool: str, args: Any, kwargs: Any) -> str:
    """The call's signature: the tool and its canonical arguments, hashed."""
    return _hash([tool, _plain(list(args)), _plain(dict(kwargs))])


def digest(result: Any = None, error: BaseException | None = None) -> str:
    """A digest of what a call gave back (its error's type and message for a failure)."""
    if error is not None:
        return _hash(["error", type(error).__qualname__, str(error)])
    return _hash(["ok", _plain(result)])


@dataclass(frozen=True)
class Loop:
    """A loop found in a run's tool calls."""

    kind: str  # REPEATED | PING_PONG | NO_PROGRESS
    tool: str
    limit: int
    action: str  # "stop" | "warn"
    other: str | None = None  # the other tool of a ping-pong

    @property
    def explanation(self) -> str:
        if self.kind == REPEATED:
            return (
                f"Stopped: {self.tool} called {self.limit} times with the same arguments and the same result"
            )
        if self.kind == PING_PONG:
            return (
                f"Stopped: {self.tool} and {self.other} called in turn (A-B-A-B) with the same "
                "arguments and the same results"
            )
        return f"Stopped: no new result in the last {self.limit} tool steps (the last was {self.tool})"


@dataclass(frozen=True)
class _Step:
    tool: str
    signature: str
    digest: str


class LoopWatch:
    """One run's tool steps, as signatures and digests; thread-safe."""

    def __init__(self, budget: Budget) -> None:
        self.repeat = max(2, budget.max_repeated_calls) if budget.max_repeated_calls is not None else None
        self.stale_limit = budget.max_steps_without_progress or None
        self.repeat_action = budget.repeated_calls_action or "stop"
        self.stale_action = budget.no_progress_action or "stop"
        self._by_signature: dict[str, deque[str]] = {}
        self._last: deque[_Step] = deque(maxlen=4)
        self._seen: set[str] = set()
        self._stale = 0
        self._lock = threading.Lock()
        self.stopped: str | None = None  # the loop type that stopped the run

    @staticmethod
    def wanted(budget: Budget) -> bool:
        return budget.max_repeated_calls is not None or bool(budget.max_steps_without_progress)

    def before(self, tool: str, sig: str) -> Loop | None:
        """The loop this call would make, judged from the calls before it."""
        if self.repeat is None:
            return None
        with self._lock:
            s = list(self._last)
            if (
                len(s) == 4
                and s[0].signature == s[2].signature == sig != s[1].signature == s[3].signature
                and s[0].digest == s[2].digest
                and s[1].digest == s[3].digest
            ):
                return Loop(PING_PONG, tool, 2, self.repeat_action, other=s[1].tool)
            earlier = self._by_signature.get(sig)
            if earlier is not None and len(earlier) >= self.repeat - 1 and len(set(earlier)) == 1:
                return Loop(REPEATED, tool, self.repeat, self.repeat_action)
        return None

    def after(self, tool: str, sig: str, result_digest: str) -> Loop | None:
        """Record a finished step; the no-progress loop it completes, if any."""
        with self._lock:
            self._last.append(_Step(tool, sig, result_digest))
            if self.repeat is not None:
                earlier = self._by_signature.setdefault(sig, deque(maxlen=self.repeat - 1))
                earlier.append(result_digest)
            if result_digest in self._seen:
                self._stale += 1
            else:
                self._seen.add(result_digest)
                self._stale = 0
            if self.stale_limit is not None and self._stale >= self.stale_limit:
                self._stale = 0  # (warn: once per m steps without progress)
                return Loop(NO_PROGRESS, tool, self.stale_limit, self.stale_action)
        return None


def check(run: Run, tool: str, sig: str) -> None:
    """Before a tool call of ``run``: a loop it would make stops the run here (``stop``: raises
    BudgetExhausted, reason ``no_progress``) or is said (``warn``)."""
    watch = run.loops
    found = watch.before(tool, sig) if watch is not None else None
    if found is not None:
        _act(run, found)


def step(run: Run, tool: str, sig: str, result: Any = None, error: BaseException | None = None) -> None:
    """After a tool call of ``run``: record it; m steps without a new result stop the run (its
    next call is refused) or are said."""
    watch = run.loops
    found = watch.after(tool, sig, digest(result, error)) if watch is not None else None
    if found is not None:
        try:
            _act(run, found)
        except BudgetExhausted:
            pass  # the run has stopped: its next call is refused; this call's result stands


def _act(run: Run, loop: Loop) -> None:
    stop = loop.action == "stop"
    enforced = stop and run.mode is Mode.ENFORCE
    if run.span is not None:
        run.span.add_event(
            A.EVENT_LOOP_DETECTED,
            {
                A.LOOP_TYPE: loop.kind,
                A.LOOP_ACTION: loop.action,
                A.GEN_AI_TOOL_NAME: loop.tool,
                A.LOOP_EXPLANATION: loop.explanation,
            },
        )
    events.emit("on_loop", run, loop.kind, "stopped" if enforced else "warned")
    refusal = Refusal(Limit.NO_PROGRESS.value, loop.limit, loop.tool)
    if enforced:
        if run.loops is not None and run.exhausted is None:
            run.loops.stopped = loop.kind
        raise run.exhaust(refusal, detail=loop.explanation)
    if stop:  # observe mode: what enforce mode would have stopped
        run.note_would_refuse(refusal)


__all__ = [
    "NO_PROGRESS",
    "PING_PONG",
    "REPEATED",
    "Loop",
    "LoopWatch",
    "check",
    "digest",
    "signature",
    "step",
]
