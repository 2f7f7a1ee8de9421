"""One run's figures from its spans: phases, calls, cost, sequential reads.

A run's wall time is split over phases so that the phase times add up to the run's time exactly:
each instant goes to the innermost phase span (or phase-less call) covering it, split evenly when
several overlap, and to ``other`` when nothing does. Costs and call counts come from the call
spans' own ``budgetspan.phase``.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from typing import Any

from budgetspan import attributes as A
from budgetspan.report.numbers import number
from budgetspan.report.otlp import SpanRec
from budgetspan.report.results import PhaseStat, Read, RunStat, SequentialReads
from budgetspan.report.sweep import OTHER, Interval, phase_times
from budgetspan.report.tree import SpanIndex
from budgetspan.runs.phases import PHASES

MODEL_OPS = A.MODEL_OPERATIONS
CALL_OPS = MODEL_OPS | {A.OP_EXECUTE_TOOL, A.OP_RETRIEVAL}
PHASE_ORDER = (*PHASES, OTHER)


#: A recorded cost above this (a trillion dollars per call) is taken for a broken value, like a
#: negative one: the call counts as unpriced rather than turning every sum into $inf.
MOST_COST_USD = 1e12


def call_cost(span: SpanRec) -> float | None:
    """The span's recorded cost; for foreign spans without one, priced from their tokens."""
    cost = number(span.attrs.get(A.GEN_AI_USAGE_COST))
    if cost is not None and not 0.0 <= cost <= MOST_COST_USD:  # negative, NaN or absurd: no price
        return None
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


_KEY_NAMES: dict[str, tuple[bool, str] | None] = {}  # attribute key -> (is a limit, name) or None
_MAX_KEY_NAMES = 4096  # a file of made-up keys does not grow it past this
# The report keeps every run's figures (68,697 runs in the 1M-span bench file): integral figures
# (counts, token numbers) share one float object each, and runs with the same limits one dict.
_SMALL_FLOATS = tuple(float(i) for i in range(1024))
_LIMIT_SETS: dict[tuple[tuple[str, float], ...], dict[str, float]] = {}
_MAX_LIMIT_SETS = 1024


def _limits_and_usage(r: RunStat, attrs: dict[str, Any]) -> None:
    """The run span's ``budgetspan.limit.*`` and ``budgetspan.usage.*`` numbers into ``r``. What
    each key means (prefix test, name cut out and interned) is worked out once per distinct key.

    Measured gain: see ``otlp._prefixed_numbers`` (the two together; ~40 keys per run span, each
    tested against both prefixes, cut and interned, and its value read by ``number``)."""
    names = _KEY_NAMES
    limits, usage = r.limits, r.usage
    for key, value in attrs.items():
        known = names.get(key)  # one lookup for a figure's key (None: not a figure, or not seen)
        if known is None:
            if key in names:
                continue
            known = _key_name(key)
            if len(names) < _MAX_KEY_NAMES:
                names[key] = known
            if known is None:
                continue
        if type(value) is int:
            num = _SMALL_FLOATS[value] if 0 <= value < 1024 else float(value)
        elif type(value) is float and math.isfinite(value):
            num = value
        else:
            continue  # bools, text, NaN and infinities are not figures (as ``number``)
        if known[0]:
            limits[known[1]] = num
        else:
            usage[known[1]] = num
    if limits:
        r.limits = _shared_limits(limits)


def _shared_limits(limits: dict[str, float]) -> dict[str, float]:
    """One dict for all runs with these limits (a budget profile's runs): read, never changed.

    Measured gain, with ``_SMALL_FLOATS``: the report's peak RSS on the 1M-span bench file (68,697
    runs, ``/usr/bin/time``) 280 MB -> 248 MB; the runs' figures kept, 2.2 kB a run (tracemalloc,
    100k file)."""
    key = tuple(limits.items())
    found = _LIMIT_SETS.get(key)
    if found is None:
        if len(_LIMIT_SETS) >= _MAX_LIMIT_SETS:
            return limits
        found = _LIMIT_SETS[key] = limits
    return found


def _key_name(key: str) -> tuple[bool, str] | None:
    if key.startswith(A.LIMIT_PREFIX):
        return True, sys.intern(key[len(A.LIMIT_PREFIX) :])
    if key.startswith(A.USAGE_PREFIX):
        return False, sys.intern(key[len(A.USAGE_PREFIX) :])
    return None


