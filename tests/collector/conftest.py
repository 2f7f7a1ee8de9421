"""Fixtures for the collector tier: a loopback OTLP/HTTP receiver, the tier launched with
``budgetspan collector`` (rotel), and a real Prometheus scraping it (one of each per module)."""

from __future__ import annotations

import gzip
import http.server
import re
import select
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .stack import ALERTS, BUDGETS_TOML, Prometheus, Receiver, Tier, free_port, launch, wait_for


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver(free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":  # rotel's exporter compresses
                body = gzip.decompress(body)
            rec.add(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", rec.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Tier]:
    pytest.importorskip("rotel")
    tmp = tmp_path_factory.mktemp("tier")
    budgets = tmp / "budgets.toml"
    budgets.write_text(BUDGETS_TOML)
    proc, _ = launch(tmp, receiver.endpoint, env={"BUDGETSPAN_CONFIG": str(budgets)})
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        m = re.match(r"READY otlp-http=(\S+) otlp-grpc=\S+ metrics=(\S+)", line)
        assert m, f"collector did not start: {line!r}\n{(tmp / 'collector.err').read_text()}"
        metrics_port = int(re.search(r":(\d+)/metrics", m.group(2)).group(1))  # type: ignore[union-attr]
        yield Tier(f"http://{m.group(1)}", m.group(2), metrics_port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, tier: Tier) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.skip("needs Debian's prometheus package")
    tmp = tmp_path_factory.mktemp("prom")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "budgetspan-collector",
                "static_configs": [{"targets": [f"127.0.0.1:{tier.metrics_port}"]}],
            }
        ],
    }
    cfg = tmp / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={cfg}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp / 'data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("w"),
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def up() -> bool:
            r = prom.query('up{job="budgetspan-collector"}')
            return bool(r) and r[0]["value"][1] == "1"

        wait_for(up, 60, "the first scrape")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
