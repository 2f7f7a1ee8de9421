"""The span exporters the standard ``OTEL_*`` variables ask for, for a provider ``configure()`` makes.

``opentelemetry-instrument`` reads ``OTEL_TRACES_EXPORTER`` itself; a program that calls
``budgetspan.configure()`` without it got a provider with no exporter, and its spans went nowhere
without a word. Here the same variables are read the way the SDK's configurator reads them: a
comma-separated list of exporter names from the ``opentelemetry_traces_exporter`` entry points;
``otlp`` picks the gRPC or HTTP exporter by ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_PROTOCOL`` (default ``grpc``, as the SDK); ``none`` adds nothing. With the
variable unset, an OTLP endpoint variable (``OTEL_EXPORTER_OTLP_ENDPOINT`` or its traces form)
means ``otlp``; otherwise no exporter is added (no surprise network traffic from ``configure()``).
The exporter itself reads the endpoint, headers and timeout variables.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points
from typing import Any

from opentelemetry.sdk.trace.export import BatchSpanProcessor

from budgetspan import attributes as A

log = logging.getLogger(__name__)


def exporter_names() -> list[str]:
    """The entry-point names the environment asks for (may be empty)."""
    raw = os.environ.get(A.ENV_OTEL_TRACES_EXPORTER, "").strip()
    if not raw:
        endpoint = os.environ.get(A.ENV_OTEL_OTLP_TRACES_ENDPOINT) or os.environ.get(A.ENV_OTEL_OTLP_ENDPOINT)
        raw = "otlp" if endpoint else ""
    names = []
    for name in (n.strip().lower() for n in raw.split(",")):
        if not name or name == "none":
            continue
        if name == "otlp":
            protocol = (
                os.environ.get(A.ENV_OTEL_OTLP_TRACES_PROTOCOL)
                or os.environ.get(A.ENV_OTEL_OTLP_PROTOCOL)
                or "grpc"
            ).strip()
            name = "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"
        names.append(name)
    return names


def add_exporters(provider: Any) -> list[str]:
    """Add a batch processor per exporter the environment names; the names of those added.

    An exporter that cannot be loaded (package not installed) is logged with the package to
    install, and the others are still added.
    """
    added = []
    for name in exporter_names():
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            log.warning(
                "budgetspan: %s=%s: no such span exporter installed (for OTLP: pip install "
                "opentelemetry-exporter-otlp)",
                A.ENV_OTEL_TRACES_EXPORTER,
                name,
            )
            continue
        try:
            exporter = next(iter(found)).load()()
        except Exception:
            log.warning("budgetspan: cannot create the %s span exporter", name, exc_info=True)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
        added.append(name)
    return added
