"""budgetspan at the collector tier: the same pricing, names and rules, over OTLP spans from any
service in any language.

Only the process can refuse a call before it leaves, so enforcement stays in-process. What this
tier does for every span that passes through it (``core.Tier``): normalise GenAI token attributes
from other instrumentations' names, price GenAI spans that carry no cost, tag the phase, redact
message content, account runs against budget profiles in observe mode, and feed budgetspan's
Prometheus metrics (plus a ``service`` label). Hosts: ``rotel`` (``rotel_processor.py``, launched by
``budgetspan collector``) and, as generated configuration, the OpenTelemetry Collector
(``otelcol.py``, ``budgetspan collector-config``).
"""
