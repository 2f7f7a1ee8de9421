"""One run's figures from its spans: phases, calls, cost, sequential reads.

A run's wall time is split over phases so that the phase times add up to the run's time exactly:
each instant goes to the innermost phase span (or phase-less call) covering it, split evenly when
several overlap, and to ``other`` when nothing does. Costs and call counts come from the call
spans' own ``budgetspan.phase``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from budgetspan import attributes as A
from budgetspan.report.load import SpanRec
from budgetspan.report.numbers import number
from budgetspan.runs.phases import PHASES

OTHER = "other"
MODEL_OPS = A.MODEL_OPERATIONS
CALL_OPS = MODEL_OPS | {A.OP_EXECUTE_TOOL, A.OP_RETRIEVAL}
PHASE_ORDER = (*PHASES, OTHER)

# Limit name -> the usage attribute it is compared to (budgetspan.usage.*).
LIMIT_USAGE = {
    "max_model_calls": "model_calls",
    "max_tool_calls": "tool_calls",
    "max_steps": "steps",
    "max_input_tokens": "input_tokens",
    "max_output_tokens": "output_tokens",
    "max_total_tokens": "total_tokens",
    "max_cost_usd": "cost_usd",
    "max_retries": "retries",
}


@dataclass
class PhaseStat:
    time_s: float = 0.0
    cost_usd: float = 0.0
    model_calls: int = 0
    tool_calls: int = 0
    retrievals: int = 0

    @property
    def calls(self) -> int:
        return self.model_calls + self.tool_calls + self.retrievals


@dataclass
class Read:
    name: str
    offset_s: float  # from the run's start
    duration_s: float


@dataclass
class SequentialReads:
    """Read-only calls under one parent that ran one after another."""

    workflow: str
    run_id: str
    parent: str
    reads: list[Read]
    saving_s: float  # time saved had they all run at once


@dataclass
class RunStat:
    run_id: str
    workflow: str
    profile: str | None = None
    outcome: str = "unknown"
    reason: str | None = None
    explanation: str | None = None
    start_ns: int = 0
    end_ns: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    tool_calls: int = 0
    retrievals: int = 0
    retries: int = 0
    verification_steps: int = 0
    approval_waits: int = 0
    unpriced_calls: int = 0
    limits: dict[str, float] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)
    would_exhaust: list[str] = field(default_factory=list)
    phases: dict[str, PhaseStat] = field(default_factory=dict)
    has_run_span: bool = False

    @property
    def wall_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def budget_used(self) -> tuple[str, float] | None:
        """The limit closest to (or past) its end, and the share of it used."""
        best: tuple[str, float] | None = None
        for limit, value in self.limits.items():
            if limit == "max_wall_clock_s":
                used = self.usage.get("wall_clock_s", self.wall_s)
            elif limit in LIMIT_USAGE:
                used = self.usage.get(LIMIT_USAGE[limit], 0.0)
            else:
                continue
            share = used / value if value > 0 else (1.0 if used > 0 else 0.0)
            if best is None or share > best[1]:
                best = (limit, share)
        return best

    def plan_actual(self, item: str) -> float:
        if item == "duration_s":
            return self.wall_s
        return float(getattr(self, item))


def call_cost(span: SpanRec) -> float | None:
    """The span's recorded cost; for foreign spans without one, priced from their tokens."""
    cost = number(span.attrs.get(A.GEN_AI_USAGE_COST))
    if cost is not None or span.attrs.get(A.COST_UNPRICED) or span.attrs.get(A.USAGE_UNREPORTED):
        return cost
    inp = number(span.attrs.get(A.GEN_AI_USAGE_INPUT_TOKENS))
    out = number(span.attrs.get(A.GEN_AI_USAGE_OUTPUT_TOKENS))
    model = span.attrs.get(A.GEN_AI_RESPONSE_MODEL) or span.attrs.get(A.GEN_AI_REQUEST_MODEL)
    provider = span.attrs.get(A.GEN_AI_PROVIDER_NAME) or span.attrs.get(A.GEN_AI_SYSTEM_DEPRECATED)
    if (inp is None and out is None) or not isinstance(model, str):
        return None
    try:
        from budgetspan.accounting.pricing import default_resolver

        cache_read = number(span.attrs.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS))
        cache_write = number(span.attrs.get(A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS))
        return default_resolver().cost(
            str(provider or ""),
            model,
            int(inp or 0),
            int(out or 0),
            None if cache_read is None else int(cache_read),
            None if cache_write is None else int(cache_write),
        )
    except Exception:
        return None


