"""Generate budgetspan's Grafana dashboards (JSON) from code, with grafana-foundation-sdk.

    .venv/bin/python dashboards/generate.py          # rewrite the committed JSON
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the JSON is stale

The JSON is committed so that users import it without Python or the SDK (which needs Python
>= 3.11). Every query names metrics through ``budgetspan.attributes`` so a rename there shows
up here, and tests/test_prometheus_e2e.py runs every query on a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # the SDK warns on import that v1 dashboards are deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders.common import (
        ReduceDataOptions,
        VizLegendOptions,
        VizTooltipOptions,
    )
    from grafana_foundation_sdk.builders.dashboard import (
        Dashboard,
        DashboardLink,
        DatasourceVariable,
        QueryVariable,
        Row,
    )
    from grafana_foundation_sdk.builders.prometheus import Dataquery
    from grafana_foundation_sdk.builders.stat import Panel as StatPanel
    from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.common import (
        DataSourceRef,
        LegendDisplayMode,
        LegendPlacement,
        SortOrder,
        TooltipDisplayMode,
    )
    from grafana_foundation_sdk.models.dashboard import (
        DashboardLinkType,
        VariableOption,
        VariableRefresh,
        VariableSort,
    )

from budgetspan import attributes as A

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
RANGE = "$__range"

# Exposition names (prometheus-client adds _total to counters, _bucket/_sum/_count to histograms).
RUNS = A.M_RUNS + "_total"
RUN_COST = A.M_RUN_COST
RUN_DURATION = A.M_RUN_DURATION
EXHAUSTIONS = A.M_BUDGET_EXHAUSTIONS + "_total"
UTILISATION = A.M_BUDGET_UTILISATION
MODEL_CALLS = A.M_MODEL_CALLS + "_total"
TOKENS = A.M_TOKENS + "_total"  # input and output only: a sum is the total
TOKEN_DETAILS = A.M_TOKEN_DETAILS + "_total"  # cache_read, cache_write (of input), reasoning (of output)
COST = A.M_COST + "_total"
UNPRICED = A.M_UNPRICED_CALLS + "_total"
UNREPORTED = A.M_UNREPORTED_USAGE_CALLS + "_total"
WOULD_EXHAUST = A.M_BUDGET_WOULD_EXHAUST + "_total"
PHASE_DURATION = A.M_PHASE_DURATION
TOOL_CALLS = A.M_TOOL_CALLS + "_total"
TOOL_DURATION = A.M_TOOL_DURATION
RETRIES = A.M_RETRIES + "_total"
TTFT = A.M_TIME_TO_FIRST_TOKEN
MODEL_DURATION = A.M_MODEL_CALL_DURATION
LIVE_RUNS = A.M_LIVE_RUNS
JOBS = A.M_JOBS + "_total"
JOB_QUEUE_WAIT = A.M_JOB_QUEUE_WAIT
EXTENSIONS = A.M_BUDGET_EXTENSIONS + "_total"
LOOPS = A.M_LOOPS + "_total"
CACHE_REQUESTS = A.M_CACHE_REQUESTS + "_total"
CACHE_SAVED_USD = A.M_CACHE_SAVED_USD + "_total"
PROMPT_SAVED = A.M_PROMPT_CACHE_SAVED_USD + "_total"
PROMPT_PREMIUM = A.M_PROMPT_CACHE_WRITE_PREMIUM_USD + "_total"
STEP_COST = A.M_STEP_COST + "_total"
STEP_RUNS = A.M_STEP_RUNS + "_total"

# Rates of events, as a reader says them (Grafana's custom "suffix:" unit), not "req/s".
RUNS_PER_S = "suffix: runs/s"
CALLS_PER_S = "suffix: calls/s"
RETRIES_PER_S = "suffix: retries/s"
TOKENS_PER_S = "suffix: tokens/s"
JOBS_PER_S = "suffix: jobs/s"
# Series only the processes make (budgetspan.jobs events, no span says them): panels that show
# them say so, and the collector tier's dashboard test leaves them out.
PROCESS_ONLY = " Counted by the processes that submit and run jobs, not by the collector tier."
EVENTS_PER_S = "suffix: events/s"
LIMIT_DESCRIPTION = (
    "At a limit, an on_limit policy can extend the budget (e.g. after approval) instead of "
    "stopping; a loop (the same tool call with the same result, a ping-pong, no new result) "
    "stops a run with reason no_progress."
)

# $service: the label the collector tier adds (resource service.name). A process scraped directly
# has no such label, and service=~".*" matches an absent label, so "All" (.*) keeps every series.
SVC = 'service=~"$service"'
OVERVIEW_UID = "budgetspan-overview"
WORKFLOW_UID = "budgetspan-workflow"
# Labels that split a panel into many series: such panels get a table legend with mean/max/last.
ALL_WORKFLOWS = (
    "All workflows: these series carry provider and model but no workflow label, so $workflow does not apply."
)
# From a panel split by workflow to that workflow's dashboard, keeping data source, services, time.
TO_WORKFLOW = (
    "Open workflow ${__field.labels.workflow}",
    f"/d/{WORKFLOW_UID}?var-workflow=${{__field.labels.workflow}}"
    "&${datasource:queryparam}&${service:queryparam}&${__url_time_range}",
)
MANY = {"model", "tool", "phase", "workflow", "provider"}
# Histograms whose buckets carry trace-id exemplars (processors/metric_cells.py): panels over them
# ask for exemplars, shown as dots that link to the trace (the data source's exemplar link).
TRACED = tuple(f"{m}_bucket" for m in (RUN_COST, RUN_DURATION, MODEL_DURATION, TOOL_DURATION))


@dataclass
class Spec:
    """One panel: a title, a unit, queries as (expr, legend), and its size."""

    title: str
    unit: str
    queries: list[tuple[str, str]]
    description: str = ""
    stat: bool = False
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # data links (title, url)

    def table_legend(self) -> bool:
        """Many series (several queries, or split by a label with many values): a table legend."""
        if len(self.queries) > 1:
            return True
        labels = {
            lab.strip()
            for expr, _ in self.queries
            for m in re.findall(r"by \(([^)]*)\)", expr)
            for lab in m.split(",")
        } - {"le"}
        return len(labels) > 1 or bool(labels & MANY)


def q95(metric: str, by: str, sel: str, quantile: float = 0.95) -> str:
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RATE}])))"


def cost_per_success(sel: str, window: str, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return (
        f"sum{grp} (increase({RUN_COST}_sum{{{sel}}}[{window}])) / "
        f'sum{grp} (increase({RUNS}{{{sel}, outcome="success"}}[{window}]))'
    )


def rate(metric: str, sel: str, by: str = "", window: str = RATE, fn: str = "rate") -> str:
    """A counter's ``fn`` (rate, or increase) over ``window``, summed, split ``by`` labels."""
    grp = f" by ({by}) " if by else ""
    return f"sum{grp}({fn}({metric}{{{sel}}}[{window}]))"


