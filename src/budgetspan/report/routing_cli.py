"""``budgetspan report --by step,model`` and ``--html DIR``: the options, the pass that gathers
each run's details next to the analysis, and the routing tables (text, Markdown or JSON)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import IO, TYPE_CHECKING

from budgetspan.config_numbers import count_option
from budgetspan.report.bounds import MAX_TIMELINES
from budgetspan.report.by_scope import BY as SCOPE_BY
from budgetspan.report.results import Analysis
from budgetspan.report.textfmt import Out as _Out
from budgetspan.report.textfmt import Table, money, pct, secs, to_jsonable

if TYPE_CHECKING:  # imported where used: a report without --by step,model or --html needs neither
    from budgetspan.report.otlp import Keep, SpanRec
    from budgetspan.report.routing import Routing
    from budgetspan.report.runs_detail import DetailCollector

__all__ = [
    "add_arguments",
    "analyze_with_details",
    "check",
    "render_routing",
    "wanted",
    "write_extras",
]

BY_CHOICES = ("step,model", "model,step")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--by",
        metavar="step,model|tenant|user",
        help="step,model: the routing evaluation (per workflow, step and model: success rate, retries, "
        "rework, cost per call and per successful run with a 95%% bootstrap interval, p50/p95, "
        "break-even); tenant or user: runs, outcomes and cost per tenant or user",
    )
    p.add_argument("--html", metavar="DIR", help="also write a self-contained HTML report to DIR/index.html")
    p.add_argument(
        "--html-max-timelines",
        type=count_option(0),
        default=MAX_TIMELINES,
        metavar="N",
        help=f"per-run timelines in the HTML report (the first N runs; default {MAX_TIMELINES:,})",
    )


def wanted(args: argparse.Namespace) -> bool:
    return by_routing(args) or bool(getattr(args, "html", None))


def by_routing(args: argparse.Namespace) -> bool:
    """--by step,model (not --by tenant or user)."""
    by = getattr(args, "by", None)
    return by is not None and by.replace(" ", "") in BY_CHOICES


def check(args: argparse.Namespace) -> str | None:
    """A usage error, or None."""
    by = getattr(args, "by", None)
    if by is not None and by.replace(" ", "") not in (*BY_CHOICES, *SCOPE_BY):
        return f"--by {by!r}: one of step,model, tenant, user"
    return None


def detail_keep() -> Keep:
    """The attributes the routing evaluation and the HTML report read (``runs_detail``)."""
    from budgetspan.report.runs_detail import DETAIL_KEEP

    return DETAIL_KEEP


def analyze_with_details(
    batches: Iterable[list[SpanRec]],
    plan: Mapping[str, Mapping[str, float]] | None,
    top: int,
    *,
    window: int | None,
    max_in_flight: int | None,
    max_timelines: int = MAX_TIMELINES,
) -> tuple[Analysis, DetailCollector]:
    """The report's analysis and each run's details, in one pass over the spans."""
    from budgetspan.report.analysis import Analyzer, finish
    from budgetspan.report.assemble import RunAssembler
    from budgetspan.report.runs_detail import DetailCollector

    analyzer = Analyzer()
    details = DetailCollector(max_timelines=max(0, max_timelines))

    def sink(runs: list[tuple[str, list[SpanRec]]], traces: dict[str, dict[str, SpanRec]]) -> None:
        analyzer.add_runs(runs, traces)
        details.add_runs(runs, traces)

    assembler = RunAssembler(sink, window=window, max_in_flight=max_in_flight)
    add = assembler.add_batch
    for batch in details.watch(batches):
        add(batch)
    assembler.close()
    return finish(analyzer, assembler, plan, top), details


def evaluate_spans(spans: Iterable[SpanRec]) -> Routing:
    """The routing evaluation of spans in memory (the demo's), every span held until the end."""
    from budgetspan.report.assemble import RunAssembler
    from budgetspan.report.routing import evaluate
    from budgetspan.report.runs_detail import DetailCollector

    details = DetailCollector(max_timelines=0)
    assembler = RunAssembler(details.add_runs, window=None, max_in_flight=None)
    assembler.add_all(details.watch_spans(spans))
    assembler.close()
    runs = details.finish()
    return evaluate(runs, late_outcomes=sum(1 for r in runs if r.late_outcome))


def _ci(lo_hi: tuple[float, float] | None) -> str:
    if lo_hi is None:
        return "n/a"
    hi = "no success" if lo_hi[1] == float("inf") else money(lo_hi[1])
    return f"{money(lo_hi[0])}..{hi}"


def render_routing(routing: Routing, markdown: bool = False) -> str:
    out = _Out(markdown)
    out.heading("Routing: cost per successful run by step and model", 2)
    if not routing.routes:
        out.text("No model calls: nothing to compare.")
        return out.render()
    out.text(
        "Route = the model a step called first in a run; its retries and fallbacks count in its cost. "
        "$/success = the cost of all the route's runs (failed ones too) / its successful runs, with a "
        "95% bootstrap interval."
    )
    for wf in sorted({r.workflow for r in routing.routes}):
        out.heading(f"Workflow {wf}", 3)
        t = Table(
            [
                "step",
                "model",
                "runs",
                "success",
                "retries/run",
                "fallbacks",
                "rework/run",
                "$/call",
                "step $/success",
                "$/success",
                "95% interval",
                "p50",
                "p95",
            ],
            [False, False] + [True] * 11,
        )
        for r in (x for x in routing.routes if x.workflow == wf):
            t.add(
                r.step, r.model, r.runs,
                f"{pct(r.success_rate)} ± {pct((r.success_ci[1] - r.success_ci[0]) / 2)}",
                f"{r.retries_per_run:.2f}", r.fallbacks, f"{r.rework_per_run:.2f}",
                money(r.cost_per_call), money(r.step_cost_per_success), money(r.cost_per_success),
                _ci(r.cost_per_success_ci), secs(r.p50_s), secs(r.p95_s),
            )  # fmt: skip
        out.table(t)
        for b in (x for x in routing.break_evens if x.workflow == wf):
            out.text(f"Step {b.step}: {b.verdict}")
    if routing.late_outcomes:
        out.text(
            f"{routing.late_outcomes} run(s) carry an outcome, score or rework recorded after they ended."
        )
    return out.render()


def write_extras(
    args: argparse.Namespace, analysis: Analysis, details: DetailCollector, stdout: IO[str], stderr: IO[str]
) -> int:  # (imports html lazily: only --html needs it)
    """The routing section (after the report) and the HTML report; returns an exit status."""
    import json

    from budgetspan.report.routing import evaluate

    runs = details.finish()
    routing = evaluate(runs, late_outcomes=sum(1 for r in runs if r.late_outcome))
    if by_routing(args):
        if args.format == "json":
            stdout.write(json.dumps(to_jsonable(routing), indent=2, allow_nan=False) + "\n")
        else:
            stdout.write("\n" + render_routing(routing, args.format == "markdown"))
    if getattr(args, "html", None):
        from budgetspan.report.html import write_html

        try:
            path = write_html(args.html, analysis, routing, runs, dropped=details.dropped_runs)
        except OSError as e:
            print(f"budgetspan report: cannot write the HTML report: {e.strerror or e}", file=stderr)
            return 2
        print(f"budgetspan report: HTML report written to {path}", file=stderr)
    return 0
