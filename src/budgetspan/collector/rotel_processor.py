"""The file rotel loads: ``rotel start --otlp-with-trace-processor <this file>``.

Launch it with ``budgetspan collector`` (it sets ``PYTHONPATH`` to this environment, checks
health and treats any exit of rotel as a failure). At import: build the tier from the
environment (``BUDGETSPAN_CONFIG``, ``BUDGETSPAN_BUDGET``, ``BUDGETSPAN_PRICES``,
``BUDGETSPAN_COLLECTOR_*``) and serve its metrics on ``BUDGETSPAN_COLLECTOR_METRICS_PORT``.

rotel dies on an exception that escapes ``process_spans`` (after the sender got its 200: the
batch would be lost), so nothing escapes it.
"""

from __future__ import annotations

from typing import Any

from budgetspan.collector.hosts import rotel_resource_spans
from budgetspan.collector.serve import start_tier

TIER = start_tier()


def process_spans(resource_spans: Any) -> None:
    try:
        rotel_resource_spans(TIER, resource_spans)
    except BaseException:  # anything escaping here kills rotel and loses the batch
        pass