def per_hour(metric: str, sel: str, by: str = "") -> str:
    return f"{rate(metric, sel, by)} * 3600"


def p50_p95(metric: str, by: str, sel: str, legend: str) -> list[tuple[str, str]]:
    return [(q95(metric, by, sel, 0.5), f"p50 {legend}"), (q95(metric, by, sel), f"p95 {legend}")]


def outcome_share(sel: str, outcome: str, window: str, fn: str) -> str:
    """The share of finished runs that ended with ``outcome``."""
    only = sel + f', outcome="{outcome}"'
    return f"{rate(RUNS, only, '', window, fn)} / {rate(RUNS, sel, '', window, fn)}"


def workflow_variable(many: bool) -> Any:
    """The workflows that ran: several (with All) on the overview, one on the drill-down."""
    variable = (
        QueryVariable("workflow")
        .label("Workflow")
        .datasource(DS)
        .query(f"label_values({RUNS}{{{SVC}}}, workflow)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    return variable.multi(True).include_all(True).all_value(".*") if many else variable


# --- panels both dashboards show ------------------------------------------------------------------


def stat(title: str, unit: str, query: str, width: int, description: str = "") -> Spec:
    """One number of a dashboard's top row."""
    return Spec(title, unit, [(query, "")], stat=True, width=width, height=5, description=description)


def cost_per_task(sel: str, width: int, description: str = "") -> Spec:
    return stat("Cost per successful task", "currencyUSD", cost_per_success(sel, RANGE), width, description)


def live_runs(sel: str, width: int) -> Spec:
    return stat("Live runs", "short", f"sum({LIVE_RUNS}{{{sel}}})", width)


def by_one_label(sel: str) -> list[Spec]:
    """Runs by outcome and exhaustions by reason, side by side on both dashboards."""
    return [
        Spec("Runs by outcome", RUNS_PER_S, [(rate(RUNS, sel, "outcome"), "{{outcome}}")]),
        Spec("Budget exhaustions by reason", RUNS_PER_S, [(rate(EXHAUSTIONS, sel, "reason"), "{{reason}}")]),
    ]


def extensions_and_loops(sel: str, split: str) -> Spec:
    """``split``: "workflow, " on the overview (a series per workflow), "" on the drill-down."""
    each = "{{workflow}} " if split else ""
    loops = sel + ', status="stopped"'
    return Spec(
        "Budget extensions and loop stops",
        EVENTS_PER_S,
        [
            (rate(EXTENSIONS, sel, f"{split}limit"), f"{each}extended {{{{limit}}}}"),
            (rate(LOOPS, loops, f"{split}type"), f"{each}loop stopped ({{{{type}}}})"),
        ],
        description=LIMIT_DESCRIPTION,
    )


def would_exhaust(sel: str, split: str, description: str = "") -> Spec:
    each = "{{workflow}} " if split else ""
    return Spec(
        "Would-be exhaustions in observe mode by reason",
        RUNS_PER_S,
        [(rate(WOULD_EXHAUST, sel, f"{split}reason"), f"{each}{{{{reason}}}}")],
        description=description,
    )


def model_calls(sel: str) -> Spec:
    query = rate(MODEL_CALLS, sel, "model, status")
    return Spec("Model calls by model and status", CALLS_PER_S, [(query, "{{model}} {{status}}")])


def tool_latency(sel: str) -> Spec:
    return Spec("Tool latency p95 by tool", "s", [(q95(TOOL_DURATION, "tool", sel), "{{tool}}")])


def retries(sel: str) -> Spec:
    return Spec("Retries by type", RETRIES_PER_S, [(rate(RETRIES, sel, "type"), "{{type}}")])


def panel(spec: Spec, panel_id: int) -> Any:
    builder: Any = StatPanel() if spec.stat else TimeseriesPanel()
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .datasource(DS)
        .unit(spec.unit)
        .span(spec.width)
        .height(spec.height)
    )
    if spec.description:
        builder = builder.description(spec.description)
    if spec.stat:
        builder = builder.reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    else:
        key = VizLegendOptions().show_legend(True).placement(LegendPlacement.BOTTOM)
        if spec.table_legend():
            key = (
                key.display_mode(LegendDisplayMode.TABLE)
                .calcs(["mean", "max", "lastNotNull"])
                .sort_by("Mean")
                .sort_desc(True)
            )
        else:
            key = key.display_mode(LegendDisplayMode.LIST).calcs([])
        builder = builder.legend(key).tooltip(
            VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)
        )
    if spec.links:
        builder = builder.data_links(
            [DashboardLink(title).url(url).type(DashboardLinkType.LINK) for title, url in spec.links]
        )
    exemplars = not spec.stat  # one query per panel shows them (the same dots otherwise repeat)
    for i, (expr, legend) in enumerate(spec.queries):
        target = Dataquery().expr(expr).ref_id(chr(ord("A") + i))
        if legend:
            target = target.legend_format(legend)
        if spec.stat:
            target = target.instant()
        if exemplars and any(m in expr for m in TRACED):
            target = target.exemplar(True)
            exemplars = False
        builder = builder.with_target(target)
    return builder


