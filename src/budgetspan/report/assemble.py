"""Grouping a stream of spans into runs, holding only the runs in flight.

What a trace file looks like: a ``BatchSpanProcessor`` exports spans when they END, in batches, so
a run's spans come before its run span (``invoke_agent``, which ends last), and the blocks around
a run (an enclosing phase, the request's root span) come shortly after it. Several processes
appending to one file interleave their batches; retried exports repeat or delay a batch.

So a run is complete once its run span has been read, give or take a few batches. The assembler
keeps every span in flight indexed by trace (parent lookups), and finishes a run ``window`` spans
after its run span was read: late children and enclosing blocks within the window are counted.
A run without a run span (an implicit run: its spans carry the run id, no run was declared) is
finished ``window`` spans after the root span of its trace; failing that, at the end of the input.
A trace's spans that belong to no run (enclosing blocks, HTTP spans) are dropped with its last run.

Bounds and what happens past them:

- at most ``max_in_flight`` spans are held. Past it, the oldest traces holding no open run are
  dropped, then the oldest runs are finished early, with what was read of them (``early_runs``);
- a span of a run already finished (it came more than ``window`` spans late, or the same file was
  given twice) is not counted; ``late_spans`` says how many;
- a span read twice while its run is in flight is kept once (``duplicate_spans``).

Memory is O(spans in flight + one id per finished run); time O(1) per span plus the work of
finishing each run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from budgetspan import attributes as A
from budgetspan.report.bounds import MAX_SPANS_IN_FLIGHT, WINDOW
from budgetspan.report.otlp import SpanRec

_RUN_ID, _INVOKE_AGENT = A.RUN_ID, A.OP_INVOKE_AGENT
_EVICT_TO = 0.9  # past the bound, evict down to this share of it (not one span at a time)

# Receives runs finished together (id, spans) and every span in flight, by trace then span id.
RunSink = Callable[[list[tuple[str, list[SpanRec]]], dict[str, dict[str, SpanRec]]], None]


@dataclass(slots=True)
class _Run:
    spans: list[SpanRec] = field(default_factory=list)
    traces: set[str] = field(default_factory=set)
    closing: bool = False  # scheduled to finish


@dataclass(slots=True)
class _Trace:
    runs: set[str] = field(default_factory=set)  # open runs with spans in this trace
    rooted: bool = False  # a span without a parent was read


class RunAssembler:
    """Feed spans with ``add``; each run goes to ``sink`` once complete; call ``close`` at the end."""

    def __init__(
        self, sink: RunSink, *, window: int | None = WINDOW, max_in_flight: int | None = MAX_SPANS_IN_FLIGHT
    ) -> None:
        self.sink = sink
        self.window = window  # None: finish nothing before the end (everything is held)
        self.max_in_flight = max_in_flight
        self.spans: dict[str, dict[str, SpanRec]] = {}  # in flight, by trace then span id
        self._traces: dict[str, _Trace] = {}
        self._runs: dict[str, _Run] = {}  # open runs, oldest first
        self._finished: set[str] = set()
        self._due: deque[tuple[int, str, str]] = deque()  # (at span number, "run"/"trace", id)
        self.read = 0
        self.in_flight = 0
        self.late_spans = 0
        self.duplicate_spans = 0
        self.early_runs = 0

    def add_all(self, spans: Iterable[SpanRec]) -> None:
        self.add_batch(spans)

    def add(self, span: SpanRec) -> None:
        self.add_batch((span,))

    # long: called for every span of the file: kept in one piece, lookups hoisted out of the loop
    def add_batch(self, batch: Iterable[SpanRec]) -> None:
        """``add`` for each span of ``batch`` (one line's spans): one call, not one per span."""
        by_trace, traces, runs, finished = self.spans, self._traces, self._runs, self._finished
        due, bound = self._due, self.max_in_flight
        for span in batch:
            self.read += 1
            tid = span.trace_id
            rid = span.attrs.get(_RUN_ID)
            if type(rid) is not str or not rid:
                rid = None
            elif rid in finished:
                self.late_spans += 1
                continue
            spans = by_trace.get(tid)
            if spans is None:
                spans = by_trace[tid] = {}
                trace = traces[tid] = _Trace()
            elif span.span_id in spans:
                self.duplicate_spans += 1
                continue
            else:
                trace = traces[tid]
            spans[span.span_id] = span
            self.in_flight += 1
            if span.parent_id is None:
                trace.rooted = True
                if rid is None:
                    self._schedule("trace", tid)
            if rid is not None:
                run = runs.get(rid)
                if run is None:
                    run = runs[rid] = _Run()
                run.spans.append(span)
                if tid not in run.traces:
                    run.traces.add(tid)
                    trace.runs.add(rid)
                if not run.closing and span.operation == _INVOKE_AGENT:
                    run.closing = True
                    self._schedule("run", rid)
            if due and due[0][0] <= self.read:
                self._finish_due()
            if bound is not None and self.in_flight > bound:
                self._evict()

    def _schedule(self, kind: str, key: str) -> None:
        if self.window is not None:
            self._due.append((self.read + self.window, kind, key))

    def _finish_due(self) -> None:
        ready: list[str] = []
        while self._due and self._due[0][0] <= self.read:
            _, kind, key = self._due.popleft()
            if kind == "run":
                ready.append(key)
            elif key in self._traces:  # the trace's root was read a window ago: its implicit runs are done
                for rid in sorted(self._traces[key].runs):  # a set: its order changes per process
                    run = self._runs[rid]
                    if not run.closing and run.traces == {key}:
                        run.closing = True
                        ready.append(rid)
                self._drop_trace_if_done(key)
        self._finish([r for r in ready if r in self._runs])

    def _finish(self, run_ids: list[str]) -> None:
        """Hand the runs over (all of them before any of their spans is dropped), then drop them."""
        if not run_ids:
            return
        self.sink([(rid, self._runs[rid].spans) for rid in run_ids], self.spans)
        for rid in run_ids:
            run = self._runs.pop(rid)
            self._finished.add(rid)
            for s in run.spans:
                if self.spans[s.trace_id].pop(s.span_id, None) is not None:
                    self.in_flight -= 1
            for tid in run.traces:
                self._traces[tid].runs.discard(rid)
                self._drop_trace_if_done(tid)

    def _drop_trace_if_done(self, tid: str) -> None:
        trace = self._traces.get(tid)
        if trace is not None and trace.rooted and not trace.runs:
            self._drop_trace(tid)

    def _drop_trace(self, tid: str) -> None:
        del self._traces[tid]
        self.in_flight -= len(self.spans.pop(tid))

    def _evict(self) -> None:
        target = int(self.max_in_flight * _EVICT_TO) if self.max_in_flight is not None else 0
        for tid in [t for t, tr in self._traces.items() if not tr.runs]:
            if self.in_flight <= target:
                return
            self._drop_trace(tid)
        need = self.in_flight - target
        oldest: list[str] = []
        for rid, run in self._runs.items():
            if need <= 0:
                break
            oldest.append(rid)
            need -= len(run.spans)
        self.early_runs += len(oldest)
        self._finish(oldest)

    def close(self) -> None:
        """End of input: every open run is finished with what was read of it."""
        self._due.clear()
        self._finish(list(self._runs))
        self.spans.clear()
        self._traces.clear()
        self.in_flight = 0


__all__ = ["MAX_SPANS_IN_FLIGHT", "WINDOW", "RunAssembler", "RunSink"]