def is_phase_span(span: SpanRec) -> bool:
    return span.operation is None and A.PHASE in span.attrs and span.name.startswith("phase ")


def _phase_times(start: int, end: int, intervals: list[tuple[int, int, int, str]]) -> dict[str, float]:
    """Split [start, end] over phases: innermost covering interval wins, ties split evenly."""
    out: dict[str, float] = defaultdict(float)
    if end <= start:
        return {}
    marks: list[tuple[int, int, int]] = []  # (time, +1 start / -1 end, interval index)
    for i, (s, e, _depth, _phase) in enumerate(intervals):
        s, e = max(s, start), min(e, end)
        if e > s:
            marks.append((s, 1, i))
            marks.append((e, -1, i))
    marks.sort(key=lambda m: (m[0], m[1]))
    active: set[int] = set()
    t = start
    for when, delta, i in marks:
        if when > t:
            _spread(out, when - t, active, intervals)
            t = when
        if delta > 0:
            active.add(i)
        else:
            active.discard(i)
    if end > t:
        _spread(out, end - t, active, intervals)
    return {p: ns / 1e9 for p, ns in out.items()}


def _spread(
    out: dict[str, float], ns: int, active: set[int], intervals: list[tuple[int, int, int, str]]
) -> None:
    if not active:
        out[OTHER] += ns
        return
    depth = max(intervals[i][2] for i in active)
    phases = {intervals[i][3] for i in active if intervals[i][2] == depth}
    for p in phases:
        out[p] += ns / len(phases)


class RunIndex:
    """Parent lookups within the loaded spans."""

    def __init__(self, spans: Sequence[SpanRec]) -> None:
        self.by_id = {(s.trace_id, s.span_id): s for s in spans}

    def parent(self, span: SpanRec) -> SpanRec | None:
        if span.parent_id is None:
            return None
        return self.by_id.get((span.trace_id, span.parent_id))

    def phase_depth(self, span: SpanRec) -> int:
        """How many phase spans enclose ``span`` (itself excluded)."""
        depth, node, hops = 0, self.parent(span), 0
        while node is not None and hops < 256:
            if is_phase_span(node):
                depth += 1
            node, hops = self.parent(node), hops + 1
        return depth


