"""Where time and money went: runs, phases, contributors, sequential reads, plan versus actual.

Input is a list of ``SpanRec`` (from OTLP JSON lines or, in the demo, from live spans). Spans are
grouped into runs by ``budgetspan.run.id``. A run's wall time is split over phases so that the
phase times add up to the run's time exactly: each instant goes to the innermost phase span (or
phase-less call) covering it, split evenly when several overlap, and to ``other`` when nothing
does. Costs and call counts come from the call spans' own ``budgetspan.phase``.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from budgetspan import attributes as A
from budgetspan.report.load import SpanRec
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

PLAN_ITEMS = (
    "model_calls",
    "retrievals",
    "tool_calls",
    "verification_steps",
    "approval_waits",
    "cost_usd",
    "duration_s",
)
MISS_THRESHOLD = 0.25  # a plan item off by more than this share is a miss


class PlanError(ValueError):
    """A plan file that cannot be used; the message names the file and the accepted form."""


# --- per run ----------------------------------------------------------------------------------


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


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _call_cost(span: SpanRec) -> float | None:
    """The span's recorded cost; for foreign spans without one, priced from their tokens."""
    cost = _num(span.attrs.get(A.GEN_AI_USAGE_COST))
    if cost is not None or span.attrs.get(A.COST_UNPRICED) or span.attrs.get(A.USAGE_UNREPORTED):
        return cost
    inp = _num(span.attrs.get(A.GEN_AI_USAGE_INPUT_TOKENS))
    out = _num(span.attrs.get(A.GEN_AI_USAGE_OUTPUT_TOKENS))
    model = span.attrs.get(A.GEN_AI_RESPONSE_MODEL) or span.attrs.get(A.GEN_AI_REQUEST_MODEL)
    provider = span.attrs.get(A.GEN_AI_PROVIDER_NAME) or span.attrs.get(A.GEN_AI_SYSTEM_DEPRECATED)
    if (inp is None and out is None) or not isinstance(model, str):
        return None
    try:
        from budgetspan.accounting.pricing import default_resolver

        cache_read = _num(span.attrs.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS))
        cache_write = _num(span.attrs.get(A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS))
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


def _is_phase_span(span: SpanRec) -> bool:
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


class _Index:
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
            if _is_phase_span(node):
                depth += 1
            node, hops = self.parent(node), hops + 1
        return depth


def _build_run(run_id: str, spans: list[SpanRec], index: _Index) -> tuple[RunStat, list[SpanRec]]:
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
            num = _num(value)
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
        if _is_phase_span(s):
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
        r.retries += int(_num(s.attrs.get(A.RETRIES)) or 0)
        if s.operation in MODEL_OPS:
            st.model_calls += 1
            r.model_calls += 1
            cost = _call_cost(s)
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


def _sequential_reads(run: RunStat, calls: list[SpanRec], index: _Index) -> list[SequentialReads]:
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


# --- per workflow -----------------------------------------------------------------------------


@dataclass
class PhaseSummary:
    phase: str
    runs: int
    time_s: float
    time_share: float
    p50_s: float
    p95_s: float
    cost_usd: float
    cost_share: float
    calls: int


@dataclass
class Contributor:
    name: str
    phase: str
    count: int
    time_s: float
    time_share: float
    cost_usd: float
    cost_share: float


@dataclass
class ReasonRate:
    reason: str
    runs: int
    rate: float


@dataclass
class PlanRow:
    workflow: str
    item: str
    estimate: float
    actual: float  # mean per run
    actual_p95: float
    miss: float  # (actual - estimate) / estimate; inf when the estimate was 0
    severity: float  # |actual - estimate| / max(actual, estimate): 0 = exact, 1 = totally off
    is_miss: bool


@dataclass
class WorkflowStat:
    workflow: str
    runs: int
    outcomes: dict[str, int]
    total_cost_usd: float
    total_time_s: float
    cost_per_success: float | None
    phases: list[PhaseSummary]
    top_by_time: list[Contributor]
    top_by_cost: list[Contributor]
    exhaustions: list[ReasonRate]
    would_exhaust: list[ReasonRate]
    retries: int
    retries_by_call: dict[str, int]
    sequential_reads: list[SequentialReads]
    unpriced_calls: int


