"""Histogram buckets, in base units, shared by the in-process metrics and the collector tier's."""

from __future__ import annotations

from typing import Final

# fmt: off
# Dollars: a cheap call is a fraction of a cent, a long agent run dollars.
COST_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Runs and phases: from a cached answer to a human approval.
RUN_SECONDS_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
)
# One model or tool call, and time to first token.
CALL_SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)
TOKEN_BUCKETS: Final = (
    100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0, 250000.0,
    500000.0, 1000000.0,
)
# fmt: on
# Share of a limit used at run end; above 1 happens in observe mode and with in-flight overshoot.
UTILISATION_BUCKETS: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0)
