"""The report at scale: phase splitting does O(n log n) work, and runs are streamed with memory
bounded by the runs in flight (no timing here: speed is measured in bench/bench_report.py)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetspan import attributes as A
from budgetspan.report.analysis import Analysis, analyze, analyze_stream
from budgetspan.report.assemble import RunAssembler
from budgetspan.report.otlp import SpanRec
from budgetspan.report.sweep import OTHER, Interval, phase_times
from tests.report.cli import report

S = 1_000_000_000

# --- phase splitting ---------------------------------------------------------------------------


def reference_phase_times(start: int, end: int, intervals: list[Interval]) -> dict[str, float]:
    """The previous implementation (quadratic in overlapping intervals), kept as the reference."""
    out: dict[str, float] = defaultdict(float)
    if end <= start:
        return {}
    marks = []
    for i, (s, e, _d, _p) in enumerate(intervals):
        s, e = max(s, start), min(e, end)
        if e > s:
            marks += [(s, 1, i), (e, -1, i)]
    marks.sort(key=lambda m: (m[0], m[1]))
    active: set[int] = set()
    t = start

    def spread(ns: int) -> None:
        if not active:
            out[OTHER] += ns
            return
        depth = max(intervals[i][2] for i in active)
        phases = {intervals[i][3] for i in active if intervals[i][2] == depth}
        for p in phases:
            out[p] += ns / len(phases)

    for when, delta, i in marks:
        if when > t:
            spread(when - t)
            t = when
        if delta > 0:
            active.add(i)
        else:
            active.discard(i)
    if end > t:
        spread(end - t)
    return {p: ns / 1e9 for p, ns in out.items()}


interval = st.tuples(
    st.integers(0, 60), st.integers(0, 60), st.integers(1, 4), st.sampled_from(["a", "b", "c", "d"])
).map(lambda t: (min(t[0], t[1]) * S, max(t[0], t[1]) * S, t[2], t[3]))


@settings(max_examples=400, deadline=None)
@given(st.lists(interval, max_size=25), st.integers(0, 20), st.integers(30, 70))
def test_sweep_gives_the_previous_results(intervals: list[Interval], start: int, end: int) -> None:
    got = phase_times(start * S, end * S, intervals)
    want = reference_phase_times(start * S, end * S, intervals)
    assert got.keys() == want.keys()
    for p in want:
        assert got[p] == pytest.approx(want[p], rel=1e-9, abs=1e-12)
    assert sum(got.values()) == pytest.approx((end - start), rel=1e-9)


class Counted:
    """Counts every comparison and hash made on the values it wraps: the work of an algorithm,
    measured without a clock."""

    ops = 0


class CInt(int):
    def __lt__(self, o: int) -> bool:
        Counted.ops += 1
        return int(self) < int(o)

    def __le__(self, o: int) -> bool:
        Counted.ops += 1
        return int(self) <= int(o)

    def __gt__(self, o: int) -> bool:
        Counted.ops += 1
        return int(self) > int(o)

    def __ge__(self, o: int) -> bool:
        Counted.ops += 1
        return int(self) >= int(o)

    def __eq__(self, o: object) -> bool:
        Counted.ops += 1
        return int(self) == o

    def __hash__(self) -> int:
        Counted.ops += 1
        return int.__hash__(self)


class CStr(str):
    def __eq__(self, o: object) -> bool:
        Counted.ops += 1
        return str.__eq__(self, o)

    def __hash__(self) -> int:
        Counted.ops += 1
        return str.__hash__(self)


def overlapping(n: int) -> list[Interval]:
    """n calls that all overlap (each starts before the previous ends), at two depths, 3 phases."""
    phases = [CStr(p) for p in ("tool_execution", "verification", "context_assembly")]
    out: list[Interval] = [
        (CInt(i * 1000), CInt(10 * S + i * 1000), CInt(1 + i % 2), phases[i % 3]) for i in range(n)
    ]
    random.Random(n).shuffle(out)  # in no particular order: sorting them is part of the work
    return out


def work(n: int, algorithm: Any = phase_times) -> int:
    intervals = overlapping(n)
    Counted.ops = 0
    times = algorithm(0, 20 * S, intervals)
    assert sum(times.values()) == pytest.approx(20.0)
    return Counted.ops


def test_phase_splitting_work_grows_as_n_log_n() -> None:
    w1, w4, w16 = work(500), work(2_000), work(8_000)
    # n log n: x4 calls -> about x4.8 work; quadratic would be x16
    assert w4 / w1 < 4 * 1.5 and w16 / w4 < 4 * 1.5, (w1, w4, w16)
    assert w16 < 40 * 8_000 * 13  # a constant number of operations per endpoint per level of sort
    # the measure catches the quadratic algorithm it replaced
    r1, r4 = work(100, reference_phase_times), work(400, reference_phase_times)
    assert r4 / r1 > 10


def test_32k_overlapping_calls_in_one_run_are_split_exactly() -> None:
    n = 32_000
    base = {A.RUN_ID: "r", A.WORKFLOW: "wf"}
    spans = [
        SpanRec(
            "t" * 32,
            "root",
            None,
            "invoke_agent wf",
            0,
            20 * S,
            {**base, A.GEN_AI_OPERATION_NAME: "invoke_agent"},
        )
    ]
    phases = ("tool_execution", "verification")
    for i in range(n):
        attrs = {**base, A.GEN_AI_OPERATION_NAME: "execute_tool", A.PHASE: phases[i % 2]}
        spans.append(SpanRec("t" * 32, f"c{i}", "root", f"execute_tool t{i % 2}", S + i, 11 * S + i, attrs))
    (run,) = analyze(spans).runs
    times = {p: st.time_s for p, st in run.phases.items()}
    # from the 1st start to the last end the calls cover 10 s + n ns; both phases are always
    # active there (but for the first and last ns), so they split it evenly
    assert times["tool_execution"] == pytest.approx(times["verification"], rel=1e-6)
    assert times["tool_execution"] + times["verification"] == pytest.approx(10.0, rel=1e-5)
    assert times[OTHER] == pytest.approx(10.0, rel=1e-5)
    assert run.tool_calls == n


# --- streaming -------------------------------------------------------------------------------


def run_spans(k: int, calls: int = 3, workflow: str = "wf") -> list[SpanRec]:
    """Run k as an exporter writes it: calls, then their phase block, then the run span last."""
    tid, rid = f"{k:032x}", f"run{k}"
    base = {A.RUN_ID: rid, A.WORKFLOW: workflow}
    t0 = k * 100 * S
    out = [
        SpanRec(
            tid,
            f"c{i}",
            "p",
            f"execute_tool t{i}",
            t0 + (1 + i) * S,
            t0 + (2 + i) * S,
            {**base, A.GEN_AI_OPERATION_NAME: "execute_tool", A.PHASE: "tool_execution", A.READ_ONLY: True},
        )
        for i in range(calls)
    ]
    out.append(
        SpanRec(
            tid,
            "p",
            "root",
            "phase tool_execution",
            t0 + S,
            t0 + (2 + calls) * S,
            {**base, A.PHASE: "tool_execution"},
        )
    )
    out.append(
        SpanRec(
            tid,
            "root",
            None,
            f"invoke_agent {workflow}",
            t0,
            t0 + (4 + calls) * S,
            {**base, A.GEN_AI_OPERATION_NAME: "invoke_agent", A.RUN_OUTCOME: "success"},
        )
    )
    return out


def interleaved(runs: int, concurrent: int = 8) -> list[list[SpanRec]]:
    """Lines as many agents appending to one file write them: spans of `concurrent` runs mixed."""
    lines = []
    for first in range(0, runs, concurrent):
        group = [run_spans(k) for k in range(first, min(runs, first + concurrent))]
        for i in range(max(len(g) for g in group)):
            lines.append([g[i] for g in group if i < len(g)])
    return lines


def otlp_json(spans: list[SpanRec]) -> str:
    """One OTLP/JSON line holding ``spans``."""
    out = [
        {
            "traceId": s.trace_id,
            "spanId": s.span_id,
            **({"parentSpanId": s.parent_id} if s.parent_id else {}),
            "name": s.name,
            "startTimeUnixNano": str(s.start_ns),
            "endTimeUnixNano": str(s.end_ns),
            "attributes": [
                {"key": k, "value": {"boolValue": v} if isinstance(v, bool) else {"stringValue": v}}
                for k, v in s.attrs.items()
            ],
        }
        for s in spans
    ]
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": out}]}]})


def write_lines(path: Path, lines: list[list[SpanRec]]) -> None:
    path.write_text("\n".join(map(otlp_json, lines)) + "\n")


def figures(a: Analysis) -> Any:
    return json.loads(json.dumps([(r.run_id, r.wall_s, r.tool_calls, sorted(r.phases)) for r in a.runs])), [
        (
            w.workflow,
            w.runs,
            w.total_time_s,
            [(c.name, c.count) for c in w.top_by_time],
            len(w.sequential_reads),
        )
        for w in a.workflows
    ]


class Peak(RunAssembler):
    peak = 0

    def add(self, span: SpanRec) -> None:
        super().add(span)
        Peak.peak = max(Peak.peak, self.in_flight)


def test_streamed_report_equals_the_in_memory_one_and_holds_only_runs_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import budgetspan.report.analysis as analysis

    monkeypatch.setattr(analysis, "RunAssembler", Peak)
    peaks = {}
    for runs in (40, 400):
        lines = interleaved(runs)
        whole = analyze([s for ln in lines for s in ln])
        Peak.peak = 0
        streamed = analyze_stream(lines, window=20, max_in_flight=1_000)
        assert figures(streamed) == figures(whole)
        assert len(streamed.runs) == runs and streamed.early_runs == 0 and streamed.late_spans == 0
        peaks[runs] = Peak.peak
    # held: the 8 runs being written and the window, whatever the length of the file
    assert peaks[40] == peaks[400] <= 8 * 5 + 20


def test_past_the_bound_the_oldest_run_is_reported_early_and_its_late_spans_are_counted() -> None:
    big = run_spans(0, calls=50)
    a = analyze_stream([big[:30], big[30:]], window=5, max_in_flight=20)
    assert a.early_runs >= 1 and a.late_spans > 0
    assert sum(r.tool_calls for r in a.runs) < 50  # what was read before the bound, not all
    # with room for the run, nothing is early or late
    b = analyze_stream([big[:30], big[30:]], window=5, max_in_flight=100)
    assert (b.early_runs, b.late_spans, b.runs[0].tool_calls) == (0, 0, 50)


def test_a_span_later_than_the_window_is_not_counted_and_said_so() -> None:
    r0, r1 = run_spans(0), run_spans(1)
    late = r0.pop(0)  # a call of run 0 written after run 1 entirely
    a = analyze_stream([r0, r1, [late]], window=2, max_in_flight=1_000)
    assert a.late_spans == 1
    assert {r.run_id: r.tool_calls for r in a.runs} == {"run0": 2, "run1": 3}
    within = analyze_stream([r0, [late], r1], window=2, max_in_flight=1_000)
    assert within.late_spans == 0 and {r.run_id: r.tool_calls for r in within.runs}["run0"] == 3


def test_an_implicit_run_is_finished_after_its_traces_root_and_adopts_its_phase_blocks() -> None:
    tid = "t" * 32
    call_attrs = {
        A.RUN_ID: "implicit",
        A.WORKFLOW: "wf",
        A.GEN_AI_OPERATION_NAME: "chat",
        A.PHASE: "verification",
    }
    spans = [
        SpanRec(tid, "c1", "p1", "chat m", 3 * S, 5 * S, {**call_attrs, A.GEN_AI_USAGE_COST: 0.5}),
        SpanRec(tid, "p1", "root", "phase verification", 2 * S, 6 * S, {A.PHASE: "verification"}),
        SpanRec(tid, "root", None, "GET /ticket", 0, 10 * S, {}),
    ]
    filler = [run_spans(k) for k in range(1, 4)]
    a = analyze_stream([spans, *filler], window=3, max_in_flight=1_000)
    implicit = next(r for r in a.runs if r.run_id == "implicit")
    assert implicit.wall_s == pytest.approx(4.0) and implicit.verification_steps == 1
    assert {p: st.time_s for p, st in implicit.phases.items()} == pytest.approx({"verification": 4.0})


def test_the_same_file_twice_is_counted_once_and_the_repeat_is_said(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_lines(path, interleaved(30))
    outputs = []
    for files in ([path], [path, path]):
        code, out, err = report(*map(str, files), "--format", "json", "--max-spans-in-flight", "100")
        assert code == 0
        outputs.append((json.loads(out), err))
    (once, quiet), (twice, note) = outputs
    assert [w["runs"] for w in twice["workflows"]] == [w["runs"] for w in once["workflows"]] == [30]
    assert twice["workflows"] == once["workflows"]
    assert (
        quiet == ""
        and "of runs already reported (read again, or written long after their run ended) not counted" in note
    )