def datasource_variable() -> Any:
    return DatasourceVariable("datasource").label("Data source").type("prometheus")


def service_variable() -> Any:
    """Services (the collector's service label); All is .*, which also matches series without it."""
    return (
        QueryVariable("service")
        .label("Service")
        .datasource(DS)
        .query(f"label_values({RUNS}, service)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def build(
    title: str,
    uid: str,
    description: str,
    variables: list[Any],
    rows: list[tuple[str, list[Spec]]],
    link: tuple[str, str],
) -> dict[str, Any]:
    dash: Any = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["budgetspan", "llm", "cost"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .links(
            [
                DashboardLink(link[0])
                .type(DashboardLinkType.LINK)
                .url(f"/d/{link[1]}")
                .icon("dashboard")
                .include_vars(True)
                .keep_time(True),
                DashboardLink("budgetspan dashboards")
                .type(DashboardLinkType.DASHBOARDS)
                .tags(["budgetspan"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True),
            ]
        )
    )
    for variable in variables:
        dash = dash.with_variable(variable)
    next_id = 1
    for row_title, specs in rows:
        dash = dash.with_row(Row(row_title).id(next_id))
        next_id += 1
        for spec in specs:
            dash = dash.with_panel(panel(spec, next_id))
            next_id += 1
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(dash.build())
    out: dict[str, Any] = json.loads(encoded)
    return out


# --- the overview -------------------------------------------------------------------------------


def cache_panels(wf: str) -> list[Spec]:
    """budgetspan's cache (per tool) and provider prompt caching (per workflow): what they saved."""
    svc = SVC
    premium_or_zero = f"(rate({PROMPT_PREMIUM}{{{wf}}}[{RATE}]) or rate({PROMPT_SAVED}{{{wf}}}[{RATE}]) * 0)"
    return [
        Spec(
            "Cache hit rate by tool",
            "percentunit",
            [
                (
                    f'sum by (tool) (rate({CACHE_REQUESTS}{{{svc}, result="hit"}}[{RATE}])) / '
                    f"sum by (tool) (rate({CACHE_REQUESTS}{{{svc}}}[{RATE}]))",
                    "{{tool}}",
                )
            ],
            width=8,
            description="Share of cached calls the cache answered (budgetspan.Cache). " + ALL_WORKFLOWS,
        ),
        Spec(
            "Cache savings by tool ($/h)",
            "currencyUSD",
            [(f"sum by (tool) (rate({CACHE_SAVED_USD}{{{svc}}}[{RATE}])) * 3600", "{{tool}}")],
            width=8,
            description="Recorded cost of the calls that cache hits replaced. " + ALL_WORKFLOWS,
        ),
        Spec(
            "Prompt caching net saved by workflow ($/h)",
            "currencyUSD",
            [
                (
                    f"(sum by (workflow) (rate({PROMPT_SAVED}{{{wf}}}[{RATE}])) - "
                    f"sum by (workflow) {premium_or_zero}) * 3600",
                    "{{workflow}}",
                )
            ],
            width=8,
            description="Provider prompt caching: cache reads saved against the input price, less "
            "the premium paid for cache writes.",
        ),
    ]


def overview() -> dict[str, Any]:
    wf = f'workflow=~"$workflow", {SVC}'
    rows: list[tuple[str, list[Spec]]] = [
        (
            "Outcomes and spend",
            [
                cost_per_task(
                    wf,
                    5,
                    "Total run cost / successful runs in the time range. Failed and "
                    "exhausted runs' cost stays in the numerator.",
                ),
                stat(
                    "Spend rate",
                    "currencyUSD",
                    per_hour(COST, wf),
                    5,
                    "Dollars per hour spent on priced model calls.",
                ),
                stat(
                    "Budget-exhaustion rate",
                    "percentunit",
                    outcome_share(wf, "budget_exhausted", RATE, "rate"),
                    5,
                    "Share of finished runs that stopped at a budget limit.",
                ),
                live_runs(wf, 4),
                stat(
                    "Unpriced model calls",
                    "short",
                    rate(UNPRICED, SVC, window=RANGE, fn="increase"),
                    5,
                    "Calls with usage but no known price: their cost is missing from "
                    "every dollar figure. Add the model to BUDGETSPAN_PRICES. " + ALL_WORKFLOWS,
                ),
                *by_one_label(wf),
                extensions_and_loops(wf, "workflow, "),
                Spec(
                    "Cost per successful task by workflow",
                    "currencyUSD",
                    [(cost_per_success(wf, RATE, "workflow"), "{{workflow}}")],
                    links=[TO_WORKFLOW],
                ),
                Spec(
                    "Spend rate by workflow ($/h)",
                    "currencyUSD",
                    [(per_hour(COST, wf, "workflow"), "{{workflow}}")],
                    links=[TO_WORKFLOW],
                ),
            ],
        ),
        (
            "Latency",
            [
                Spec(
                    "p95 duration by phase",
                    "s",
                    [(q95(PHASE_DURATION, "phase", wf), "{{phase}}")],
                    description="Phase blocks, and calls made outside any block under their default phase.",
                ),
                Spec("Run duration p50 / p95", "s", p50_p95(RUN_DURATION, "workflow", wf, "{{workflow}}")),
                Spec(
                    "Time to first token p95 by model",
                    "s",
                    [(q95(TTFT, "model", SVC), "{{model}}")],
                    description=ALL_WORKFLOWS,
                ),
                Spec(
                    "Model call duration p95 by model",
                    "s",
                    [(q95(MODEL_DURATION, "model", SVC), "{{model}}")],
                    description=ALL_WORKFLOWS,
                ),
            ],
        ),
        (
            "Cost and tokens",
            [
                Spec(
                    "Cost by phase and model ($/h)",
                    "currencyUSD",
                    [(per_hour(COST, wf, "phase, model"), "{{phase}} / {{model}}")],
                ),
                Spec(
                    "Tokens by type",
                    TOKENS_PER_S,
                    [
                        (rate(TOKENS, wf, "type"), "{{type}}"),
                        (rate(TOKEN_DETAILS, wf, "type"), "{{type}} (part)"),
                    ],
                    description="Tokens per second. Input includes cache reads and writes, output "
                    "includes reasoning (OpenTelemetry semantics); the parts are drawn apart, not on top.",
                ),
                Spec(
                    "Cache-read share of input tokens",
                    "percentunit",
                    [
                        (
                            rate(TOKEN_DETAILS, wf + ', type="cache_read"')
                            + " / "
                            + rate(TOKENS, wf + ', type="input"'),
                            "cache read",
                        )
                    ],
                ),
                Spec("Run cost p50 / p95", "currencyUSD", p50_p95(RUN_COST, "workflow", wf, "{{workflow}}")),
                Spec(
                    "Budget utilisation p95 by limit",
                    "percentunit",
                    [(q95(UTILISATION, "limit", wf), "{{limit}}")],
                    description="Share of each limit used when runs end; near 100% means the "
                    "limit is about to refuse work.",
                ),
                model_calls(wf),
            ],
        ),
        ("Caching", cache_panels(wf)),
        (
            "Tools and reliability",
            [
                tool_latency(wf),
                Spec(
                    "Tool errors by tool",
                    CALLS_PER_S,
                    [(rate(TOOL_CALLS, wf + ', status!="ok"', "tool, status"), "{{tool}} {{status}}")],
                ),
                retries(wf),
                Spec(
                    "Unpriced model calls by model",
                    CALLS_PER_S,
                    [(rate(UNPRICED, SVC, "provider, model"), "{{provider}} {{model}}")],
                    description=ALL_WORKFLOWS,
                ),
                Spec(
                    "Model calls with no reported usage",
                    CALLS_PER_S,
                    [(rate(UNREPORTED, SVC, "provider, model"), "{{provider}} {{model}}")],
                    description="The provider never said the tokens (a stream without a usage "
                    "chunk): not counted as 0, and token budgets cannot see them. " + ALL_WORKFLOWS,
                ),
                would_exhaust(
                    wf,
                    "workflow, ",
                    "Runs in BUDGETSPAN_MODE=observe that enforce mode would have "
                    "stopped: check this before switching a workflow to enforce.",
                ),
            ],
        ),
        (
            "Background jobs",
            [
                Spec(
                    "Jobs by state",
                    JOBS_PER_S,
                    [(rate(JOBS, wf, "state"), "{{state}}")],
                    description="Jobs entering each state: queued (submitted), running (first "
                    "start), retried (delivered again after a worker died), then their outcome. "
                    "Queued minus running minus cancelled is the backlog." + PROCESS_ONLY,
                ),
                Spec(
                    "Queue wait p50 / p95",
                    "s",
                    p50_p95(JOB_QUEUE_WAIT, "workflow", wf, "{{workflow}}"),
                    description="From submission to the job's first start (Redis's clock): the "
                    "queue_delay phase, before the run begins." + PROCESS_ONLY,
                ),
            ],
        ),
    ]
    return build(
        "budgetspan / overview",
        OVERVIEW_UID,
        "Cost per successful task, spend, budget exhaustions, phase latency, tokens, tools.",
        [datasource_variable(), service_variable(), workflow_variable(many=True)],
        rows,
        ("Workflow drill-down", WORKFLOW_UID),
    )


# --- the per-workflow drill-down ------------------------------------------------------------------


def workflow_drilldown() -> dict[str, Any]:
    wf = f'workflow="$workflow", {SVC}'
    ph = f'{wf}, phase=~"$phase"'
    rows: list[tuple[str, list[Spec]]] = [
        (
            "Outcomes",
            [
                cost_per_task(wf, 6),
                stat("Success share", "percentunit", outcome_share(wf, "success", RANGE, "increase"), 6),
                stat(
                    "Budget-exhaustion share",
                    "percentunit",
                    outcome_share(wf, "budget_exhausted", RANGE, "increase"),
                    6,
                ),
                live_runs(wf, 6),
                *by_one_label(wf),
                would_exhaust(wf, ""),
                extensions_and_loops(wf, ""),
                Spec(
                    "Budget utilisation p50 / p95 by limit",
                    "percentunit",
                    p50_p95(UTILISATION, "limit", wf, "{{limit}}"),
                ),
                Spec(
                    "Run duration p50 / p95 by outcome",
                    "s",
                    p50_p95(RUN_DURATION, "outcome", wf, "{{outcome}}"),
                ),
            ],
        ),
        (
            "Phases",
            [
                Spec("Phase duration p50 / p95", "s", p50_p95(PHASE_DURATION, "phase", ph, "{{phase}}")),
                Spec("Cost by phase ($/h)", "currencyUSD", [(per_hour(COST, ph, "phase"), "{{phase}}")]),
            ],
        ),
        (
            "Models and tokens",
            [
                Spec("Cost by model ($/h)", "currencyUSD", [(per_hour(COST, wf, "model"), "{{model}}")]),
                Spec(
                    "Tokens by type and model",
                    TOKENS_PER_S,
                    [
                        (rate(TOKENS, wf, "type, model"), "{{model}} {{type}}"),
                        (rate(TOKEN_DETAILS, wf, "type, model"), "{{model}} {{type}} (part)"),
                    ],
                ),
                Spec(
                    "Run cost p50 / p95 by outcome",
                    "currencyUSD",
                    p50_p95(RUN_COST, "outcome", wf, "{{outcome}}"),
                ),
                model_calls(wf),
            ],
        ),
        (
            "Tools",
            [
                tool_latency(wf),
                Spec(
                    "Tool calls by tool and status",
                    CALLS_PER_S,
                    [(rate(TOOL_CALLS, wf, "tool, status"), "{{tool}} {{status}}")],
                ),
                retries(wf),
            ],
        ),
        routing_row(wf),
    ]
    phase = (
        QueryVariable("phase")
        .label("Phase")
        .datasource(DS)
        .query(f"label_values({PHASE_DURATION}_count{{{wf}}}, phase)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return build(
        "budgetspan / workflow",
        WORKFLOW_UID,
        "One workflow: outcomes, budget utilisation, phases, models, tokens and tools.",
        [datasource_variable(), service_variable(), workflow_variable(many=False), phase],
        rows,
        ("Overview", OVERVIEW_UID),
    )


def routing_row(wf: str) -> tuple[str, list[Spec]]:
    """Which model is cheaper per successful run for each step (``budgetspan.step``)."""
    by = "step, model"
    per_success = (
        f"sum by ({by}) (increase({STEP_COST}{{{wf}}}[{RATE}])) / "
        f'sum by ({by}) (increase({STEP_RUNS}{{{wf}, outcome="success"}}[{RATE}]))'
    )
    success = (
        f'sum by ({by}) (increase({STEP_RUNS}{{{wf}, outcome="success"}}[{RATE}])) / '
        f"sum by ({by}) (increase({STEP_RUNS}{{{wf}}}[{RATE}]))"
    )
    return (
        "Routing: steps and models",
        [
            Spec(
                "Cost per successful run by step and model",
                "currencyUSD",
                [(per_success, "{{step}} / {{model}}")],
                description="Cost of each step (retries and fallbacks in, failed runs' cost in) per "
                "successful run, by the model the step called first. Lower is the cheaper route; "
                "`budgetspan report FILE --by step,model` adds intervals and the break-even.",
            ),
            Spec(
                "Success share by step and model",
                "percentunit",
                [(success, "{{step}} / {{model}}")],
            ),
        ],
    )


DASHBOARDS = {
    "budgetspan-overview.json": overview,
    "budgetspan-workflow.json": workflow_drilldown,
}


def render(build_fn: Any) -> str:
    return json.dumps(build_fn(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    stale = []
    for name, fn in DASHBOARDS.items():
        path = args.out / name
        text = render(fn)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
