"""Fixtures for the collector tier: a loopback OTLP/HTTP receiver, the tier launched with
``budgetspan collector`` (rotel), and a real Prometheus scraping it (one of each per module)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.prometheus_server import Prometheus, running_prometheus

from .stack import Receiver, Tier, running_receiver, running_tier


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
    with running_prometheus(tmp, "budgetspan-collector", f"127.0.0.1:{tier.metrics_port}") as prom:
        yield prom
