"""Fixtures for the collector tier: a loopback OTLP/HTTP receiver, the tier launched with
``budgetspan collector`` (rotel), and a real Prometheus scraping it (one of each per module)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from .stack import ALERTS, Prometheus, Receiver, Tier, free_port, running_receiver, running_tier, wait_for


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as rec:
        yield rec


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Tier]:
    pytest.importorskip("rotel")
    with running_tier(tmp_path_factory.mktemp("tier"), receiver.endpoint) as t:
        yield t


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
