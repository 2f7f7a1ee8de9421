"""dashboards/: the committed JSON is what the generator makes, is importable Grafana JSON, and
only queries metrics budgetspan actually exposes. (Every query also runs on a real Prometheus in
test_prometheus_e2e.py.)"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

import budgetspan
from budgetspan import events
from budgetspan.accounting.ledger import Spend
from budgetspan.processors.metrics import BudgetspanMetrics

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = REPO / "dashboards"
BUILTINS = {"__rate_interval", "__range", "__interval", "datasource"}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bs_dash_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


NAMES = ["budgetspan-overview.json", "budgetspan-workflow.json"]

# What Grafana's importer needs of a classic (v1) dashboard, and what we promise on top.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time", "tags"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "type"]},
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["row", "stat", "timeseries"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {
                                "refId": {"type": "string", "pattern": "^[A-Z]$"},
                                "expr": {"type": "string", "minLength": 1},
                            },
                        },
                    },
                    "datasource": {
                        "type": "object",
                        "required": ["type", "uid"],
                        "properties": {"type": {"const": "prometheus"}},
                    },
                },
            },
        },
    },
}


def test_committed_json_is_freshly_generated(tmp_path: Path) -> None:
    gen = generator()
    assert gen.main(["--out", str(tmp_path)]) == 0
    for name in NAMES:
        assert (tmp_path / name).read_text() == (DASHBOARDS / name).read_text(), (
            f"{name} is stale: run .venv/bin/python dashboards/generate.py"
        )
    assert gen.main(["--check"]) == 0
    # positive control: --check does catch a stale file
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / NAMES[0]
    stale.write_text(stale.read_text().replace('"title"', '"titel"', 1))
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_is_valid_grafana_json(name: str) -> None:
    dash = load(name)
    jsonschema.validate(dash, SCHEMA)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # No two panels overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
    for p in panels(dash):
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            for var in re.findall(r"\$\{?(\w+)", t["expr"]):
                assert var in variables | BUILTINS, f"{p['title']}: undefined ${var}"
    # It also parses into grafana-foundation-sdk's typed models and back, unchanged.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard
        from grafana_foundation_sdk.models.prometheus import Dataquery

        register_default_plugins()
        model = Dashboard.from_json(dash)
    assert json.loads(JSONEncoder(sort_keys=True).encode(model)) == dash
    typed = [t for p in (model.panels or []) for t in (getattr(p, "targets", None) or [])]
    assert typed and all(isinstance(t, Dataquery) for t in typed)


def exposed_names() -> set[str]:
    """Every sample name budgetspan's metrics can expose, from a real registry after real runs."""
    registry = CollectorRegistry()
    metrics = BudgetspanMetrics(registry)
    out: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            out.add(family.name + "_total")
        elif family.type == "histogram":
            out |= {family.name + "_bucket", family.name + "_sum", family.name + "_count"}
        else:
            out.add(family.name)
    del metrics
    return out


@pytest.mark.parametrize("name", NAMES)
def test_queries_only_use_exposed_metric_names(name: str) -> None:
    known = exposed_names()
    assert "budgetspan_runs_total" in known and "budgetspan_run_cost_usd_sum" in known
    used = {
        m
        for p in panels(load(name))
        for t in p["targets"]
        for m in re.findall(r"\bbudgetspan_\w+", t["expr"])
    }
    for v in load(name)["templating"]["list"]:
        used |= set(re.findall(r"\bbudgetspan_\w+", str(v.get("query", ""))))
    assert used, "no budgetspan metric queried"
    assert used <= known, f"queries name metrics nobody exposes: {sorted(used - known)}"


def test_overview_has_the_required_panels() -> None:
    titles = {p["title"] for p in panels(load("budgetspan-overview.json"))}
    for required in (
        "Cost per successful task",
        "Spend rate",
        "Runs by outcome",
        "Budget exhaustions by reason",
        "Budget-exhaustion rate",
        "p95 duration by phase",
        "Cost by phase and model ($/h)",
        "Tokens by type",
        "Cache-read share of input tokens",
        "Tool latency p95 by tool",
        "Tool errors by tool",
        "Retries by type",
        "Unpriced model calls",
        "Live runs",
        "Jobs by state",
        "Queue wait p50 / p95",
        "Cache hit rate by tool",
        "Cache savings by tool ($/h)",
        "Prompt caching net saved by workflow ($/h)",
    ):
        assert required in titles, required


def test_drilldown_is_per_workflow() -> None:
    dash = load("budgetspan-workflow.json")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["workflow"]["type"] == "query" and not variables["workflow"]["multi"]
    assert "$workflow" in variables["phase"]["query"]
    for p in panels(dash):
        for t in p["targets"]:
            assert 'workflow="$workflow"' in t["expr"], p["title"]


@pytest.mark.parametrize("name", NAMES)
def test_timeseries_legends_are_on_and_rates_read_as_events_per_second(name: str) -> None:
    """Every time series shows its legend with a multi-series tooltip; panels split by more than one
    label or by a many-valued one (model, tool, phase, workflow) get a table legend; no req/s."""
    for p in panels(load(name)):
        unit = p["fieldConfig"]["defaults"].get("unit", "")
        assert unit not in {"reqps", "rps", "ops"}, f"{p['title']}: {unit}"
        if p["type"] != "timeseries":
            continue
        legend, tooltip = p["options"]["legend"], p["options"]["tooltip"]
        assert legend["showLegend"] and legend["displayMode"] in {"list", "table"}, p["title"]
        assert tooltip["mode"] == "multi", p["title"]
        labels = {
            lab.strip()
            for t in p["targets"]
            for m in re.findall(r"by \(([^)]*)\)", t["expr"])
            for lab in m.split(",")
        } - {"le"}
        many = (
            len(p["targets"]) > 1 or len(labels) > 1 or bool(labels & {"model", "tool", "phase", "workflow"})
        )
        assert legend["displayMode"] == ("table" if many else "list"), p["title"]
        if (
            "by (outcome)" in p["targets"][0]["expr"]
            and "rate(budgetspan_runs_total" in p["targets"][0]["expr"]
        ):
            assert unit == "suffix: runs/s", p["title"]
        if "budget_exhaustions_total" in p["targets"][0]["expr"]:
            assert unit == "suffix: runs/s", p["title"]


