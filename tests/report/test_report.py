"""`budgetspan report`: on the demo's own spans, on hand-made spans, and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from budgetspan import attributes as A
from budgetspan.report.analysis import OTHER, Analysis, analyze
from budgetspan.report.load import SpanRec, load_files
from budgetspan.report.numbers import percentile
from budgetspan.report.plan import PlanError, load_plan
from budgetspan.report.render import render
from tests.demo.cli import run_demo
from tests.report.cli import S, report


@pytest.fixture(scope="module")
def demo_traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's own spans (latencies scaled down: the shape is what matters here)."""
    cwd = tmp_path_factory.mktemp("demo_report")
    path = cwd / "spans.jsonl"
    # The demo's first seven tickets, whose figures these tests name (the loop and the extension
    # tickets, T-1008 and T-1009, are tested in tests/demo).
    tickets = [arg for n in range(1001, 1008) for arg in ("--ticket", f"T-{n}")]
    proc = run_demo(cwd, "--traces", str(path), "--latency-scale", "0.3", *tickets, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def demo_analysis(demo_traces: Path) -> Analysis:
    spans, errors = load_files([str(demo_traces)])
    assert errors == []
    return analyze(spans)


# --- on the demo's output ---------------------------------------------------------------------


def test_phase_totals_add_up_to_run_totals(demo_analysis: Analysis) -> None:
    assert len(demo_analysis.runs) == 7
    for run in demo_analysis.runs:
        assert run.has_run_span
        phases = run.phases.values()
        assert sum(p.time_s for p in phases) == pytest.approx(run.wall_s, rel=1e-9)
        # costs per phase come from the model spans, the run's total from the ledger: they agree
        assert sum(p.cost_usd for p in phases) == pytest.approx(run.cost_usd, rel=1e-9, abs=1e-12)
        assert sum(p.model_calls for p in phases) == run.usage["model_calls"]
        assert sum(p.tool_calls for p in phases) == run.usage["tool_calls"]
        assert run.phases.get(OTHER) is None or run.phases[OTHER].calls == 0
    (wf,) = demo_analysis.workflows
    assert sum(p.time_s for p in wf.phases) == pytest.approx(wf.total_time_s, rel=1e-9)
    assert sum(p.time_share for p in wf.phases) == pytest.approx(1.0)
    assert sum(p.cost_usd for p in wf.phases) == pytest.approx(wf.total_cost_usd, rel=1e-9)
    assert sum(p.cost_share for p in wf.phases) == pytest.approx(1.0)
    for p in wf.phases:
        assert p.p50_s <= p.p95_s


def test_workflow_figures_of_the_demo(demo_analysis: Analysis) -> None:
    (wf,) = demo_analysis.workflows
    assert wf.workflow == "resolve_ticket" and wf.runs == 7
    assert wf.outcomes == {"success": 4, "escalated": 1, "budget_exhausted": 1, "failure": 1}
    assert wf.cost_per_success == pytest.approx(wf.total_cost_usd / 4)
    assert [(r.reason, r.runs) for r in wf.exhaustions] == [("max_model_calls", 1)]
    assert wf.exhaustions[0].rate == pytest.approx(1 / 7)
    assert wf.retries == 1 and wf.retries_by_call == {"execute_tool customer_history": 1}
    # drafting with gpt-4o is the largest cost; the approval wait shows up as a contributor by time
    assert wf.top_by_cost[0].name == "chat gpt-4o" and wf.top_by_cost[0].phase == "model_decision"
    assert "Waiting for approval" in [c.name for c in wf.top_by_time]


def test_sequential_reads_fire_on_sequential_lookups_only(demo_analysis: Analysis) -> None:
    (wf,) = demo_analysis.workflows
    by_id = {r.run_id: r for r in demo_analysis.runs}
    flagged = {f.run_id for f in wf.sequential_reads}
    # background tickets look things up one after another (two that got that far); interactive
    # ones run the same reads in parallel and are never flagged
    assert {by_id[r].profile for r in flagged} == {"background"}
    assert len(flagged) == 2
    assert all(by_id[r].outcome == "success" for r in flagged)
    for f in wf.sequential_reads:
        assert [r.name for r in f.reads] == [
            "execute_tool check_order_status",
            "execute_tool customer_history",
        ]
        assert f.parent == "phase tool_execution"
        assert f.reads[1].offset_s >= f.reads[0].offset_s + f.reads[0].duration_s
        assert 0 < f.saving_s == pytest.approx(min(r.duration_s for r in f.reads), rel=1e-6)


def test_plan_comparison_puts_the_wrong_estimate_first(demo_traces: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        "[workflows.resolve_ticket]\n"
        "retrievals = 1\n"
        "verification_steps = 1\n"
        "model_calls = 8          # deliberately wrong: the agent makes about 2\n"
        "approval_waits = 0.7\n"
        "\n[workflows.refund_bot]\nmodel_calls = 3\n"
    )
    code, out, err = report(str(demo_traces), "--plan", str(plan), "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    rows = data["plan"]
    assert rows[0]["item"] == "model_calls" and rows[0]["is_miss"]
    assert rows[0]["estimate"] == 8 and rows[0]["actual"] == pytest.approx(14 / 7)
    assert rows[0]["miss"] < -0.5
    ok = {r["item"]: r for r in rows[1:]}
    assert not ok["retrievals"]["is_miss"] and ok["retrievals"]["actual"] == 1
    assert not ok["approval_waits"]["is_miss"]
    assert [r["severity"] for r in rows] == sorted((r["severity"] for r in rows), reverse=True)
    assert data["plan_notes"] == ["plan workflow 'refund_bot': no runs in the spans"]

    code, text, _ = report(str(demo_traces), "--plan", str(plan))
    section = text.split("Plan versus actual (biggest misses first)", 1)[1]
    first_row = next(ln for ln in section.splitlines() if ln.startswith("resolve_ticket"))
    assert "model_calls" in first_row and first_row.rstrip().endswith("MISS")


def test_table_and_markdown_output(demo_traces: Path) -> None:
    code, text, _ = report(str(demo_traces))
    assert code == 0
    for heading in (
        "Workflow resolve_ticket",
        "Time and cost by phase",
        "Largest contributors by time",
        "Largest contributors by cost",
        "Independent reads that ran one after another",
    ):
        assert heading in text
    assert "cost per successful run $" in text
    assert "max_model_calls in 1 of 7 runs (14%)" in text
    stopped = text.split("why it stopped", 1)[1].splitlines()[2]
    assert "interactive" in stopped and "Stopped after 4 of 4 model calls" in stopped
    code, md, _ = report(str(demo_traces), "--format", "markdown")
    assert "## Workflow resolve_ticket" in md
    assert "| phase | runs | time |" in md and "|---|---:|" in md


def test_command_line_entry_point(demo_traces: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "report", str(demo_traces), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["workflows"][0]["runs"] == 7


# --- bad input ------------------------------------------------------------------------------------


def test_bad_lines_are_named_and_the_rest_is_reported(demo_traces: Path, tmp_path: Path) -> None:
    good = demo_traces.read_text().splitlines()
    bad = tmp_path / "mixed.jsonl"
    bad.write_text(
        "\n".join([good[0], "this is not json", good[1][: len(good[1]) // 2], '{"hello": 1}', *good[2:]])
        + "\n"
    )
    code, out, err = report(str(bad), str(tmp_path / "missing.jsonl"))
    assert code == 1
    assert f"{bad}:2: not valid JSON" in err
    assert f"{bad}:3: not valid JSON" in err  # a truncated line
    assert f"{bad}:4: not an OTLP trace export (no resourceSpans)" in err
    assert "missing.jsonl:0: cannot read the file" in err
    assert "4 bad lines skipped; the report covers the rest." in err
    assert "Workflow resolve_ticket" in out  # the rest of the file is still reported


def test_bad_plan_is_a_clear_usage_error(demo_traces: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text("[workflows.resolve_ticket]\nmodel_cals = 2\n")
    code, _, err = report(str(demo_traces), "--plan", str(plan))
    assert code == 2
    assert "unknown item 'model_cals'" in err and "model_calls" in err
    plan.write_text("[workflows.resolve_ticket]\nmodel_calls = 'two'\n")
    with pytest.raises(PlanError, match="not a number"):
        load_plan(str(plan))


def test_progress_bar_only_when_asked(demo_traces: Path) -> None:
    _, _, quiet = report(str(demo_traces))
    assert "Reading spans" not in quiet
    _, _, shown = report(str(demo_traces), "--progress")
    assert "Reading spans [" in shown and shown.endswith("\r")  # the bar is cleared at the end


# --- hand-made spans --------------------------------------------------------------------------


def _span(name: str, span_id: str, parent: str | None, start: float, end: float, **attrs: Any) -> SpanRec:
    base = {A.RUN_ID: "r1", A.WORKFLOW: "wf"}
    base.update({k.replace("__", "."): v for k, v in attrs.items()})
    return SpanRec("t" * 32, span_id, parent, name, int(start * S), int(end * S), base)


def _run(*children: SpanRec, end: float = 10.0) -> list[SpanRec]:
    run = _span(
        "invoke_agent wf",
        "root",
        None,
        0,
        end,
        **{"gen_ai__operation__name": "invoke_agent", "budgetspan__run__outcome": "success"},
    )
    return [run, *children]


def _read(name: str, span_id: str, parent: str, start: float, end: float) -> SpanRec:
    return _span(
        name,
        span_id,
        parent,
        start,
        end,
        gen_ai__operation__name="execute_tool",
        budgetspan__read_only=True,
        budgetspan__phase="tool_execution",
    )


def test_sequential_reads_needs_same_parent_and_no_overlap() -> None:
    phase = _span("phase tool_execution", "p1", "root", 1, 5, budgetspan__phase="tool_execution")
    sequential = analyze(
        _run(phase, _read("execute_tool a", "a", "p1", 1, 2), _read("execute_tool b", "b", "p1", 2, 3))
    )
    (f,) = sequential.workflows[0].sequential_reads
    assert [r.name for r in f.reads] == ["execute_tool a", "execute_tool b"] and f.saving_s == pytest.approx(
        1
    )

    overlapping = analyze(
        _run(phase, _read("execute_tool a", "a", "p1", 1, 2.5), _read("execute_tool b", "b", "p1", 2, 3))
    )
    assert overlapping.workflows[0].sequential_reads == []

    other_parent = _span("phase verification", "p2", "root", 5, 8, budgetspan__phase="verification")
    apart = analyze(
        _run(
            phase,
            other_parent,
            _read("execute_tool a", "a", "p1", 1, 2),
            _read("execute_tool b", "b", "p2", 6, 7),
        )
    )
    assert apart.workflows[0].sequential_reads == []

    write = _span("execute_tool send", "w", "p1", 3, 4, gen_ai__operation__name="execute_tool")
    not_read_only = analyze(_run(phase, _read("execute_tool a", "a", "p1", 1, 2), write))
    assert not_read_only.workflows[0].sequential_reads == []

    # two parallel reads, then a third after both: one finding, saving the third's duration
    three = analyze(
        _run(
            phase,
            _read("execute_tool a", "a", "p1", 1, 2),
            _read("execute_tool b", "b", "p1", 1.2, 2.5),
            _read("execute_tool c", "c", "p1", 3, 3.5),
        )
    )
    (f,) = three.workflows[0].sequential_reads
    assert f.saving_s == pytest.approx(0.5)


def test_phase_time_split_innermost_wins_overlaps_split_rest_is_other() -> None:
    spans = _run(
        _span("phase context_assembly", "p1", "root", 0, 4, budgetspan__phase="context_assembly"),
        _span("phase verification", "p2", "p1", 1, 2, budgetspan__phase="verification"),  # nested: wins 1..2
        # a call outside any phase block, overlapping nothing: its own phase
        _span(
            "chat m",
            "c1",
            "root",
            5,
            7,
            gen_ai__operation__name="chat",
            budgetspan__phase="model_decision",
            gen_ai__usage__cost=0.25,
        ),
        # a tool outside any phase overlapping the chat: 6..7 is split between the two
        _span(
            "execute_tool x",
            "c2",
            "root",
            6,
            8,
            gen_ai__operation__name="execute_tool",
            budgetspan__phase="tool_execution",
        ),
    )
    (run,) = analyze(spans).runs
    times = {p: st.time_s for p, st in run.phases.items()}
    assert times == pytest.approx(
        {
            "context_assembly": 3.0,
            "verification": 1.0,
            "model_decision": 1.5,
            "tool_execution": 1.5,
            OTHER: 3.0,
        }
    )
    assert sum(times.values()) == pytest.approx(run.wall_s) == pytest.approx(10.0)
    assert run.cost_usd == pytest.approx(0.25)  # no ledger figure: the spans' sum
    assert run.phases["model_decision"].cost_usd == pytest.approx(0.25)


def test_foreign_spans_in_collector_format_are_priced_and_implicit_runs_grouped(tmp_path: Path) -> None:
    """A line as the Collector's file exporter writes it, from another instrumentation (no cost)."""
    line = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "opentelemetry.instrumentation.openai.v1", "version": "0.40.0"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "chat gpt-4o-mini",
                                "kind": 3,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                    {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1000000"}},
                                    {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 0}},
                                    {"key": "budgetspan.run.id", "value": {"stringValue": "implicit-1"}},
                                    {"key": "budgetspan.workflow", "value": {"stringValue": "agent"}},
                                    {"key": "budgetspan.phase", "value": {"stringValue": "model_decision"}},
                                ],
                                "status": {},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(line) + "\n")
    spans, errors = load_files([str(path)])
    assert errors == []
    a = analyze(spans)
    (run,) = a.runs
    assert not run.has_run_span and run.outcome == "unknown" and run.wall_s == pytest.approx(1.0)
    assert run.model_calls == 1
    assert run.cost_usd == pytest.approx(0.15)  # 1M input tokens of gpt-4o-mini at $0.15 / M
    assert a.workflows[0].cost_per_success is None
    assert "cost per successful run n/a (no successful runs)" in render(a)


def test_same_spans_given_twice_are_counted_once(demo_traces: Path) -> None:
    once, _ = load_files([str(demo_traces)])
    twice, _ = load_files([str(demo_traces), str(demo_traces)])
    assert len(once) > 0  # a loader that read nothing would make the comparison trivial
    assert len(once) == len(twice)
    ids = [(s.trace_id, s.span_id) for s in twice]
    assert len(set(ids)) == len(ids) and set(ids) == {(s.trace_id, s.span_id) for s in once}


def test_percentile_interpolates() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([3.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(x) for x in range(1, 101)], 95) == pytest.approx(95.05)


def test_many_bad_lines_are_counted_not_all_listed(demo_traces: Path, tmp_path: Path) -> None:
    path = tmp_path / "noisy.jsonl"
    path.write_text(demo_traces.read_text() + "garbage\n" * 30)
    code, out, err = report(str(path))
    assert code == 1
    assert err.count("not valid JSON") == 20
    assert "... and 10 more" in err and "30 bad lines skipped" in err
    assert "7 runs" in out


def test_phase_blocks_of_an_implicit_run_count_for_that_run() -> None:
    """No declared run: phase spans carry no run id, the calls do (set by budgetspan)."""
    spans = [
        SpanRec("t" * 32, "root", None, "GET /ticket", 0, 10 * S, {}),
        SpanRec("t" * 32, "p1", "root", "phase verification", 2 * S, 6 * S, {A.PHASE: "verification"}),
        _span(
            "chat m",
            "c1",
            "p1",
            3,
            5,
            gen_ai__operation__name="chat",
            budgetspan__phase="verification",
            gen_ai__usage__cost=0.5,
        ),
        SpanRec(
            "t" * 32, "p2", "root", "phase approval", 6 * S, 8 * S, {A.PHASE: "approval"}
        ),  # no calls: not ours
    ]
    (run,) = analyze(spans).runs
    assert run.wall_s == pytest.approx(4.0)  # the window of what the run's spans cover
    assert {p: st.time_s for p, st in run.phases.items()} == pytest.approx({"verification": 4.0})
    assert run.verification_steps == 1 and run.cost_usd == pytest.approx(0.5)