@dataclass
class Analysis:
    workflows: list[WorkflowStat]
    runs: list[RunStat]
    plan: list[PlanRow] = field(default_factory=list)
    plan_notes: list[str] = field(default_factory=list)
    spans: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _contributors(
    runs: list[tuple[RunStat, list[SpanRec]]],
    phase_spans: list[SpanRec],
    total_time: float,
    total_cost: float,
) -> list[Contributor]:
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for _run, calls in runs:
        for s in calls:
            g = groups[(s.name, str(s.attrs.get(A.PHASE, OTHER)))]
            g[0] += 1
            g[1] += s.duration_s
            if s.operation in MODEL_OPS:
                g[2] += _call_cost(s) or 0.0
    for s in phase_spans:  # phases with no calls inside: waits (approval) and the agent's own work
        label = s.attrs.get(A.PHASE_LABEL)
        g = groups[(str(label) if label else s.name, str(s.attrs[A.PHASE]))]
        g[0] += 1
        g[1] += s.duration_s
    return [
        Contributor(
            name,
            phase,
            int(g[0]),
            g[1],
            g[1] / total_time if total_time else 0.0,
            g[2],
            g[2] / total_cost if total_cost else 0.0,
        )
        for (name, phase), g in groups.items()
    ]


def _rates(counter: Counter[str], runs: int) -> list[ReasonRate]:
    return [ReasonRate(reason, n, n / runs if runs else 0.0) for reason, n in counter.most_common()]


def analyze(
    spans: Iterable[SpanRec], plan: Mapping[str, Mapping[str, float]] | None = None, top: int = 5
) -> Analysis:
    """Group spans into runs and workflows and compute every figure of the report."""
    spans = list(spans)
    index = _Index(spans)
    by_run: dict[str, list[SpanRec]] = defaultdict(list)
    for s in spans:
        rid = s.attrs.get(A.RUN_ID)
        if isinstance(rid, str) and rid:
            by_run[rid].append(s)
    _adopt_phase_spans(by_run, index)
    has_calls = _phases_with_calls(spans, index)
    built = [_build_run(rid, group, index) for rid, group in by_run.items()]
    built.sort(key=lambda rc: rc[0].start_ns)
    by_workflow: dict[str, list[tuple[RunStat, list[SpanRec]]]] = defaultdict(list)
    for rc in built:
        by_workflow[rc[0].workflow].append(rc)
    workflows: list[WorkflowStat] = []
    for wf in sorted(by_workflow):
        items = by_workflow[wf]
        runs = [r for r, _ in items]
        n = len(runs)
        total_time = sum(r.wall_s for r in runs)
        total_cost = sum(r.cost_usd for r in runs)
        outcomes = Counter(r.outcome for r in runs)
        successes = outcomes.get("success", 0)
        phase_names = [p for p in PHASE_ORDER if any(p in r.phases for r in runs)]
        phase_names += sorted({p for r in runs for p in r.phases} - set(phase_names))
        phase_cost_total = sum(st.cost_usd for r in runs for st in r.phases.values())
        phases = []
        for p in phase_names:
            per_run = [r.phases[p] for r in runs if p in r.phases]
            times = [st.time_s for st in per_run]
            cost = sum(st.cost_usd for st in per_run)
            phases.append(
                PhaseSummary(
                    p,
                    len(per_run),
                    sum(times),
                    sum(times) / total_time if total_time else 0.0,
                    percentile(times, 50),
                    percentile(times, 95),
                    cost,
                    cost / phase_cost_total if phase_cost_total else 0.0,
                    sum(st.calls for st in per_run),
                )
            )
        empty_phases = [
            s
            for r in runs
            for s in by_run[r.run_id]
            if _is_phase_span(s) and (s.trace_id, s.span_id) not in has_calls
        ]
        contributors = _contributors(items, empty_phases, total_time, phase_cost_total)
        retries_by_call: Counter[str] = Counter()
        for _r, calls in items:
            for s in calls:
                n_retries = int(_num(s.attrs.get(A.RETRIES)) or 0)
                if n_retries:
                    retries_by_call[s.name] += n_retries
        seq = [f for r, calls in items for f in _sequential_reads(r, calls, index)]
        workflows.append(
            WorkflowStat(
                workflow=wf,
                runs=n,
                outcomes=dict(outcomes.most_common()),
                total_cost_usd=total_cost,
                total_time_s=total_time,
                cost_per_success=total_cost / successes if successes else None,
                phases=phases,
                top_by_time=sorted(contributors, key=lambda c: -c.time_s)[:top],
                top_by_cost=[c for c in sorted(contributors, key=lambda c: -c.cost_usd) if c.cost_usd > 0][
                    :top
                ],
                exhaustions=_rates(
                    Counter(r.reason or "unknown" for r in runs if r.outcome == "budget_exhausted"), n
                ),
                would_exhaust=_rates(Counter(x for r in runs for x in r.would_exhaust), n),
                retries=sum(r.retries for r in runs),
                retries_by_call=dict(retries_by_call.most_common()),
                sequential_reads=seq,
                unpriced_calls=sum(r.unpriced_calls for r in runs),
            )
        )
    result = Analysis(workflows=workflows, runs=[r for r, _ in built], spans=len(spans))
    if plan is not None:
        result.plan, result.plan_notes = compare_plan(plan, result.runs)
    return result


