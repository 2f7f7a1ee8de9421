"""The tier inside a collector process: built from the environment, metrics served over HTTP.

Exposition: the in-process endpoint's ``MetricsServer`` (one thread, ``MAX_CONNECTIONS`` at once,
bounded idle time; prometheus-client's ``start_http_server`` started a thread per connection
without limit) on a thread of the process that hosts the tier (rotel's embedded interpreter),
reading the same cells the processor writes. Every scrape renders afresh (``reuse=0``): a
collector's exposition is read by one Prometheus, and tests read it right after a batch.
Measured against the alternatives (bench/README.md): serving from the collector's own process
needs no second process, no shared files and no push; a scrape costs the processor a lock hold
of well under a millisecond. A thread also closes runs that have gone idle, so the live-runs
gauge falls when traffic stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import CollectorRegistry

from budgetspan import attributes as A
from budgetspan.collector.core import Tier, TierOptions
from budgetspan.config import ConfigError, is_host
from budgetspan.config_numbers import count_at_most
from budgetspan.processors.metrics_server import MetricsServer

log = logging.getLogger(__name__)

DEFAULT_METRICS_ADDR = "127.0.0.1"


def start_tier() -> Tier:
    """The tier for this process, its metrics endpoint started (when a port is set) and its sweeper."""
    registry = CollectorRegistry()
    tier = Tier(TierOptions.from_env(), registry=registry)
    port = os.environ.get(A.ENV_COLLECTOR_METRICS_PORT, "").strip()
    if port:
        number = count_at_most(port, 65535)
        if number < 0:
            raise ConfigError(f"{A.ENV_COLLECTOR_METRICS_PORT}={port[:40]!r}: expected a port number")
        addr = os.environ.get(A.ENV_COLLECTOR_METRICS_ADDR, "").strip() or DEFAULT_METRICS_ADDR
        if not is_host(addr):
            raise ConfigError(
                f"{A.ENV_COLLECTOR_METRICS_ADDR}={addr[:40]!r}: expected an IP address or a host name"
            )
        MetricsServer(registry, addr, number, reuse=0.0).start()
    threading.Thread(target=_sweep_forever, args=(tier,), name="budgetspan-sweeper", daemon=True).start()
    tier.resolver.is_priced("openai", "gpt-4o-mini")  # the price table loads now, not under the first batch
    return tier


def _sweep_forever(tier: Tier, every_s: float = 1.0) -> None:
    while True:
        time.sleep(every_s)
        tier.sweep()
