"""budgetspan's Prometheus series, fed from spans at the collector tier, with a ``service`` label.

The same names, label names, buckets and exposition code as in-process
(``processors/metrics.py`` and ``processors/metric_cells.py``, imported rather than copied), so the
bundled dashboards and alert rules read collector-tier data unchanged; ``service`` (the
resource's ``service.name``) is the one label added. Label values are capped per label and label
sets per family as in-process (then ``other``). One lock per update: rotel may call the processor from several
threads; the scrape copies the numbers without it (``LocalFamily.snapshot``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from budgetspan import attributes as A
from budgetspan.processors.buckets import (
    CALL_SECONDS_BUCKETS,
    COST_BUCKETS,
    RUN_SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    UTILISATION_BUCKETS,
)
from budgetspan.processors.labels import LabelCaps, SeriesCap, cacheable, max_series_from_env
from budgetspan.processors.metric_cells import LocalCollector, LocalFamily

_CACHE_LIMIT = 4096


class Family:
    """A labelled family (``service`` last) with capped values, a series cap and cached children."""

    __slots__ = ("cache", "caps", "metric", "series_cap")

    def __init__(self, metric: LocalFamily, caps: LabelCaps, max_series: int) -> None:
        self.metric = metric
        self.caps = tuple(caps[name] for name in metric.label_names)
        self.series_cap = SeriesCap(metric.name, metric.label_names, max_series)
        self.cache: dict[tuple[Any, ...], Any] = {}

    def child(self, *values: Any) -> Any:
        c = self.cache.get(values)
        if c is None:
            key = self.series_cap(tuple(cap(v) for cap, v in zip(self.caps, values, strict=True)))
            c = self.metric.labels(*key)
            if len(self.cache) < _CACHE_LIMIT and cacheable(values):
                self.cache[values] = c
        return c

    # The two below are ``child(*values).inc(amount)`` and ``.observe(value)`` with one Python call
    # fewer each (a cached child is found by a C call): a GenAI span makes 6-8 updates. Measured
    # (``bench_collector.py --instructions``, the core alone): 108.3k -> 106.8k instructions a span.
    def add(self, amount: float, *values: Any) -> None:
        """A counter's amount (never negative: the callers add 1, token counts and costs)."""
        (self.cache.get(values) or self.child(*values)).value += amount

    def observe(self, value: float, *values: Any) -> None:
        (self.cache.get(values) or self.child(*values)).observe(value)


