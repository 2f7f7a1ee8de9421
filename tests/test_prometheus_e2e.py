"""End to end on a real Prometheus: it scrapes a workload process making real instrumented calls,
then every dashboard panel's query runs through the HTTP API and must return data; the bundled
alert rules load, evaluate without error and go pending on the workload's real exhaustion rate;
``promtool check metrics`` passes on our exposition; the trace-id exemplars of the cost and
duration histograms reach Prometheus' exemplar storage, for every dashboard query that shows them."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PHASES
from tests.processes import ready_line, stop_process, wait_for
from tests.prometheus_server import Prometheus, expand, running_prometheus

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = REPO / "tests" / "workloads" / "agent_workload.py"
DASHBOARDS = REPO / "dashboards"
# Which model calls the workload makes: auto (openai SDK if instrumented, else gen_ai spans).
MODELS = os.environ.get("E2E_WORKLOAD_MODELS", "auto")

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs Debian's prometheus package (prometheus, promtool)",
)


@dataclass
class Stack(Prometheus):
    metrics_url: str  # the workload's /metrics
    models: str  # which model-call path the workload used


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prom")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BUDGETSPAN_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    if os.environ.get("BUDGETSPAN_FIXTURES"):
        env["BUDGETSPAN_FIXTURES"] = os.environ["BUDGETSPAN_FIXTURES"]
    work_log = (tmp / "workload.log").open("w")
    workload = subprocess.Popen(
        [sys.executable, str(WORKLOAD), "--port", "0", "--interval", "0.25", "--models", MODELS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=work_log,
        env=env,
        text=True,
    )
    try:
        m = ready_line(workload, r"METRICS_PORT (\d+) MODELS (\w+)", "workload", tmp / "workload.log")
        metrics_port, models = int(m.group(1)), m.group(2)
        with running_prometheus(tmp, "budgetspan", f"127.0.0.1:{metrics_port}", exemplars=True) as prom:
            s = Stack(prom.url, f"http://127.0.0.1:{metrics_port}/metrics", models)
            # Enough scrapes for rates and quantiles over the 15s windows.
            wait_for(
                lambda: float(s.query('count_over_time(up{job="budgetspan"}[1m])')[0]["value"][1]) >= 6,
                60,
                "six scrapes",
            )
            # On a loaded machine the workload can fall behind: wait until the last 15 s (the panels'
            # rate window) hold finished runs of each kind the panels divide by.
            wait_for(
                lambda: (
                    len(
                        s.query(
                            'sum by (outcome) (increase(budgetspan_runs_total{outcome=~"success|budget_exhausted"}[15s])) > 0'
                        )
                    )
                    == 2
                ),
                90,
                "successful and exhausted runs within 15 s",
            )
            yield s
    finally:
        if workload.stdin:
            workload.stdin.close()
        stop_process(workload)
        work_log.close()


def _finite(value: str) -> bool:
    return math.isfinite(float(value))


def _expand(expr: str, variables: dict[str, str]) -> str:
    expr = expand(expr, variables)
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def _dashboard(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def _label_values(stack: Stack, query: str, variables: dict[str, str] | None = None) -> list[str]:
    """Grafana's ``label_values(selector, label)`` through the HTTP API."""
    query = _expand(query, variables or {})
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert m, query
    values: list[str] = stack.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
    return values


def _check_panels(stack: Stack, dash: dict[str, Any], variables: dict[str, str]) -> list[str]:
    """Run every target of every panel; return the panels that got no data."""
    empty: list[str] = []
    end = time.time()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = _expand(target["expr"], variables)
            where = f"{dash['uid']} / {panel['title']} / {target['refId']}: {expr}"
            if panel["type"] == "stat":
                rows = stack.query(expr)
                ok = any(_finite(r["value"][1]) for r in rows)
            else:  # time series panels ask for a range, as Grafana does
                data = stack.api("query_range", query=expr, start=str(end - 30), end=str(end), step="2")
                ok = any(_finite(v) for r in data["result"] for _, v in r["values"])
            if not ok:
                empty.append(where)
    return empty


