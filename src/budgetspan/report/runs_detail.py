"""What the routing evaluation and the HTML report need of each run, gathered as runs finish.

``DetailCollector`` is a second ``RunAssembler`` sink next to the analysis: per run its outcome,
cost, quality (score, rework), the cost and model of each step (``budgetspan.step``, else the
phase) and, for the first ``max_timelines`` runs, a compact timeline of its phase blocks and
calls. Outcomes recorded after a run ended (``budgetspan.record_outcome``: spans naming the run
in ``budgetspan.outcome.run_id``) are read from the stream as it passes and applied at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from budgetspan import attributes as A
from budgetspan.report.analysis import REPORT_KEEP
from budgetspan.report.bounds import MAX_TIMELINES
from budgetspan.report.numbers import number
from budgetspan.report.otlp import Keep, SpanRec
from budgetspan.report.run_stats import CALL_OPS, MODEL_OPS, call_cost

MAX_RUNS = 1_000_000  # runs kept at all; past it, runs are not broken down by step
MAX_TIMELINE_ITEMS = 200  # spans per run timeline
MAX_CONTENT = 2_000  # characters of captured message content kept per call (timelines only)

DETAIL_KEEP = Keep(
    keys=REPORT_KEEP.keys
    | {
        A.STEP,
        A.FALLBACK_FROM,
        A.FALLBACK_REASON,
        A.RUN_SCORE,
        A.RUN_REWORK,
        A.RUN_REWORK_KINDS,
        A.OUTCOME_RUN_ID,
        A.GEN_AI_TOOL_NAME,
        A.RETRIEVAL_DOCUMENTS,
        A.TOOL_TIMED_OUT,
        A.ERROR_TYPE,
        A.GEN_AI_INPUT_MESSAGES,  # only where content capture was on
        A.GEN_AI_OUTPUT_MESSAGES,
    },
    events=REPORT_KEEP.events | {A.EVENT_BUDGET_EXHAUSTED},
    prefixes=REPORT_KEEP.prefixes,
    prefixes_on=REPORT_KEEP.prefixes_on,
)


@dataclass(slots=True)
class StepUse:
    """One step of one run: the model it called first (its route), and what the step spent."""

    model: str
    cost: float = 0.0
    calls: int = 0
    retries: int = 0
    fallbacks: int = 0
    time_s: float = 0.0  # summed duration of the step's model calls
    unpriced: int = 0


@dataclass(slots=True)
class Item:
    """One span on a run's timeline (times in ms from the run's start)."""

    kind: str  # phase | model | tool | retrieval
    name: str
    phase: str
    step: str
    start_ms: float
    dur_ms: float
    cost: float | None = None
    error: bool = False
    model: str = ""
    retries: int = 0
    fallback: str = ""  # the model this call replaced
    detail: str = ""  # documents returned, a timeout, an error type
    input: str = ""  # captured message content (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)
    output: str = ""


@dataclass(slots=True)
class RunDetail:
    run_id: str
    workflow: str
    outcome: str
    start_ns: int
    end_ns: int
    cost: float
    score: float | None = None
    rework: int = 0
    rework_kinds: list[str] = field(default_factory=list)
    reason: str | None = None
    explanation: str | None = None
    profile: str | None = None
    late_outcome: bool = False  # outcome, score or rework came from a record_outcome span
    steps: dict[str, StepUse] = field(default_factory=dict)
    timeline: list[Item] | None = None

    @property
    def wall_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def success(self) -> bool:
        return self.outcome == "success"


def _s(v: Any, default: str = "") -> str:
    return sys.intern(v) if isinstance(v, str) else default


def _model(a: dict[str, Any]) -> str:
    m = a.get(A.GEN_AI_REQUEST_MODEL) or a.get(A.GEN_AI_RESPONSE_MODEL)  # the model the code chose
    return _s(m, "unknown")


class DetailCollector:
    """A ``RunAssembler`` sink (``add_runs``) and a pass-through reader of the span stream."""

    def __init__(self, max_timelines: int = MAX_TIMELINES, max_runs: int = MAX_RUNS) -> None:
        self.runs: list[RunDetail] = []
        self.max_timelines = max_timelines
        self.max_runs = max_runs
        self.dropped_runs = 0
        self._late: dict[str, dict[str, Any]] = {}

    def watch(self, batches: Iterable[list[SpanRec]]) -> Iterator[list[SpanRec]]:
        """Yield the batches unchanged, noting outcomes recorded after their run ended."""
        for batch in batches:
            for s in batch:
                rid = s.attrs.get(A.OUTCOME_RUN_ID)
                if type(rid) is str and rid:
                    self._late.setdefault(rid, {}).update(s.attrs)
            yield batch

    def watch_spans(self, spans: Iterable[SpanRec]) -> Iterator[SpanRec]:
        for batch in self.watch([s] for s in spans):
            yield from batch

    def add_runs(self, runs: list[tuple[str, list[SpanRec]]], traces: dict[str, dict[str, SpanRec]]) -> None:
        for rid, spans in runs:
            if len(self.runs) >= self.max_runs:
                self.dropped_runs += 1
                continue
            self.runs.append(self._detail(rid, spans, len(self.runs) < self.max_timelines))

    def _detail(self, rid: str, spans: list[SpanRec], with_timeline: bool) -> RunDetail:
        run_span = next((s for s in spans if s.operation == A.OP_INVOKE_AGENT), None)
        start = run_span.start_ns if run_span else min(s.start_ns for s in spans)
        end = run_span.end_ns if run_span else max(s.end_ns for s in spans)
        a = run_span.attrs if run_span else {}
        wf = a.get(A.WORKFLOW) or next(
            (s.attrs[A.WORKFLOW] for s in spans if A.WORKFLOW in s.attrs), "default"
        )
        d = RunDetail(rid, _s(wf, "default"), _s(a.get(A.RUN_OUTCOME), "unknown"), start, end, 0.0)
        _quality(d, a)
        d.reason = _s(a.get(A.EXHAUSTED_REASON)) or None
        d.explanation = (
            a[A.EXHAUSTED_EXPLANATION] if isinstance(a.get(A.EXHAUSTED_EXPLANATION), str) else None
        )
        d.profile = _s(a.get(A.BUDGET_PROFILE)) or None
        if d.explanation is None and d.outcome == "failure" and isinstance(a.get(A.ERROR_TYPE), str):
            d.explanation = f"Failed: {a[A.ERROR_TYPE]}"
        summed = 0.0
        items: list[Item] = []
        for s in sorted(spans, key=lambda x: x.start_ns):
            cost = self._call(d, s) if s.operation in CALL_OPS else None
            summed += cost or 0.0
            if with_timeline and (s.is_phase or s.operation in CALL_OPS) and len(items) < MAX_TIMELINE_ITEMS:
                items.append(_item(s, start, cost))
        ledger = number(a.get(A.USAGE_PREFIX + "cost_usd"))
        d.cost = ledger if ledger is not None else summed
        d.timeline = items if with_timeline else None
        return d

    @staticmethod
    def _call(d: RunDetail, s: SpanRec) -> float | None:
        """Adds a model call to its step; returns its cost (None: unknown or not a model call)."""
        if s.operation not in MODEL_OPS:
            return None
        a = s.attrs
        step = _s(a.get(A.STEP)) or _s(a.get(A.PHASE)) or "other"
        use = d.steps.get(step)
        if use is None:
            use = d.steps[step] = StepUse(_model(a))
        cost = call_cost(s)
        use.calls += 1
        use.retries += int(number(a.get(A.RETRIES)) or 0)
        use.fallbacks += 1 if A.FALLBACK_FROM in a else 0
        use.time_s += s.duration_s
        if cost is None:
            use.unpriced += 1
        else:
            use.cost += cost
        return cost

    def finish(self) -> list[RunDetail]:
        """Apply the outcomes recorded after their runs ended; returns the runs by start time."""
        if self._late:
            for d in self.runs:
                late = self._late.get(d.run_id)
                if late is not None:
                    d.late_outcome = True
                    if isinstance(late.get(A.RUN_OUTCOME), str):
                        d.outcome = sys.intern(late[A.RUN_OUTCOME])
                    _quality(d, late, add=True)
        self.runs.sort(key=lambda r: r.start_ns)
        return self.runs


def _quality(d: RunDetail, a: dict[str, Any], add: bool = False) -> None:
    score = number(a.get(A.RUN_SCORE))
    if score is not None:
        d.score = score
    rework = number(a.get(A.RUN_REWORK))
    if rework is not None:
        d.rework = d.rework + int(rework) if add else int(rework)
    kinds = a.get(A.RUN_REWORK_KINDS)
    if isinstance(kinds, (list, tuple)):
        d.rework_kinds += [k for k in kinds if isinstance(k, str)]


def _item(s: SpanRec, run_start: int, cost: float | None) -> Item:
    a = s.attrs
    op = s.operation
    kind = (
        "phase"
        if s.is_phase
        else ("model" if op in MODEL_OPS else ("tool" if op == A.OP_EXECUTE_TOOL else "retrieval"))
    )
    it = Item(
        kind,
        s.name,
        _s(a.get(A.PHASE), "other"),
        _s(a.get(A.STEP)),
        (s.start_ns - run_start) / 1e6,
        (s.end_ns - s.start_ns) / 1e6,
        cost,
        s.error,
    )
    if kind == "phase":
        it.name = _s(a.get(A.PHASE_LABEL)) or s.name
    elif kind == "model":
        it.model = _model(a)
    it.retries = int(number(a.get(A.RETRIES)) or 0)
    it.fallback = _s(a.get(A.FALLBACK_FROM))
    docs = number(a.get(A.RETRIEVAL_DOCUMENTS))
    if docs is not None:
        it.detail = f"documents: {docs:g}"
    it.input, it.output = _content(a.get(A.GEN_AI_INPUT_MESSAGES)), _content(a.get(A.GEN_AI_OUTPUT_MESSAGES))
    if a.get(A.TOOL_TIMED_OUT) is True:
        it.detail = "timed out"
    elif isinstance(a.get(A.ERROR_TYPE), str):
        it.detail = a[A.ERROR_TYPE]
    return it


def _content(v: Any) -> str:
    """Captured content as text, cut at ``MAX_CONTENT`` characters; empty where none was captured."""
    if not isinstance(v, str) or not v:
        return ""
    return v if len(v) <= MAX_CONTENT else v[:MAX_CONTENT] + f"… ({len(v) - MAX_CONTENT:,} more characters)"
