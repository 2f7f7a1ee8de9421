"""collector-config/: promtool on the rules, their unit tests and the Prometheus config; the
structure of the collector, Alertmanager, Grafana provisioning and compose files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from budgetspan import cli
from budgetspan.cli import RUNBOOK_REF

REPO = Path(__file__).resolve().parent.parent
CFG = REPO / "collector-config"
REQUIRED_ALERTS = {
    "BudgetspanBudgetExhaustionRateHigh",
    "BudgetspanCostPerSuccessfulTaskHigh",
    "BudgetspanPhaseLatencyP95High",
    "BudgetspanUnpricedModelCalls",
    "BudgetspanSpendRateHigh",
    "BudgetspanUnreportedUsageShareHigh",
    "BudgetspanSpansDropped",
    "BudgetspanScrapeDown",
    "BudgetspanScrapeMissing",
}
RUNBOOK_BASE = RUNBOOK_REF + "#"  # relative to alerts.yml; `budgetspan assets --runbook-base` replaces it

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


def promtool(*args: str, cwd: Path = CFG) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load(name: str) -> Any:
    return yaml.safe_load((CFG / name).read_text())


def all_rules() -> list[dict[str, Any]]:
    return [r for g in load("alerts.yml")["groups"] for r in g["rules"]]


def rules() -> list[dict[str, Any]]:
    return [r for r in all_rules() if "alert" in r]


def runbook_sections() -> dict[str, str]:
    """runbooks.md: GitHub-style anchor of each '## ' heading -> its paragraph."""
    out: dict[str, str] = {}
    for block in (CFG / "runbooks.md").read_text().split("\n## ")[1:]:
        heading, _, body = block.partition("\n")
        out[heading.strip().lower()] = " ".join(body.split())
    return out


def test_promtool_check_rules_and_config() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in r.stdout
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_pass() -> None:
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_is_documented_and_tested_both_ways() -> None:
    alerts = {r["alert"]: r for r in rules()}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert "runbook" not in ann, f"{name}: the annotation is runbook_url"
        url = ann.get("runbook_url", "")
        assert url == RUNBOOK_BASE + name.lower(), f"{name}: runbook_url {url!r}"
        assert len(runbook_sections().get(name.lower(), "")) > 200, f"{name}: runbook paragraph missing"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load("alerts_test.yml")["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == set(alerts), "every alert needs a case where it fires"
    assert quiet == set(alerts), "every alert needs a case where it does not fire"


def test_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The rule tests are not vacuous: loosen a threshold and they fail."""
    text = (CFG / "alerts.yml").read_text()
    broken = (
        text.replace(") > 0.2\n", ") > 0.05\n")
        .replace("> 0.5\n", "> 0.05\n")
        .replace("expr: vector(10)\n", "expr: vector(100)\n")
        .replace("> 0.01\n", "> 0.2\n")
    )
    assert broken.count("0.05\n") == 2 and "vector(100)" in broken and "> 0.2\n" in broken
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(CFG / "alerts_test.yml", tmp_path / "alerts_test.yml")
    r = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert r.returncode != 0
    assert "BudgetspanBudgetExhaustionRateHigh" in r.stdout + r.stderr
    assert "BudgetspanCostPerSuccessfulTaskHigh" in r.stdout + r.stderr
    assert "BudgetspanSpendRateHigh" in r.stdout + r.stderr
    assert "BudgetspanUnreportedUsageShareHigh" in r.stdout + r.stderr


def test_spend_rate_threshold_is_set_in_one_place() -> None:
    """The $/h threshold is one recording rule; the alert compares with it, not with a literal."""
    records = {r["record"]: r["expr"] for r in all_rules() if "record" in r}
    assert records == {"budgetspan:spend_rate_alert_threshold_usd_per_hour": "vector(10)"}
    alert = next(r for r in rules() if r["alert"] == "BudgetspanSpendRateHigh")
    assert "budgetspan:spend_rate_alert_threshold_usd_per_hour" in alert["expr"]
    assert "budgetspan:spend_rate_alert_threshold_usd_per_hour" in alert["annotations"]["description"]
    assert not any(ch.isdigit() for ch in alert["expr"].split(">", 1)[1])