def _run_span_figures(r: RunStat, run_span: SpanRec) -> None:
    r.has_run_span = True
    r.start_ns, r.end_ns = run_span.start_ns, run_span.end_ns
    a = run_span.attrs
    r.workflow = sys.intern(str(a.get(A.WORKFLOW, r.workflow)))
    r.profile = sys.intern(str(a[A.BUDGET_PROFILE])) if A.BUDGET_PROFILE in a else None
    r.outcome = sys.intern(str(a.get(A.RUN_OUTCOME, "unknown")))
    r.reason = sys.intern(str(a[A.EXHAUSTED_REASON])) if A.EXHAUSTED_REASON in a else None
    r.explanation = str(a[A.EXHAUSTED_EXPLANATION]) if A.EXHAUSTED_EXPLANATION in a else None
    r.tenant = sys.intern(str(a[A.TENANT_ID])) if A.TENANT_ID in a else None
    r.user = str(a[A.USER_ID]) if A.USER_ID in a else None
    r.parent_id = str(a[A.RUN_PARENT_ID]) if A.RUN_PARENT_ID in a else None
    _limits_and_usage(r, a)
    for name, attrs in run_span.events:
        if name == A.EVENT_WOULD_EXHAUST and A.EXHAUSTED_REASON in attrs:
            r.would_exhaust.append(str(attrs[A.EXHAUSTED_REASON]))


def _classify(spans: list[SpanRec]) -> tuple[SpanRec | None, str, list[SpanRec], list[SpanRec]]:
    """(run span, workflow, calls, phase blocks), in one pass."""
    run_span: SpanRec | None = None
    workflow: str | None = None
    calls: list[SpanRec] = []
    phases: list[SpanRec] = []
    for s in spans:
        op = s.operation
        if op in CALL_OPS:
            calls.append(s)
        elif s.is_phase:
            phases.append(s)
        elif op == A.OP_INVOKE_AGENT and run_span is None:
            run_span = s
        if workflow is None:
            w = s.attrs.get(A.WORKFLOW)
            if w is not None:
                workflow = str(w)
    return run_span, workflow or "default", calls, phases


def _intervals(
    r: RunStat, phase_spans: list[SpanRec], calls: list[SpanRec], index: SpanIndex
) -> list[Interval]:
    """Phase blocks (at their nesting depth) and calls outside any phase block (at depth 1)."""
    intervals: list[Interval] = []
    for s in phase_spans:
        phase = str(s.attrs[A.PHASE])
        intervals.append((s.start_ns, s.end_ns, index.phase_depth(s) + 1, phase))
        if phase == "verification":
            r.verification_steps += 1
        elif phase == "approval":
            r.approval_waits += 1
    for s in calls:
        if not index.under_phase(s):
            intervals.append((s.start_ns, s.end_ns, 1, str(s.attrs.get(A.PHASE, OTHER))))
    return intervals


def _count_calls(r: RunStat, calls: list[SpanRec], phases: dict[str, PhaseStat]) -> list[float | None]:
    """Calls and their cost, per phase and for the run; returns each call's cost (None: unknown
    or not a model call)."""
    costs: list[float | None] = []
    for s in calls:
        a = s.attrs
        phase = a.get(A.PHASE, OTHER)
        st = phases[phase if type(phase) is str else str(phase)]
        if A.RETRIES in a:
            r.retries += int(number(a[A.RETRIES]) or 0)
        cost = None
        if s.operation in MODEL_OPS:
            st.model_calls += 1
            r.model_calls += 1
            cost = call_cost(s)
            if cost is None:
                r.unpriced_calls += 1 if not a.get(A.USAGE_UNREPORTED) else 0
            else:
                st.cost_usd += cost
        elif s.operation == A.OP_EXECUTE_TOOL:
            st.tool_calls += 1
            r.tool_calls += 1
        else:
            st.retrievals += 1
            r.retrievals += 1
        costs.append(cost)
    return costs


def build_run(
    run_id: str, spans: list[SpanRec], index: SpanIndex
) -> tuple[RunStat, list[SpanRec], list[float | None]]:
    """A run's figures from its spans (``index`` finds their ancestors); returns its calls and
    their costs too."""
    run_span, workflow, calls, phase_spans = _classify(spans)
    r = RunStat(run_id=run_id, workflow=sys.intern(workflow))
    if run_span is not None:
        _run_span_figures(r, run_span)
    else:
        r.start_ns = min(s.start_ns for s in spans)
        r.end_ns = max(s.end_ns for s in spans)
    phases: dict[str, PhaseStat] = defaultdict(PhaseStat)
    for phase, secs in phase_times(r.start_ns, r.end_ns, _intervals(r, phase_spans, calls, index)).items():
        phases[phase].time_s += secs
    costs = _count_calls(r, calls, phases)
    ledger_cost = r.usage.get("cost_usd")
    r.cost_usd = ledger_cost if ledger_cost is not None else sum((c for c in costs if c is not None), 0.0)
    if ledger_cost is not None and run_span is not None:
        # The ledger's figure is the run's at its end; a call that ended after it (a stream read
        # after the block, work that outlived it) spent after it, in the tenant's window too.
        ended = r.end_ns
        r.late = tuple((s.end_ns, c) for s, c in zip(calls, costs, strict=True) if c and s.end_ns > ended)
        r.cost_usd += sum(c for _, c in r.late)
    r.phases = {sys.intern(p): st for p, st in phases.items()}  # one copy of each name for all runs
    return r, calls, costs


def sequential_reads(run: RunStat, calls: list[SpanRec], index: SpanIndex) -> list[SequentialReads]:
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
        parent = index.get(reads[0].trace_id, parent_id)
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
