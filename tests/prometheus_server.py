"""A real Prometheus (Debian package ``prometheus``) on loopback scraping one target with the
bundled alert rules, and a client for its HTTP API: one launcher for the end-to-end test of a
workload process and for the collector tier's tests."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.processes import free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "collector-config" / "alerts.yml"
#: Grafana's macros, as Grafana would expand them for a short, fresh time range.
MACROS = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "2s"}


def expand(expr: str, variables: dict[str, str]) -> str:
    """A dashboard query with Grafana's macros and the dashboard's ``$variables`` filled in."""
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    return expr


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result


@contextmanager
def running_prometheus(tmp: Path, job: str, target: str, *, exemplars: bool = False) -> Iterator[Prometheus]:
    """Prometheus scraping ``target`` (host:port) every second as ``job``, evaluating the bundled
    alert rules every second (its config checked by promtool first); yielded once the first scrape
    has succeeded, stopped when the block ends."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    cfg = tmp / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    cmd = [
        "prometheus",
        f"--config.file={cfg}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={tmp / 'data'}",
    ]
    if exemplars:
        cmd.append("--enable-feature=exemplar-storage")  # as compose.yaml runs it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"))
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def up() -> bool:
            r = prom.query(f'up{{job="{job}"}}')
            return bool(r) and r[0]["value"][1] == "1"

        wait_for(up, 60, "the first scrape")
        yield prom
    finally:
        stop_process(proc)
