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
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # the SDK warns on import that v1 dashboards are deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders.common import ReduceDataOptions
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
    from grafana_foundation_sdk.models.common import DataSourceRef
    from grafana_foundation_sdk.models.dashboard import (
        DashboardLinkType,
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
TOKENS = A.M_TOKENS + "_total"
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


def q95(metric: str, by: str, sel: str, quantile: float = 0.95) -> str:
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RATE}])))"


def cost_per_success(sel: str, window: str, by: str = "") -> str:
    grp = f" by ({by})" if by else ""
    return (
        f"sum{grp} (increase({RUN_COST}_sum{{{sel}}}[{window}])) / "
        f'sum{grp} (increase({RUNS}{{{sel}, outcome="success"}}[{window}]))'
    )


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
    for i, (expr, legend) in enumerate(spec.queries):
        target = Dataquery().expr(expr).ref_id(chr(ord("A") + i))
        if legend:
            target = target.legend_format(legend)
        if spec.stat:
            target = target.instant()
        builder = builder.with_target(target)
    return builder


def datasource_variable() -> Any:
    return DatasourceVariable("datasource").label("Data source").type("prometheus")


def build(
    title: str,
    uid: str,
    description: str,
    variables: list[Any],
    rows: list[tuple[str, list[Spec]]],
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
                DashboardLink("budgetspan dashboards")
                .type(DashboardLinkType.DASHBOARDS)
                .tags(["budgetspan"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
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


def overview() -> dict[str, Any]:
    wf = 'workflow=~"$workflow"'
    rows: list[tuple[str, list[Spec]]] = [
        (
            "Outcomes and spend",
            [
                Spec(
                    "Cost per successful task",
                    "currencyUSD",
                    [(cost_per_success(wf, RANGE), "")],
                    stat=True,
                    width=5,
                    height=5,
                    description="Total run cost / successful runs in the time range. Failed and "
                    "exhausted runs' cost stays in the numerator.",
                ),
                Spec(
                    "Spend rate",
                    "currencyUSD",
                    [(f"sum(rate({COST}{{{wf}}}[{RATE}])) * 3600", "")],
                    stat=True,
                    width=5,
                    height=5,
                    description="Dollars per hour spent on priced model calls.",
                ),
                Spec(
                    "Budget-exhaustion rate",
                    "percentunit",
                    [
                        (
                            f'sum(rate({RUNS}{{{wf}, outcome="budget_exhausted"}}[{RATE}])) / '
                            f"sum(rate({RUNS}{{{wf}}}[{RATE}]))",
                            "",
                        )
                    ],
                    stat=True,
                    width=5,
                    height=5,
                    description="Share of finished runs that stopped at a budget limit.",
                ),
                Spec("Live runs", "short", [(f"sum({LIVE_RUNS}{{{wf}}})", "")], stat=True, width=4, height=5),
                Spec(
                    "Unpriced model calls",
                    "short",
                    [(f"sum(increase({UNPRICED}[{RANGE}]))", "")],
                    stat=True,
                    width=5,
                    height=5,
                    description="Calls with usage but no known price: their cost is missing from "
                    "every dollar figure. Add the model to BUDGETSPAN_PRICES.",
                ),
                Spec(
                    "Runs by outcome",
                    "reqps",
                    [(f"sum by (outcome) (rate({RUNS}{{{wf}}}[{RATE}]))", "{{outcome}}")],
                ),
                Spec(
                    "Budget exhaustions by reason",
                    "reqps",
                    [(f"sum by (reason) (rate({EXHAUSTIONS}{{{wf}}}[{RATE}]))", "{{reason}}")],
                ),
                Spec(
                    "Cost per successful task by workflow",
                    "currencyUSD",
                    [(cost_per_success(wf, RATE, "workflow"), "{{workflow}}")],
                ),
                Spec(
                    "Spend rate by workflow ($/h)",
                    "currencyUSD",
                    [(f"sum by (workflow) (rate({COST}{{{wf}}}[{RATE}])) * 3600", "{{workflow}}")],
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
                Spec(
                    "Run duration p50 / p95",
                    "s",
                    [
                        (q95(RUN_DURATION, "workflow", wf, 0.5), "p50 {{workflow}}"),
                        (q95(RUN_DURATION, "workflow", wf), "p95 {{workflow}}"),
                    ],
                ),
                Spec("Time to first token p95 by model", "s", [(q95(TTFT, "model", ""), "{{model}}")]),
                Spec(
                    "Model call duration p95 by model", "s", [(q95(MODEL_DURATION, "model", ""), "{{model}}")]
                ),
            ],
        ),
        (
            "Cost and tokens",
            [
                Spec(
                    "Cost by phase and model ($/h)",
                    "currencyUSD",
                    [
                        (
                            f"sum by (phase, model) (rate({COST}{{{wf}}}[{RATE}])) * 3600",
                            "{{phase}} / {{model}}",
                        )
                    ],
                ),
                Spec(
                    "Tokens by type",
                    "short",
                    [(f"sum by (type) (rate({TOKENS}{{{wf}}}[{RATE}]))", "{{type}}")],
                    description="Tokens per second. Input includes cache reads and writes "
                    "(OpenTelemetry semantics).",
                ),
                Spec(
                    "Cache-read share of input tokens",
                    "percentunit",
                    [
                        (
                            f'sum(rate({TOKENS}{{{wf}, type="cache_read"}}[{RATE}])) / '
                            f'sum(rate({TOKENS}{{{wf}, type="input"}}[{RATE}]))',
                            "cache read",
                        )
                    ],
                ),
                Spec(
                    "Run cost p50 / p95",
                    "currencyUSD",
                    [
                        (q95(RUN_COST, "workflow", wf, 0.5), "p50 {{workflow}}"),
                        (q95(RUN_COST, "workflow", wf), "p95 {{workflow}}"),
                    ],
                ),
                Spec(
                    "Budget utilisation p95 by limit",
                    "percentunit",
                    [(q95(UTILISATION, "limit", wf), "{{limit}}")],
                    description="Share of each limit used when runs end; near 100% means the "
                    "limit is about to refuse work.",
                ),
                Spec(
                    "Model calls by model and status",
                    "reqps",
                    [
                        (
                            f"sum by (model, status) (rate({MODEL_CALLS}{{{wf}}}[{RATE}]))",
                            "{{model}} {{status}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Tools and reliability",
            [
                Spec("Tool latency p95 by tool", "s", [(q95(TOOL_DURATION, "tool", wf), "{{tool}}")]),
                Spec(
                    "Tool errors by tool",
                    "reqps",
                    [
                        (
                            f'sum by (tool, status) (rate({TOOL_CALLS}{{{wf}, status!="ok"}}[{RATE}]))',
                            "{{tool}} {{status}}",
                        )
                    ],
                ),
                Spec(
                    "Retries by type",
                    "reqps",
                    [(f"sum by (type) (rate({RETRIES}{{{wf}}}[{RATE}]))", "{{type}}")],
                ),
                Spec(
                    "Unpriced model calls by model",
                    "reqps",
                    [(f"sum by (provider, model) (rate({UNPRICED}[{RATE}]))", "{{provider}} {{model}}")],
                ),
                Spec(
                    "Model calls with no reported usage",
                    "reqps",
                    [(f"sum by (provider, model) (rate({UNREPORTED}[{RATE}]))", "{{provider}} {{model}}")],
                    description="The provider never said the tokens (a stream without a usage "
                    "chunk): not counted as 0, and token budgets cannot see them.",
                ),
                Spec(
                    "Would-be exhaustions in observe mode by reason",
                    "reqps",
                    [
                        (
                            f"sum by (workflow, reason) (rate({WOULD_EXHAUST}{{{wf}}}[{RATE}]))",
                            "{{workflow}} {{reason}}",
                        )
                    ],
                    description="Runs in BUDGETSPAN_MODE=observe that enforce mode would have "
                    "stopped: check this before switching a workflow to enforce.",
                ),
            ],
        ),
    ]
    workflow = (
        QueryVariable("workflow")
        .label("Workflow")
        .datasource(DS)
        .query(f"label_values({RUNS}, workflow)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return build(
        "budgetspan / overview",
        "budgetspan-overview",
        "Cost per successful task, spend, budget exhaustions, phase latency, tokens, tools.",
        [datasource_variable(), workflow],
        rows,
    )


# --- the per-workflow drill-down ------------------------------------------------------------------


def workflow_drilldown() -> dict[str, Any]:
    wf = 'workflow="$workflow"'
    ph = f'{wf}, phase=~"$phase"'
    rows: list[tuple[str, list[Spec]]] = [
        (
            "Outcomes",
            [
                Spec(
                    "Cost per successful task",
                    "currencyUSD",
                    [(cost_per_success(wf, RANGE), "")],
                    stat=True,
                    width=6,
                    height=5,
                ),
                Spec(
                    "Success share",
                    "percentunit",
                    [
                        (
                            f'sum(increase({RUNS}{{{wf}, outcome="success"}}[{RANGE}])) / '
                            f"sum(increase({RUNS}{{{wf}}}[{RANGE}]))",
                            "",
                        )
                    ],
                    stat=True,
                    width=6,
                    height=5,
                ),
                Spec(
                    "Budget-exhaustion share",
                    "percentunit",
                    [
                        (
                            f'sum(increase({RUNS}{{{wf}, outcome="budget_exhausted"}}[{RANGE}])) / '
                            f"sum(increase({RUNS}{{{wf}}}[{RANGE}]))",
                            "",
                        )
                    ],
                    stat=True,
                    width=6,
                    height=5,
                ),
                Spec("Live runs", "short", [(f"sum({LIVE_RUNS}{{{wf}}})", "")], stat=True, width=6, height=5),
                Spec(
                    "Runs by outcome",
                    "reqps",
                    [(f"sum by (outcome) (rate({RUNS}{{{wf}}}[{RATE}]))", "{{outcome}}")],
                ),
                Spec(
                    "Budget exhaustions by reason",
                    "reqps",
                    [(f"sum by (reason) (rate({EXHAUSTIONS}{{{wf}}}[{RATE}]))", "{{reason}}")],
                ),
                Spec(
                    "Would-be exhaustions in observe mode by reason",
                    "reqps",
                    [(f"sum by (reason) (rate({WOULD_EXHAUST}{{{wf}}}[{RATE}]))", "{{reason}}")],
                ),
                Spec(
                    "Budget utilisation p50 / p95 by limit",
                    "percentunit",
                    [
                        (q95(UTILISATION, "limit", wf, 0.5), "p50 {{limit}}"),
                        (q95(UTILISATION, "limit", wf), "p95 {{limit}}"),
                    ],
                ),
                Spec(
                    "Run duration p50 / p95 by outcome",
                    "s",
                    [
                        (q95(RUN_DURATION, "outcome", wf, 0.5), "p50 {{outcome}}"),
                        (q95(RUN_DURATION, "outcome", wf), "p95 {{outcome}}"),
                    ],
                ),
            ],
        ),
        (
            "Phases",
            [
                Spec(
                    "Phase duration p50 / p95",
                    "s",
                    [
                        (q95(PHASE_DURATION, "phase", ph, 0.5), "p50 {{phase}}"),
                        (q95(PHASE_DURATION, "phase", ph), "p95 {{phase}}"),
                    ],
                ),
                Spec(
                    "Cost by phase ($/h)",
                    "currencyUSD",
                    [(f"sum by (phase) (rate({COST}{{{ph}}}[{RATE}])) * 3600", "{{phase}}")],
                ),
            ],
        ),
        (
            "Models and tokens",
            [
                Spec(
                    "Cost by model ($/h)",
                    "currencyUSD",
                    [(f"sum by (model) (rate({COST}{{{wf}}}[{RATE}])) * 3600", "{{model}}")],
                ),
                Spec(
                    "Tokens by type and model",
                    "short",
                    [(f"sum by (type, model) (rate({TOKENS}{{{wf}}}[{RATE}]))", "{{model}} {{type}}")],
                ),
                Spec(
                    "Run cost p50 / p95 by outcome",
                    "currencyUSD",
                    [
                        (q95(RUN_COST, "outcome", wf, 0.5), "p50 {{outcome}}"),
                        (q95(RUN_COST, "outcome", wf), "p95 {{outcome}}"),
                    ],
                ),
                Spec(
                    "Model calls by model and status",
                    "reqps",
                    [
                        (
                            f"sum by (model, status) (rate({MODEL_CALLS}{{{wf}}}[{RATE}]))",
                            "{{model}} {{status}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Tools",
            [
                Spec("Tool latency p95 by tool", "s", [(q95(TOOL_DURATION, "tool", wf), "{{tool}}")]),
                Spec(
                    "Tool calls by tool and status",
                    "reqps",
                    [(f"sum by (tool, status) (rate({TOOL_CALLS}{{{wf}}}[{RATE}]))", "{{tool}} {{status}}")],
                ),
                Spec(
                    "Retries by type",
                    "reqps",
                    [(f"sum by (type) (rate({RETRIES}{{{wf}}}[{RATE}]))", "{{type}}")],
                ),
            ],
        ),
    ]
    workflow = (
        QueryVariable("workflow")
        .label("Workflow")
        .datasource(DS)
        .query(f"label_values({RUNS}, workflow)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    phase = (
        QueryVariable("phase")
        .label("Phase")
        .datasource(DS)
        .query(f'label_values({PHASE_DURATION}_count{{workflow="$workflow"}}, phase)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return build(
        "budgetspan / workflow",
        "budgetspan-workflow",
        "One workflow: outcomes, budget utilisation, phases, models, tokens and tools.",
        [datasource_variable(), workflow, phase],
        rows,
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