def test_collector_pipelines_are_wired() -> None:
    cfg = load("otel-collector.yaml")
    defined = {
        kind: set(cfg.get(kind, {})) for kind in ("receivers", "processors", "exporters", "connectors")
    }
    pipelines = cfg["service"]["pipelines"]
    for name, p in pipelines.items():
        for r in p["receivers"]:
            assert r in defined["receivers"] | defined["connectors"], (name, r)
        for e in p["exporters"]:
            assert e in defined["exporters"] | defined["connectors"], (name, e)
        assert p["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert "batch" in p["processors"]
    traces = pipelines["traces"]
    assert traces["receivers"] == ["otlp"]
    assert "spanmetrics" in traces["exporters"]  # the span-metrics path ...
    assert any("spanmetrics" in p["receivers"] for p in pipelines.values())  # ... to Prometheus
    assert any(e.startswith("otlp") for e in traces["exporters"])  # a tracing backend
    dims = {d["name"] for d in cfg["connectors"]["spanmetrics"]["dimensions"]}
    assert {"budgetspan.phase", "budgetspan.workflow", "gen_ai.request.model"} <= dims
    # Prometheus scrapes the collector's span metrics where the collector serves them.
    port = cfg["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    targets = [
        t
        for job in load("prometheus.yml")["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    ]
    assert f"otel-collector:{port}" in targets


def test_alertmanager_routes_to_defined_receivers() -> None:
    am = load("alertmanager.yml")
    names = {r["name"] for r in am["receivers"]}
    routes = [am["route"], *am["route"].get("routes", [])]
    assert all(r["receiver"] in names for r in routes)
    # Every receiver is reachable, and a route on a severity needs a rule with that severity.
    assert {r["receiver"] for r in routes} == names
    severities = {r["labels"]["severity"] for r in rules()}
    for route in routes:
        for m in route.get("matchers", []):
            if m.startswith("severity"):
                assert m.split("=", 1)[1].strip('"') in severities, f"route {m} matches no rule"
    alerts = {r["alert"] for r in rules()}
    for inhibit in am.get("inhibit_rules", []):
        for m in inhibit["source_matchers"] + inhibit["target_matchers"]:
            assert m.split("=", 1)[1].strip('"') in alerts


def test_compose_mounts_exist_and_grafana_provisioning_matches() -> None:
    compose = load("compose.yaml")
    services = compose["services"]
    assert {"otel-collector", "prometheus", "alertmanager", "grafana"} <= set(services)
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src, _dest = vol.split(":")[:2]
            assert (CFG / src).resolve().exists(), f"compose mounts missing {src}"
    prom_mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/alerts.yml" in prom_mounts  # rule_files: alerts.yml, next to the config
    grafana_dest = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    prov = yaml.safe_load((CFG / "grafana/provisioning/dashboards/budgetspan.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    assert (CFG / grafana_dest[path]).resolve() == REPO / "dashboards"
    assert list((REPO / "dashboards").glob("*.json")), "no dashboards to provision"
    ds = yaml.safe_load((CFG / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"].endswith(":9090")


def test_runbook_urls_point_at_runbooks_md_and_take_a_published_base(tmp_path: Path) -> None:
    """By default each runbook_url is relative to alerts.yml and its anchor is a heading of the
    runbooks.md beside it; ``budgetspan assets --runbook-base`` writes absolute URLs into the rules
    and their tests alike, and the promtool tests still pass on what it wrote."""
    for rule in rules():
        ref, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (CFG / ref).is_file() and anchor in runbook_sections()
    base = "https://wiki.example.org/ops/budgetspan-runbooks"
    assert cli.main(["assets", str(tmp_path), "--runbook-base", base + "/"]) == 0
    out = tmp_path / "collector-config"
    written = yaml.safe_load((out / "alerts.yml").read_text())
    urls = [r["annotations"]["runbook_url"] for g in written["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith(base + "#") for u in urls)
    assert RUNBOOK_REF + "#" not in (out / "alerts_test.yml").read_text()
    r = promtool("test", "rules", "alerts_test.yml", cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