def _adopt_phase_spans(by_run: dict[str, list[SpanRec]], index: _Index) -> None:
    """Phase blocks outside a declared run carry no run id: they belong to the run of their calls."""
    for group in by_run.values():
        have = {(s.trace_id, s.span_id) for s in group}
        for s in list(group):
            if s.operation not in CALL_OPS:
                continue
            node, hops = index.parent(s), 0
            while node is not None and hops < 256:
                key = (node.trace_id, node.span_id)
                if _is_phase_span(node) and A.RUN_ID not in node.attrs and key not in have:
                    have.add(key)
                    group.append(node)
                node, hops = index.parent(node), hops + 1


def _phases_with_calls(spans: list[SpanRec], index: _Index) -> set[tuple[str, str]]:
    """Phase spans with a call somewhere below them (the others are waits or the agent's own work)."""
    has_calls: set[tuple[str, str]] = set()
    for s in spans:
        if s.operation in CALL_OPS:
            node, hops = index.parent(s), 0
            while node is not None and hops < 256:
                if _is_phase_span(node):
                    has_calls.add((node.trace_id, node.span_id))
                node, hops = index.parent(node), hops + 1
    return has_calls


# --- plan ------------------------------------------------------------------------------------

PLAN_FORM = (
    "a TOML file with one [workflows.NAME] table per workflow, giving per-run estimates for any of: "
    + ", ".join(PLAN_ITEMS)
)


def load_plan(path: str) -> dict[str, dict[str, float]]:
    """Read a plan file. Raises PlanError naming the file, the key and the accepted form."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PlanError(f"plan {path!r}: cannot read the file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"plan {path!r}: not valid TOML ({e}); expected {PLAN_FORM}") from None
    if set(data) - {"workflows"} or not isinstance(data.get("workflows"), dict):
        raise PlanError(f"plan {path!r}: expected {PLAN_FORM}")
    plan: dict[str, dict[str, float]] = {}
    for wf, table in data["workflows"].items():
        if not isinstance(table, dict):
            raise PlanError(f"plan {path!r} [workflows.{wf}]: not a table; expected {PLAN_FORM}")
        items: dict[str, float] = {}
        for key, value in table.items():
            if key not in PLAN_ITEMS:
                raise PlanError(f"plan {path!r} [workflows.{wf}]: unknown item {key!r}; expected {PLAN_FORM}")
            num = _num(value)
            if num is None or num < 0:
                raise PlanError(f"plan {path!r} [workflows.{wf}]: {key} = {value!r} is not a number >= 0")
            items[key] = num
        plan[str(wf)] = items
    return plan


def compare_plan(
    plan: Mapping[str, Mapping[str, float]], runs: Sequence[RunStat]
) -> tuple[list[PlanRow], list[str]]:
    """Estimate versus actual mean per run, biggest misses first."""
    rows: list[PlanRow] = []
    notes: list[str] = []
    for wf, items in plan.items():
        wf_runs = [r for r in runs if r.workflow == wf]
        if not wf_runs:
            notes.append(f"plan workflow {wf!r}: no runs in the spans")
            continue
        for item, estimate in items.items():
            values = [r.plan_actual(item) for r in wf_runs]
            actual = sum(values) / len(values)
            top = max(actual, estimate)
            severity = abs(actual - estimate) / top if top > 0 else 0.0
            miss = (actual - estimate) / estimate if estimate else (math.inf if actual else 0.0)
            rows.append(
                PlanRow(
                    wf,
                    item,
                    estimate,
                    actual,
                    percentile(values, 95),
                    miss,
                    severity,
                    severity > MISS_THRESHOLD,
                )
            )
    rows.sort(key=lambda r: -r.severity)
    return rows, notes


__all__ = [
    "OTHER",
    "PLAN_ITEMS",
    "Analysis",
    "Contributor",
    "PhaseStat",
    "PlanError",
    "PlanRow",
    "RunStat",
    "SequentialReads",
    "WorkflowStat",
    "analyze",
    "compare_plan",
    "load_plan",
    "percentile",
]
