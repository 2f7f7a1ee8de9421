"""``budgetspan report``: where time and money went, per workflow, as a table, Markdown or JSON.

Reads OTLP JSON lines (``BUDGETSPAN_TRACES_FILE``, or the Collector's file exporter) as a stream:
memory holds the runs in flight (see ``assemble``), not the file. Bad lines are named with their
line number on stderr and skipped; the rest is still reported, and the exit status is 1 so
scripts notice. Text from spans is printed with control characters escaped (``text.safe``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

from budgetspan.config_numbers import count_option
from budgetspan.report import native, routing_cli
from budgetspan.report.bounds import MAX_SPANS_IN_FLIGHT, WINDOW
from budgetspan.report.by_scope import BY as SCOPE_BY
from budgetspan.report.by_scope import render_by
from budgetspan.report.jsondoc import json_chunks, write_json
from budgetspan.report.plan import PLAN_ITEMS, PlanError, load_plan
from budgetspan.report.results import Analysis, Contributor, RunStat, Savings, WorkflowStat
from budgetspan.report.text import safe
from budgetspan.report.textfmt import Out as _Out
from budgetspan.report.textfmt import Table, money, num, pct, secs

if TYPE_CHECKING:
    from budgetspan.report.load import LoadError, SpanReader
    from budgetspan.report.runs_detail import DetailCollector

FORMATS = ("table", "markdown", "json")
MAX_ERRORS_SHOWN = 20  # bad lines named one by one; the rest are counted
MAX_RUNS_LISTED = 5  # exhausted runs listed with their explanation


# --- sections ---------------------------------------------------------------------------------


def outcome_summary(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{n} {o}" for o, n in outcomes.items())


def _contributors_table(rows: list[Contributor]) -> Table:
    t = Table(
        ["contributor", "phase", "count", "time", "share of time", "cost", "share of cost"],
        [False, False, True, True, True, True, True],
    )
    for c in rows:
        t.add(
            c.name, c.phase, c.count, secs(c.time_s), pct(c.time_share), money(c.cost_usd), pct(c.cost_share)
        )
    return t


def _workflow(out: _Out, wf: WorkflowStat, runs: Sequence[RunStat] = ()) -> None:
    out.heading(f"Workflow {wf.workflow}", 2)
    out.text(
        f"{wf.runs} run{'s' if wf.runs != 1 else ''} ({outcome_summary(wf.outcomes)}); "
        f"total {money(wf.total_cost_usd)} and {secs(wf.total_time_s)}; "
        f"cost per successful run {money(wf.cost_per_success)}"
        + (" (no successful runs)" if wf.cost_per_success is None else "")
        + "."
    )
    t = Table(["phase", "runs", "time", "share", "p50", "p95", "cost", "share of cost", "calls"])
    for p in wf.phases:
        t.add(
            p.phase,
            p.runs,
            secs(p.time_s),
            pct(p.time_share),
            secs(p.p50_s),
            secs(p.p95_s),
            money(p.cost_usd),
            pct(p.cost_share),
            p.calls,
        )
    out.heading("Time and cost by phase", 3)
    out.table(t)
    if wf.top_by_time:
        out.heading("Largest contributors by time", 3)
        out.table(_contributors_table(wf.top_by_time))
    if wf.top_by_cost:
        out.heading("Largest contributors by cost", 3)
        out.table(_contributors_table(wf.top_by_cost))
    _budgets(out, wf, runs)
    _sequential(out, wf)


def _budgets(out: _Out, wf: WorkflowStat, runs: Sequence[RunStat]) -> None:
    out.heading("Budgets and retries", 3)
    if wf.exhaustions:
        out.text(
            "Budget exhausted: "
            + "; ".join(f"{r.reason} in {r.runs} of {wf.runs} runs ({pct(r.rate)})" for r in wf.exhaustions)
            + "."
        )
        if runs:
            stopped = [r for r in runs if r.workflow == wf.workflow and r.outcome == "budget_exhausted"]
            t = Table(["run", "profile", "why it stopped"], [False, False, False])
            for r in stopped[:MAX_RUNS_LISTED]:
                t.add(r.run_id[:8], r.profile or "-", r.explanation or r.reason or "?")
            out.table(t)
            if len(stopped) > MAX_RUNS_LISTED:
                out.text(f"... and {len(stopped) - MAX_RUNS_LISTED} more.")
    else:
        out.text("Budget exhausted: never.")
    if wf.would_exhaust:
        out.text(
            "Would have been exhausted (observe mode): "
            + "; ".join(f"{r.reason} in {r.runs} of {wf.runs} runs ({pct(r.rate)})" for r in wf.would_exhaust)
            + "."
        )
    if wf.retries:
        out.text(
            f"Retries: {wf.retries} ("
            + ", ".join(f"{name} {n}" for name, n in wf.retries_by_call.items())
            + ")."
        )
    else:
        out.text("Retries: none.")
    if wf.unpriced_calls:
        out.text(f"Unpriced model calls: {wf.unpriced_calls} (their cost is unknown, not counted as $0).")


def _sequential(out: _Out, wf: WorkflowStat) -> None:
    out.heading("Independent reads that ran one after another", 3)
    if not wf.sequential_reads:
        out.text("None: read-only calls under the same parent overlapped in time.")
    else:
        flagged = len({f.run_id for f in wf.sequential_reads})
        saving = sum(f.saving_s for f in wf.sequential_reads)
        out.text(
            f"{flagged} of {wf.runs} runs made read-only calls one after another under the same parent; "
            f"running them in parallel could save up to {secs(saving)} in total."
        )
        t = Table(
            ["run", "under", "reads in order (start +offset, duration)", "could save"],
            [False, False, False, True],
        )
        for f in wf.sequential_reads:
            reads = " then ".join(f"{r.name} (+{secs(r.offset_s)}, {secs(r.duration_s)})" for r in f.reads)
            t.add(f.run_id[:8], f.parent, reads, secs(f.saving_s))
        out.table(t)


def _plan(out: _Out, a: Analysis) -> None:
    out.heading("Plan versus actual (biggest misses first)", 2)
    t = Table(
        ["workflow", "item", "estimate", "actual (mean)", "actual (p95)", "miss", "verdict"],
        [False, False, True, True, True, True, False],
    )
    for r in a.plan:
        miss = "n/a" if math.isinf(r.miss) else f"{r.miss * 100:+.0f}%"
        fmt = {"cost_usd": money, "duration_s": secs}.get(r.item, num)
        t.add(
            r.workflow,
            r.item,
            fmt(r.estimate),
            fmt(r.actual),
            fmt(r.actual_p95),
            miss,
            "MISS" if r.is_miss else "ok",
        )
    out.table(t)
    for note in a.plan_notes:
        out.text(note)


def runs_table(runs: Sequence[RunStat], *, label: dict[str, str] | None = None) -> Table:
    """One row per run: time, cost, calls, outcome and the budget closest to its limit."""
    t = Table(
        ["run", "profile", "outcome", "time", "cost", "model", "tools", "retrievals", "budget used"],
        [False, False, False, True, True, True, True, True, False],
    )
    for r in runs:
        used = r.budget_used()
        t.add(
            (label or {}).get(r.run_id, r.run_id[:8]),
            r.profile or "-",
            r.outcome,
            secs(r.wall_s),
            money(r.cost_usd),
            r.model_calls,
            r.tool_calls,
            r.retrievals,
            f"{pct(used[1])} of {used[0]}" if used else "-",
        )
    return t


def render(a: Analysis, fmt: str = "table") -> str:
    if fmt == "json":
        return "".join(json_chunks(a))
    out = _Out(markdown=fmt == "markdown")
    out.heading("budgetspan report", 1)
    out.text(
        f"{a.spans:,} spans, {len(a.runs)} runs, {len(a.workflows)} workflow{'s' if len(a.workflows) != 1 else ''}."
    )
    for wf in a.workflows:
        _workflow(out, wf, a.runs)
    if a.savings is not None:
        _savings(out, a.savings)
    if a.plan or a.plan_notes:
        _plan(out, a)
    return out.render()


def _savings(out: _Out, s: Savings) -> None:
    """What the cache saved (``report.savings``): only when anything was cached or prompt-cached."""
    if s.cache:
        out.heading("What the cache saved", 2)
        t = Table(["workflow", "cached", "hits", "misses", "not cached", "hit rate", "saved", "time saved"])
        for c in s.cache:
            saved = money(c.saved_usd) + (f" (+{c.unknown_cost_hits} unknown)" if c.unknown_cost_hits else "")
            t.add(
                c.workflow,
                c.name,
                c.hits,
                c.misses,
                c.skipped + c.unavailable,
                pct(c.hit_rate),
                saved,
                secs(c.saved_s),
            )
        out.table(t)
    if s.prompt_cache:
        out.heading("Provider prompt caching", 2)
        t = Table(["workflow", "calls", "cache-read share", "read savings", "write premium", "net saved"])
        for p in s.prompt_cache:
            net = money(p.net_usd) + (f" (+{p.unpriced_calls} unpriced)" if p.unpriced_calls else "")
            t.add(p.workflow, p.calls, pct(p.cache_read_share), money(p.saved_usd), money(p.premium_usd), net)
        out.table(t)


# --- command ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="OTLP JSON lines (BUDGETSPAN_TRACES_FILE output); - reads standard input",
    )
    p.add_argument(
        "--plan",
        metavar="PLAN.toml",
        help="per-run estimates to compare against: [workflows.NAME] with any of " + ", ".join(PLAN_ITEMS),
    )
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--top", type=count_option(1), default=5, help="how many largest contributors to list")
    p.add_argument(
        "--progress", action="store_true", help="show a progress bar even when stderr is not a terminal"
    )
    p.add_argument(
        "--max-spans-in-flight",
        type=count_option(1),
        default=MAX_SPANS_IN_FLIGHT,
        metavar="N",
        help="hold at most N spans of runs not yet complete; past it, the oldest runs are reported "
        f"with what was read of them (default {MAX_SPANS_IN_FLIGHT:,})",
    )
    routing_cli.add_arguments(p)  # the routing evaluation and the HTML report


def run_report(
    args: argparse.Namespace,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    *,
    finish: Callable[[int], object] | None = None,
) -> int:
    """The report; its exit status. ``finish`` (the command line's ``cli.end_process``) is called
    with that status while the analysis is still held: it may end the process without freeing it."""
    # The cyclic collector stays off until the analysis is freed: back on while the analysis is
    # held (its output), its first pass would scan every object it holds, as it stood when the
    # collector was turned off (measured: 1M spans, 56 passes, 1.4 s of 25 s CPU; 100k, 70 ms).
    held: list[Analysis] = []
    with _no_cyclic_gc():
        status = _report(args, stdout, stderr, held)
        if finish is not None:
            finish(status)
        held.clear()  # the analysis is freed here
    return status


def _report(
    args: argparse.Namespace, stdout: IO[str] | None, stderr: IO[str] | None, held: list[Analysis]
) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    plan = None
    if args.plan:
        try:
            plan = load_plan(args.plan)
        except PlanError as e:
            print(f"budgetspan report: {safe(str(e))}", file=stderr)
            return 2
    problem = routing_cli.check(args)
    if problem is not None:
        print(f"budgetspan report: {safe(problem)}", file=stderr)
        return 2

    def bad_line(e: LoadError) -> None:
        if reader.error_count <= MAX_ERRORS_SHOWN:
            print(f"budgetspan report: {safe(str(e))}", file=stderr)

    reader, analysis_module = _reader(args, stderr, bad_line)
    bound = max(1, args.max_spans_in_flight)
    analysis, details = _analyze(args, reader, plan, bound, analysis_module)
    held.append(analysis)  # freed by the caller (``run_report``)
    if args.by in SCOPE_BY:  # runs grouped by who they served
        stdout.write(render_by(analysis.runs, args.by, args.format))
    elif args.format == "json":
        if not routing_cli.by_routing(args):  # then the JSON document is the routing evaluation
            write_json(analysis, stdout)
    else:
        stdout.write(render(analysis, args.format))
    if details is not None and routing_cli.write_extras(args, analysis, details, stdout, stderr):
        return 2
    _notes(analysis, bound, stderr)
    if reader.spans_read == 0:  # an empty or span-less file is a failed trace, not an empty report
        from budgetspan.report.load import STDIN

        names = ", ".join("standard input" if f == STDIN else str(f) for f in args.files)
        print(f"budgetspan report: no spans in {safe(names)}: nothing to report.", file=stderr)
        return 1
    errors = reader.error_count
    if errors:
        if errors > MAX_ERRORS_SHOWN:
            print(f"budgetspan report: ... and {errors - MAX_ERRORS_SHOWN} more", file=stderr)
        print(
            f"budgetspan report: {errors} bad line{'s' if errors != 1 else ''} skipped; "
            "the report covers the rest.",
            file=stderr,
        )
        return 1
    return 0


def _reader(
    args: argparse.Namespace, stderr: IO[str], on_error: Callable[[LoadError], None]
) -> tuple[SpanReader, ModuleType | None]:
    """The reader, and the ``analysis`` module to run (None: ``routing_cli``'s pass with details).
    The compiled reading and analysis when built from these sources (``native``); --by, --html
    and the routing evaluation read with the pure modules (their details are pure classes)."""
    analysis_module: ModuleType | None = None
    if routing_cli.wanted(args):
        from budgetspan.report import load

        keep = routing_cli.detail_keep()
    else:
        load, analysis_module = native.modules()
        keep = analysis_module.REPORT_KEEP
    reader: SpanReader = load.SpanReader(
        keep=keep,
        progress=bool(args.progress) or stderr.isatty(),
        progress_stream=stderr,
        on_error=on_error,
        max_errors=MAX_ERRORS_SHOWN,
    )
    return reader, analysis_module


def _analyze(
    args: argparse.Namespace, reader: SpanReader, plan: Any, bound: int, module: ModuleType | None
) -> tuple[Analysis, DetailCollector | None]:
    """The analysis (by ``module``, the compiled or pure ``analysis``); with --by or --html, each
    run's details too (in the same pass)."""
    window = min(WINDOW, max(1, bound // 5))
    if module is None:
        return routing_cli.analyze_with_details(
            reader.read(args.files), plan, args.top, window=window, max_in_flight=bound,
            max_timelines=args.html_max_timelines,
        )  # fmt: skip
    analysis: Analysis = module.analyze_stream(
        reader.read(args.files), plan, top=args.top, window=window, max_in_flight=bound
    )
    return analysis, None


def _notes(a: Analysis, bound: int, stderr: IO[str]) -> None:
    if a.early_runs:
        print(
            f"budgetspan report: {a.early_runs} run{'s' if a.early_runs != 1 else ''} reported before "
            f"all their spans were read, to hold at most {bound:,} spans at once "
            "(raise --max-spans-in-flight to wait longer).",
            file=stderr,
        )
    if a.late_spans:
        print(
            f"budgetspan report: {a.late_spans} span{'s' if a.late_spans != 1 else ''} of runs already "
            "reported (read again, or written long after their run ended) not counted.",
            file=stderr,
        )


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Span records hold no reference cycles: the cyclic collector would only rescan millions of
    live objects (a quarter of the time of a large report). Reference counting still frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["FORMATS", "Table", "add_arguments", "money", "pct", "render", "run_report", "runs_table", "secs"]
