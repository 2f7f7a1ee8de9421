"""``configure()``: everything set up in code, for programs not launched by opentelemetry-instrument.

Idempotent: the processors are added to a tracer provider once, and instrumentors are singletons
that ignore a second ``instrument()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from budgetspan import attributes as A
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import Mode
from budgetspan.accounting.pricing import set_default_resolver
from budgetspan.config import (
    get_config,
    load_config,
    parse_inline_budget,
    parse_mode,
    refresh_capture_content,
    set_config,
)
from budgetspan.instrumentation import instrument_all
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.processors.export_watch import watch_provider
from budgetspan.runs.context import set_tracer_provider

log = logging.getLogger(__name__)
_MARK = "_budgetspan_processors"
_lock = threading.Lock()


def install_processors(provider: Any, *, metrics_port: int | None = None) -> bool:
    """Add budgetspan's span processors to an SDK provider, once. False if not an SDK provider."""
    if not isinstance(provider, TracerProvider):
        log.warning(
            "budgetspan: the tracer provider is %s, not the SDK's; budgets are enforced by "
            "budgetspan's own wrappers only",
            type(provider).__name__,
        )
        _metrics_without_provider(metrics_port)
        return False
    with _lock:
        if getattr(provider, _MARK, None):
            return True
        metrics_processor: Any = None
        budget = BudgetSpanProcessor()
        processors: list[Any] = [budget]
        try:
            from budgetspan.processors import metrics_endpoint as endpoint

            # Not added to the provider (it does nothing per span: metrics come from events);
            # the budget processor's shutdown closes its endpoint.
            metrics_processor = endpoint.install(metrics_port)
            budget.closers.append(metrics_processor.shutdown)
        except ImportError:
            pass
        except Exception:
            log.warning("budgetspan: metrics are off", exc_info=True)
        traces_file = os.environ.get(A.ENV_TRACES_FILE, "").strip()
        if traces_file:
            try:
                from budgetspan.processors.file_export import file_span_processor

                processors.append(file_span_processor(traces_file))
            except ImportError:
                pass
            except Exception:
                log.warning("budgetspan: cannot write spans to %s", traces_file, exc_info=True)
        for p in processors:
            provider.add_span_processor(p)
        setattr(
            provider, _MARK, processors if metrics_processor is None else [*processors, metrics_processor]
        )
        watch_provider(provider)  # count spans the exporters lose (budgetspan_spans_dropped_total)
    _otel_metrics()
    return True


def _otel_metrics() -> None:
    """The same metrics through the OpenTelemetry Metrics API, on the global MeterProvider."""
    try:
        from budgetspan.processors import otel_metrics

        otel_metrics.install()
    except Exception:
        log.warning("budgetspan: OpenTelemetry metrics are off", exc_info=True)


def _metrics_without_provider(metrics_port: int | None) -> None:
    """Metrics come from budgetspan's events, not spans: serve them even with no SDK provider."""
    try:
        from budgetspan.processors import metrics_endpoint as endpoint

        endpoint.install(metrics_port)
    except ImportError:
        pass
    except Exception:
        log.warning("budgetspan: metrics are off", exc_info=True)
    _otel_metrics()


def configure(
    tracer_provider: Any = None,
    *,
    budget: Budget | str | None = None,
    mode: Mode | str | None = None,
    metrics_port: int | None = None,
    instrument: bool | Iterable[str] = True,
) -> Any:
    """Set budgetspan up in code: configuration, processors and every available instrumentor.

    ``budget`` (a Budget, inline limits or a profile name) and ``mode`` override the
    environment's defaults. ``instrument``: True for every installed library, False for none, or
    module names (``["openai", "anthropic"]``); libraries not yet imported are patched when the
    program imports them. Returns the tracer provider in use. Raises ConfigError on a bad value.
    """
    cfg = load_config()
    if budget is not None or mode is not None:
        default = cfg.default_budget
        if isinstance(budget, Budget):
            default = default.merged(budget)
        elif isinstance(budget, str):
            default = default.merged(
                parse_inline_budget(budget, cfg.profiles, source="configure(budget=...)")
            )
        new_mode = (
            cfg.mode if mode is None else parse_mode(str(getattr(mode, "value", mode)), "configure(mode=...)")
        )
        cfg = dataclasses.replace(cfg, default_budget=default, mode=new_mode)
    set_config(cfg)
    set_default_resolver(None)  # a new BUDGETSPAN_PRICES (validated above) is read afresh
    refresh_capture_content()
    provider = tracer_provider
    if provider is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = _new_provider()
    install_processors(provider, metrics_port=metrics_port)
    set_tracer_provider(provider)
    if instrument:
        instrument_all(provider, None if instrument is True else list(instrument))
    return provider


def _new_provider() -> Any:
    """An SDK provider with the exporters the ``OTEL_*`` variables name; one line if none."""
    from budgetspan.processors.span_exporters import add_exporters

    provider = TracerProvider()
    added = add_exporters(provider)
    asked_none = os.environ.get(A.ENV_OTEL_TRACES_EXPORTER, "").strip().lower() == "none"
    if not added and not asked_none and not os.environ.get(A.ENV_TRACES_FILE, "").strip():
        log.warning(
            "budgetspan: spans go nowhere (no exporter): set OTEL_TRACES_EXPORTER=otlp and "
            "OTEL_EXPORTER_OTLP_ENDPOINT, or %s=FILE, or pass configure(tracer_provider=...)",
            A.ENV_TRACES_FILE,
        )
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


def current_config_summary() -> dict[str, Any]:
    cfg = get_config()
    return {"mode": cfg.mode.value, "default_budget": cfg.default_budget.limits()}