# long: one pass over a run's spans that fills every figure of RunStat
def build_run(run_id: str, spans: list[SpanRec], index: RunIndex) -> tuple[RunStat, list[SpanRec]]:
    run_span = next((s for s in spans if s.operation == A.OP_INVOKE_AGENT), None)
    workflow = next((str(s.attrs[A.WORKFLOW]) for s in spans if A.WORKFLOW in s.attrs), "default")
    r = RunStat(run_id=run_id, workflow=workflow)
    if run_span is not None:
        r.has_run_span = True
        r.start_ns, r.end_ns = run_span.start_ns, run_span.end_ns
        a = run_span.attrs
        r.workflow = str(a.get(A.WORKFLOW, workflow))
        r.profile = str(a[A.BUDGET_PROFILE]) if A.BUDGET_PROFILE in a else None
        r.outcome = str(a.get(A.RUN_OUTCOME, "unknown"))
        r.reason = str(a[A.EXHAUSTED_REASON]) if A.EXHAUSTED_REASON in a else None
        r.explanation = str(a[A.EXHAUSTED_EXPLANATION]) if A.EXHAUSTED_EXPLANATION in a else None
        for key, value in a.items():
            num = number(value)
            if num is None:
                continue
            if key.startswith(A.LIMIT_PREFIX):
                r.limits[key[len(A.LIMIT_PREFIX) :]] = num
            elif key.startswith(A.USAGE_PREFIX):
                r.usage[key[len(A.USAGE_PREFIX) :]] = num
        for name, attrs in run_span.events:
            if name == A.EVENT_WOULD_EXHAUST and A.EXHAUSTED_REASON in attrs:
                r.would_exhaust.append(str(attrs[A.EXHAUSTED_REASON]))
    else:
        r.start_ns = min(s.start_ns for s in spans)
        r.end_ns = max(s.end_ns for s in spans)

    calls = [s for s in spans if s.operation in CALL_OPS]
    intervals: list[tuple[int, int, int, str]] = []
    for s in spans:
        if is_phase_span(s):
            phase = str(s.attrs[A.PHASE])
            intervals.append((s.start_ns, s.end_ns, index.phase_depth(s) + 1, phase))
            if phase == "verification":
                r.verification_steps += 1
            elif phase == "approval":
                r.approval_waits += 1
    for s in calls:
        if index.phase_depth(s) == 0:
            intervals.append((s.start_ns, s.end_ns, 1, str(s.attrs.get(A.PHASE, OTHER))))
    phases: dict[str, PhaseStat] = defaultdict(PhaseStat)
    for phase, secs in _phase_times(r.start_ns, r.end_ns, intervals).items():
        phases[phase].time_s += secs
    span_cost = 0.0
    for s in calls:
        st = phases[str(s.attrs.get(A.PHASE, OTHER))]
        r.retries += int(number(s.attrs.get(A.RETRIES)) or 0)
        if s.operation in MODEL_OPS:
            st.model_calls += 1
            r.model_calls += 1
            cost = call_cost(s)
            if cost is None:
                r.unpriced_calls += 1 if not s.attrs.get(A.USAGE_UNREPORTED) else 0
            else:
                st.cost_usd += cost
                span_cost += cost
        elif s.operation == A.OP_EXECUTE_TOOL:
            st.tool_calls += 1
            r.tool_calls += 1
        else:
            st.retrievals += 1
            r.retrievals += 1
    ledger_cost = r.usage.get("cost_usd")
    r.cost_usd = ledger_cost if ledger_cost is not None else span_cost
    r.phases = dict(phases)
    return r, calls


def sequential_reads(run: RunStat, calls: list[SpanRec], index: RunIndex) -> list[SequentialReads]:
    """Read-only calls under one parent that did not overlap in time."""
    groups: dict[str | None, list[SpanRec]] = defaultdict(list)
    for s in calls:
        if s.operation == A.OP_RETRIEVAL or s.attrs.get(A.READ_ONLY) is True:
            groups[s.parent_id].append(s)
    found: list[SequentialReads] = []
    for parent_id, reads in groups.items():
        if len(reads) < 2:
            continue
        reads.sort(key=lambda s: (s.start_ns, s.end_ns))
        batches: list[list[SpanRec]] = []
        batch_end = -1
        for s in reads:
            if batches and s.start_ns < batch_end:  # overlaps the batch in flight: ran in parallel
                batches[-1].append(s)
                batch_end = max(batch_end, s.end_ns)
            else:
                batches.append([s])
                batch_end = s.end_ns
        if len(batches) < 2:
            continue
        durations = [(max(s.end_ns for s in b) - min(s.start_ns for s in b)) / 1e9 for b in batches]
        parent = index.by_id.get((reads[0].trace_id, parent_id)) if parent_id else None
        found.append(
            SequentialReads(
                workflow=run.workflow,
                run_id=run.run_id,
                parent=parent.name if parent is not None else "(root)",
                reads=[Read(s.name, (s.start_ns - run.start_ns) / 1e9, s.duration_s) for s in reads],
                saving_s=sum(durations) - max(durations),
            )
        )
    return found