def test_every_overview_panel_returns_data(stack: Stack) -> None:
    dash = _dashboard("budgetspan-overview.json")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    # The workload is scraped directly: no series has a service label, and $service's All (.*)
    # must still select everything.
    assert _label_values(stack, variables["service"]["query"]) == []
    service = variables["service"]["allValue"]
    workflows = _label_values(stack, variables["workflow"]["query"], {"service": service})
    assert {"resolve_ticket", "triage"} <= set(workflows)  # finished runs only
    empty = _check_panels(stack, dash, {"workflow": variables["workflow"]["allValue"], "service": service})
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_workflow_panel_returns_data(stack: Stack) -> None:
    dash = _dashboard("budgetspan-workflow.json")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    workflow = "resolve_ticket"
    service = variables["service"]["allValue"]
    assert workflow in _label_values(stack, variables["workflow"]["query"], {"service": service})
    phases = set(
        _label_values(stack, variables["phase"]["query"], {"workflow": workflow, "service": service})
    )
    assert set(PHASES) <= phases
    empty = _check_panels(
        stack, dash, {"workflow": workflow, "phase": variables["phase"]["allValue"], "service": service}
    )
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_values_match_what_the_workload_did(stack: Stack) -> None:
    # One run is held open for the whole test.
    live = stack.query('sum(budgetspan_live_runs{workflow="long_research"})')
    assert float(live[0]["value"][1]) == 1
    # Every round: 5 resolve_ticket runs (2 exhausted, one of them a loop; 1 observed over its
    # limit but not stopped; 1 extended) + 4 triage runs (2 exhausted), and an escalation every
    # third round: 4/10 to 4/9.
    share = stack.query('sum(budgetspan_runs_total{outcome="budget_exhausted"}) / sum(budgetspan_runs_total)')
    assert 4 / 10 - 0.05 <= float(share[0]["value"][1]) <= 4 / 9 + 0.05
    would = stack.query("sum(budgetspan_budget_would_exhaust_total)")
    assert float(would[0]["value"][1]) > 0
    unreported = stack.query("sum(budgetspan_unreported_usage_calls_total)")
    assert float(unreported[0]["value"][1]) > 0
    reasons = {r["metric"]["reason"] for r in stack.query("budgetspan_budget_exhaustions_total")}
    assert reasons == {"max_model_calls", "max_tool_calls", "max_cost_usd", "no_progress"}
    extended = stack.query('sum(budgetspan_budget_extensions_total{limit="max_tool_calls"})')
    assert float(extended[0]["value"][1]) > 0
    loops = stack.query('sum(budgetspan_loops_total{type="repeated_call", status="stopped"})')
    assert float(loops[0]["value"][1]) > 0
    unpriced = stack.query("sum(budgetspan_unpriced_calls_total)")
    assert float(unpriced[0]["value"][1]) > 0
    cache = stack.query('sum(budgetspan_token_details_total{type="cache_read"})')
    assert float(cache[0]["value"][1]) > 0
    # the token series sum without double counting: input and output only
    assert {r["metric"]["type"] for r in stack.query("sum by (type) (budgetspan_tokens_total)")} == {
        "input",
        "output",
    }
    retries = stack.query('sum(budgetspan_retries_total{type="tool"})')
    assert float(retries[0]["value"][1]) > 0


def test_alert_rules_evaluate_on_real_series(stack: Stack) -> None:
    groups = stack.api("rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert len(rules) >= 5
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))

    def pending() -> bool:
        states = {a["labels"]["alertname"]: a["state"] for a in stack.api("alerts")["alerts"]}
        return states.get("BudgetspanBudgetExhaustionRateHigh") in ("pending", "firing") and states.get(
            "BudgetspanUnpricedModelCalls"
        ) in ("pending", "firing")

    wait_for(pending, 20, "the exhaustion and unpriced alerts to go pending")
    # The workload streams some calls without usage: the share alert sees it on real series.
    share = stack.query(
        next(r["query"] for r in rules.values() if r["name"] == "BudgetspanUnreportedUsageShareHigh")
    )
    assert share, "unreported usage share above 1% on the workload"
    states = {a["labels"]["alertname"]: a["state"] for a in stack.api("alerts")["alerts"]}
    assert "BudgetspanUnreportedUsageShareHigh" in states
    # The scrape works: neither scrape alert is pending.
    assert "BudgetspanScrapeDown" not in states and "BudgetspanScrapeMissing" not in states
    # The threshold recording rule evaluates to the one configured number.
    assert float(stack.query("budgetspan:spend_rate_alert_threshold_usd_per_hour")[0]["value"][1]) == 10


def test_exemplars_reach_prometheus_for_every_panel_that_shows_them(stack: Stack) -> None:
    """Prometheus scrapes OpenMetrics (it asks for it first) and stores the exemplars; each panel
    query flagged ``exemplar`` gets exemplars back, each a 32-hex-digit trace id."""
    end = time.time()
    queries = [
        (f"{dash['uid']} / {p['title']}", t["expr"], variables)
        for name in ("budgetspan-overview.json", "budgetspan-workflow.json")
        for dash in [_dashboard(name)]
        for variables in [
            {v["name"]: v.get("allValue") or ".*" for v in dash["templating"]["list"] if v["type"] == "query"}
        ]
        for p in dash["panels"]
        for t in p.get("targets", [])
        if t.get("exemplar")
    ]
    assert len(queries) >= 6
    missing = []
    for where, expr, variables in queries:
        if "workflow" in variables and variables["workflow"] == ".*" and "budgetspan-workflow" in where:
            variables = {**variables, "workflow": "resolve_ticket"}
        data = stack.api(
            "query_exemplars", query=_expand(expr, variables), start=str(end - 300), end=str(end)
        )
        found = [e for series in data for e in series["exemplars"]]
        if not found:
            missing.append(where)
        for e in found:
            assert re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]), e
    assert not missing, "no exemplars for:\n" + "\n".join(missing)


def test_promtool_check_metrics_on_our_exposition(stack: Stack) -> None:
    with urllib.request.urlopen(stack.metrics_url, timeout=10) as resp:
        body = resp.read()
    assert b"budgetspan_runs_total" in body
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    problems = (r.stdout + r.stderr).decode()
    assert r.returncode == 0, problems
    assert "budgetspan_" not in problems, problems