class TierMetrics:
    """The families the tier feeds; callers hold ``lock`` around updates."""

    # long: one declaration per metric family, in the in-process order; splitting it would scatter the list
    def __init__(
        self,
        registry: CollectorRegistry | None,
        max_label_values: int | None = None,
        max_series: int | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.caps = LabelCaps(max_label_values)
        self.max_series = max_series if max_series is not None else max_series_from_env()
        self._model_cells: dict[tuple[str, ...], ModelCells] = {}
        self._families: list[LocalFamily] = []
        wf, out, reason, phase = A.L_WORKFLOW, A.L_OUTCOME, A.L_REASON, A.L_PHASE
        prov, model, tool, typ, status = A.L_PROVIDER, A.L_MODEL, A.L_TOOL, A.L_TYPE, A.L_STATUS
        self.runs = self._family("counter", A.M_RUNS, "Finished runs by outcome.", (wf, out))
        self.run_cost = self._family(
            "histogram", A.M_RUN_COST, "Dollar cost of a run (priced calls only).", (wf, out), COST_BUCKETS
        )
        self.run_duration = self._family(
            "histogram", A.M_RUN_DURATION, "Wall-clock duration of a run.", (wf, out), RUN_SECONDS_BUCKETS
        )
        self.run_tokens = self._family(
            "histogram", A.M_RUN_TOKENS, "Input plus output tokens of a run.", (wf, out), TOKEN_BUCKETS
        )
        self.exhaustions = self._family(
            "counter", A.M_BUDGET_EXHAUSTIONS, "Runs stopped at a budget limit, by limit.", (wf, reason)
        )
        self.would_exhaust = self._family(
            "counter",
            A.M_BUDGET_WOULD_EXHAUST,
            "Observe mode: runs that enforce mode would have stopped, by limit.",
            (wf, reason),
        )
        self.extensions = self._family(
            "counter",
            A.M_BUDGET_EXTENSIONS,
            "Budget extensions granted at a limit, by limit.",
            (wf, A.L_LIMIT),
        )
        self.loops = self._family(
            "counter",
            A.M_LOOPS,
            "Loops found in runs' tool calls (stops only, in the tier).",
            (wf, typ, status),
        )
        self.utilisation = self._family(
            "histogram",
            A.M_BUDGET_UTILISATION,
            "Share of each set limit used when the run ended.",
            (wf, A.L_LIMIT),
            UTILISATION_BUCKETS,
        )
        self.model_calls = self._family(
            "counter",
            A.M_MODEL_CALLS,
            "Model calls (chat, completion, embeddings).",
            (wf, prov, model, status),
        )
        self.tokens = self._family(
            "counter",
            A.M_TOKENS,
            "Tokens by type: input (cached tokens included, as OTel) and output; they sum to the total.",
            (wf, prov, model, typ),
        )
        self.token_details = self._family(
            "counter",
            A.M_TOKEN_DETAILS,
            "Parts of the tokens: cache_read and cache_write (of input), reasoning (of output).",
            (wf, prov, model, typ),
        )
        self.cost = self._family("counter", A.M_COST, "Dollar cost of model calls.", (wf, phase, prov, model))
        self.unpriced = self._family(
            "counter", A.M_UNPRICED_CALLS, "Model calls with usage but no known price.", (prov, model)
        )
        self.unreported = self._family(
            "counter",
            A.M_UNREPORTED_USAGE_CALLS,
            "Model calls whose provider never reported tokens.",
            (prov, model),
        )
        self.model_duration = self._family(
            "histogram",
            A.M_MODEL_CALL_DURATION,
            "Duration of one model call.",
            (prov, model),
            CALL_SECONDS_BUCKETS,
        )
        self.ttft = self._family(
            "histogram",
            A.M_TIME_TO_FIRST_TOKEN,
            "Time to the first streamed token.",
            (prov, model),
            CALL_SECONDS_BUCKETS,
        )
        self.phase_duration = self._family(
            "histogram",
            A.M_PHASE_DURATION,
            "Duration of a phase block, or of a call outside any block.",
            (wf, phase),
            RUN_SECONDS_BUCKETS,
        )
        self.tool_calls = self._family("counter", A.M_TOOL_CALLS, "Tool calls by status.", (wf, tool, status))
        self.tool_duration = self._family(
            "histogram", A.M_TOOL_DURATION, "Duration of one tool call.", (wf, tool), CALL_SECONDS_BUCKETS
        )
        self.retries = self._family("counter", A.M_RETRIES, "Retries of model and tool calls.", (wf, typ))
        self.retrievals = self._family("counter", A.M_RETRIEVALS, "Retrievals by status.", (wf, status))
        self.internal_errors = self._family(
            "counter", A.M_INTERNAL_ERRORS, "Errors inside budgetspan (logged, never raised).", (typ,)
        )
        self.live_runs = self._family("gauge", A.M_LIVE_RUNS, "Runs in progress (held in the window).", (wf,))
        # The cache and provider prompt caching, from the spans' budgetspan.cache.* and token figures.
        self.cache_requests = self._family(
            "counter", A.M_CACHE_REQUESTS, "Cache requests by result.", (tool, A.L_RESULT)
        )
        self.cache_saved_usd = self._family(
            "counter", A.M_CACHE_SAVED_USD, "Recorded cost of the calls cache hits replaced.", (tool,)
        )
        self.cache_saved_s = self._family(
            "counter", A.M_CACHE_SAVED_SECONDS, "Duration cache hits saved.", (tool,)
        )
        self.prompt_saved = self._family(
            "counter",
            A.M_PROMPT_CACHE_SAVED_USD,
            "Prompt cache reads: saved against the input price.",
            (wf, prov, model),
        )
        self.prompt_premium = self._family(
            "counter",
            A.M_PROMPT_CACHE_WRITE_PREMIUM_USD,
            "Prompt cache writes: paid above the input price.",
            (wf, prov, model),
        )
        by_step = (wf, A.L_STEP, model, out)
        self.step_cost = self._family(
            "counter",
            A.M_STEP_COST,
            "Cost of each step of finished runs, by the step's model and outcome.",
            by_step,
        )
        self.step_runs = self._family(
            "counter", A.M_STEP_RUNS, "Finished runs per step and the step's model, by outcome.", by_step
        )
        if registry is not None:
            registry.register(LocalCollector(self._families))

    def model_cells(
        self, wf: str, phase: str, provider: str, model: str, status: str, svc: str
    ) -> ModelCells:
        """The cells a model call updates, found by one lookup of its labels rather than one per
        family. Measured (``bench_collector.py --instructions``, the core alone on a GenAI span):
        104.7k -> 95.5k instructions a span with its call count and durations (with the planned
        normalisation's 1.4k); the tokens and cost cells too: see bench/README.md, fourth pass."""
        key = (wf, phase, provider, model, status, svc)
        cells = self._model_cells.get(key)
        if cells is None:
            cells = ModelCells(self, key)
            if len(self._model_cells) < _CACHE_LIMIT and cacheable(key):
                self._model_cells[key] = cells
        return cells

    def _family(
        self, kind: str, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] = ()
    ) -> Family:
        metric = LocalFamily(kind, name, doc, (*labels, A.L_SERVICE), buckets)
        self._families.append(metric)
        return Family(metric, self.caps, self.max_series)


class ModelCells:
    """A model call's cells for one set of labels: its call count and durations, made at once,
    and its input, output and cost counters, made when first added to (a series is never shown
    as 0 for what was never reported or never priced)."""

    __slots__ = ("calls", "cost", "duration", "input", "labels", "metrics", "output", "phase_duration")

    def __init__(self, metrics: TierMetrics, labels: tuple[str, ...]) -> None:
        wf, phase, provider, model, status, svc = labels
        self.metrics, self.labels = metrics, labels
        self.calls = metrics.model_calls.child(wf, provider, model, status, svc)
        self.duration = metrics.model_duration.child(provider, model, svc)
        self.phase_duration = metrics.phase_duration.child(wf, phase, svc)
        self.input: Any = None
        self.output: Any = None
        self.cost: Any = None

    def spend(self, what: str) -> Any:
        """The ``input``, ``output`` or ``cost`` cell, made and kept on first use."""
        wf, phase, provider, model, _, svc = self.labels
        m = self.metrics
        if what == "cost":
            self.cost = m.cost.child(wf, phase, provider, model, svc)
            return self.cost
        cell = m.tokens.child(wf, provider, model, what, svc)
        setattr(self, what, cell)
        return cell