def test_dashboards_link_to_each_other() -> None:
    over, wf = load("budgetspan-overview.json"), load("budgetspan-workflow.json")
    for src, dst in ((over, wf), (wf, over)):
        urls = [link for link in src["links"] if link["type"] == "link"]
        assert any(u["url"] == f"/d/{dst['uid']}" and u["includeVars"] and u["keepTime"] for u in urls)
    # Per-workflow series on the overview open that workflow's dashboard.
    data_links = [link["url"] for p in panels(over) for link in p["fieldConfig"]["defaults"].get("links", [])]
    assert data_links and all(
        u.startswith(f"/d/{wf['uid']}?var-workflow=${{__field.labels.workflow}}") for u in data_links
    )


@pytest.mark.parametrize("name", NAMES)
def test_service_and_workflow_variables_apply_to_every_panel_they_can(name: str) -> None:
    """$service (the collector's label; All is .*, which matches series without it) is on every
    selector; $workflow on every query whose series have a workflow label."""
    dash = load(name)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    svc = variables["service"]
    assert svc["includeAll"] and svc["allValue"] == ".*" and svc["current"]["value"] == "$__all"
    assert "$service" in variables["workflow"]["query"]
    # the series families that carry no workflow label (provider and model only)
    no_workflow = {
        "budgetspan_time_to_first_token_seconds",
        "budgetspan_model_call_duration_seconds",
        "budgetspan_unpriced_calls",
        "budgetspan_unreported_usage_calls",
        "budgetspan_cache_requests",
        "budgetspan_cache_saved_usd",
    }
    for p in panels(dash):
        for t in p["targets"]:
            selectors = re.findall(r"\b(budgetspan_\w+)\{([^}]*)\}", t["expr"])
            assert selectors and len(selectors) == len(re.findall(r"\bbudgetspan_\w+", t["expr"])), p["title"]
            for metric, sel in selectors:
                assert 'service=~"$service"' in sel, (p["title"], metric)
                family = re.sub(r"_(total|bucket|sum|count)$", "", metric)
                if family in no_workflow:
                    assert "workflow" not in sel and "no workflow label" in p.get("description", "")
                else:
                    assert "$workflow" in sel, (p["title"], metric)


def test_cost_per_success_keeps_failed_runs_cost(tracing: Any) -> None:
    """The panel's formula, checked on real numbers: all runs' cost / successful runs."""
    registry = CollectorRegistry()
    metrics = BudgetspanMetrics(registry)
    events.add_listener(metrics)
    try:
        for outcome in ("success", "fail"):
            with budgetspan.run("wf") as run:
                run.add_spend(Spend(cost_usd=0.25))
                if outcome == "fail":
                    run.fail()
    finally:
        events.remove_listener(metrics)
    total = sum(
        registry.get_sample_value("budgetspan_run_cost_usd_sum", {"workflow": "wf", "outcome": o}) or 0.0
        for o in ("success", "failure")
    )
    successes = registry.get_sample_value("budgetspan_runs_total", {"workflow": "wf", "outcome": "success"})
    assert successes == 1
    assert total / successes == pytest.approx(0.5)
    expr = next(
        t["expr"]
        for p in panels(load("budgetspan-overview.json"))
        if p["title"] == "Cost per successful task"
        for t in p["targets"]
    )
    assert "budgetspan_run_cost_usd_sum{" in expr and 'outcome="success"' in expr.split("/")[1]
    assert 'outcome="success"' not in expr.split("/")[0]


def test_duration_and_cost_panels_show_exemplars_linked_to_the_trace_data_source() -> None:
    """Panels over the traced histograms ask for exemplars (one query each); the provisioned
    Prometheus data source links an exemplar's trace_id to the provisioned Jaeger data source;
    compose's Prometheus keeps exemplars."""
    import yaml

    from budgetspan import attributes as A

    traced = [f"{m}_bucket" for m in (A.M_RUN_COST, A.M_RUN_DURATION, A.M_MODEL_CALL_DURATION)]
    for name in NAMES:
        for p in panels(load(name)):
            targets = p.get("targets", [])
            flagged = [t for t in targets if t.get("exemplar")]
            over_traced = [t for t in targets if any(m in t["expr"] for m in traced)]
            assert all(any(m in t["expr"] for m in traced) or A.M_TOOL_DURATION in t["expr"] for t in flagged)
            if over_traced and p["type"] == "timeseries":
                assert len(flagged) == 1, (name, p["title"])
    provisioning = REPO / "collector-config" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    sources = {d["uid"]: d for d in yaml.safe_load(provisioning.read_text())["datasources"]}
    (link,) = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == A.EXEMPLAR_TRACE_LABEL
    assert sources[link["datasourceUid"]]["type"] == "jaeger"
    compose = yaml.safe_load((REPO / "collector-config" / "compose.yaml").read_text())
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]
    assert sources["jaeger"]["url"].startswith("http://jaeger:")
    assert "jaeger" in compose["services"]
