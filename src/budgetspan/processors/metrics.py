"""Prometheus metrics for runs, calls, phases and budgets, with ``prometheus-client``.

Where the numbers come from: the ``budgetspan.events`` listeners, not the spans. Runs, calls and
phases emit events whether or not their span is sampled, and processors never see sampled-out
spans, so metrics fed from spans would be wrong under any sampler. The ``MetricsSpanProcessor``
that ``install()`` returns is therefore a no-op for spans; it exists so that the tracer
provider owns the exposition server's lifecycle (``shutdown()`` closes it). Foreign GenAI spans
(other instrumentations) still count: ``BudgetSpanProcessor`` turns them into call events.

Phase durations: every ``budgetspan.phase(...)`` block is observed once, under its phase; a
call made outside any phase block is observed under its default phase (``model_decision`` for a
chat, ``tool_execution`` for a tool, ``context_assembly`` for embeddings and retrieval), so p95
per phase is meaningful for code that never marks a phase. A call inside a phase block is not
observed again (its time is already in the block).

Exposition: ``BUDGETSPAN_METRICS_PORT`` on 127.0.0.1 (``BUDGETSPAN_METRICS_ADDR`` to change).
A port already in use is logged as an error and the program goes on. With
``PROMETHEUS_MULTIPROC_DIR`` set *before* ``prometheus_client`` is imported (pre-forking
servers such as gunicorn), each worker writes its values to that directory and the endpoint
serves the sum over all workers; the live-runs gauge uses ``livesum`` (call
``prometheus_client.multiprocess.mark_process_dead(pid)`` from the server's child-exit hook).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from budgetspan import attributes as A
from budgetspan.accounting.prompt_cache import spend_saving
from budgetspan.calls.call import sampled_trace_id
from budgetspan.processors.buckets import (
    CALL_SECONDS_BUCKETS,
    COST_BUCKETS,
    RUN_SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    UTILISATION_BUCKETS,
)
from budgetspan.processors.labels import LabelCaps, SeriesCap, cacheable, max_series_from_env
from budgetspan.processors.metric_cells import LocalCollector, LocalFamily
from budgetspan.processors.step_costs import StepCosts
from budgetspan.runs import context

if TYPE_CHECKING:
    from budgetspan.accounting.ledger import Spend
    from budgetspan.events import CacheRecord, CallRecord
    from budgetspan.runs.run import Run

log = logging.getLogger(__name__)

TOKEN_TYPES: Final = ("input", "output", "cache_read", "cache_write", "reasoning")
_CACHE_LIMIT: Final = 4096  # labelled children cached per metric (label values are capped anyway)


class _ModelSeries:
    """The labelled children one kind of model call feeds, found once per label set."""

    __slots__ = ("calls", "cost", "duration", "phase", "tokens", "ttft")

    def __init__(self) -> None:
        self.calls: Any = None
        self.duration: Any = None
        self.ttft: Any = None
        self.tokens: list[Any] = [None] * len(TOKEN_TYPES)
        self.cost: Any = None
        self.phase: Any = None


class _Family:
    """A labelled metric with per-label value caps, a per-family series cap and a cache of its
    labelled children (by the raw values, so a known label set skips both caps)."""

    __slots__ = ("cache", "caps", "metric", "series_cap")

    def __init__(
        self, metric: Any, name: str, labels: Sequence[str], caps: LabelCaps, max_series: int
    ) -> None:
        self.metric = metric
        self.caps = tuple(caps[label] for label in labels)
        self.series_cap = SeriesCap(name, labels, max_series)
        self.cache: dict[tuple[Any, ...], Any] = {}

    def child(self, *values: Any) -> Any:
        c = self.cache.get(values)
        if c is None:
            key = self.series_cap(tuple(cap(v) for cap, v in zip(self.caps, values, strict=True)))
            c = self.metric.labels(*key)
            if len(self.cache) < _CACHE_LIMIT and cacheable(values):
                self.cache[values] = c
        return c


def _sane(value: float) -> bool:
    """Finite and not negative: one NaN or inf from a foreign span would poison a series forever."""
    return 0.0 <= value < math.inf


def _run_trace(run: Run) -> int | None:
    """The trace a run's exemplar links to: the run's, or the current one for a run without a span
    of its own (an implicit run per trace)."""
    span = run.span if run.span is not None else trace.get_current_span()
    return sampled_trace_id(span.get_span_context())


def multiprocess_mode() -> bool:
    return bool(os.environ.get(A.ENV_PROMETHEUS_MULTIPROC_DIR))


class BudgetspanMetrics:
    """The metric families and the ``budgetspan.events`` listener that feeds them."""

    # long: one declaration per metric family, in the order DESIGN.md lists them; splitting it would scatter the list
    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        max_label_values: int | None = None,
        max_series: int | None = None,
    ) -> None:
        self.registry = registry
        self.caps = LabelCaps(max_label_values)
        self.max_series = max_series if max_series is not None else max_series_from_env()
        # One lock per event for every update it makes (the scrape copies without it).
        self._lock = threading.Lock()
        self._live: dict[str, str] = {}  # run id -> workflow, for runs seen starting
        self._model_series: dict[tuple[Any, ...], _ModelSeries] = {}
        wf, out, reason, phase = A.L_WORKFLOW, A.L_OUTCOME, A.L_REASON, A.L_PHASE
        prov, model, tool, typ, status = A.L_PROVIDER, A.L_MODEL, A.L_TOOL, A.L_TYPE, A.L_STATUS
        client = multiprocess_mode()  # values must go to prometheus-client's per-process files
        # Trace-id exemplars on the cost and duration histograms (OpenMetrics exposition).
        self._exemplars = not client  # prometheus-client's multiprocess files keep no exemplars
        local: list[LocalFamily] = []

        def family(
            kind: str, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> _Family:
            metric: Any
            if not client:
                metric = LocalFamily(kind, name, doc, labels, buckets)
                local.append(metric)
            elif kind == "counter":
                metric = Counter(name, doc, labels, registry=registry)
            elif kind == "gauge":
                metric = Gauge(name, doc, labels, registry=registry, multiprocess_mode="livesum")
            else:
                metric = Histogram(name, doc, labels, buckets=buckets, registry=registry)
            return _Family(metric, name, labels, self.caps, self.max_series)

        def counter(name: str, doc: str, labels: Sequence[str]) -> _Family:
            return family("counter", name, doc, labels, ())

        def hist(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> _Family:
            return family("histogram", name, doc, labels, buckets)

        self.runs = counter(A.M_RUNS, "Finished runs by outcome.", (wf, out))
        self.run_cost = hist(
            A.M_RUN_COST, "Dollar cost of a run (priced calls only).", (wf, out), COST_BUCKETS
        )
        self.run_duration = hist(
            A.M_RUN_DURATION,
            "Wall-clock duration of a run.",
            (wf, out),
            RUN_SECONDS_BUCKETS,
        )
        self.run_tokens = hist(A.M_RUN_TOKENS, "Input plus output tokens of a run.", (wf, out), TOKEN_BUCKETS)
        self.exhaustions = counter(
            A.M_BUDGET_EXHAUSTIONS, "Runs stopped at a budget limit, by limit.", (wf, reason)
        )
        self.would_exhaust = counter(
            A.M_BUDGET_WOULD_EXHAUST,
            "Observe mode: runs that enforce mode would have stopped, by limit.",
            (wf, reason),
        )
        self.utilisation = hist(
            A.M_BUDGET_UTILISATION,
            "Share of each set limit used when the run ended.",
            (wf, A.L_LIMIT),
            UTILISATION_BUCKETS,
        )
        self.model_calls = counter(
            A.M_MODEL_CALLS, "Model calls (chat, completion, embeddings).", (wf, prov, model, status)
        )
        self.tokens = counter(
            A.M_TOKENS,
            "Tokens by type: input (cached tokens included, as OTel) and output; they sum to the total.",
            (wf, prov, model, typ),
        )
        self.token_details = counter(
            A.M_TOKEN_DETAILS,
            "Parts of the tokens: cache_read and cache_write (of input), reasoning (of output).",
            (wf, prov, model, typ),
        )
        self.cost = counter(A.M_COST, "Dollar cost of model calls.", (wf, phase, prov, model))
        self.unpriced = counter(
            A.M_UNPRICED_CALLS, "Model calls with usage but no known price.", (prov, model)
        )
        self.unreported = counter(
            A.M_UNREPORTED_USAGE_CALLS,
            "Model calls whose provider never reported tokens.",
            (prov, model),
        )
        self.model_duration = hist(
            A.M_MODEL_CALL_DURATION,
            "Duration of one model call.",
            (prov, model),
            CALL_SECONDS_BUCKETS,
        )
        self.ttft = hist(
            A.M_TIME_TO_FIRST_TOKEN,
            "Time to the first streamed token.",
            (prov, model),
            CALL_SECONDS_BUCKETS,
        )
        self.phase_duration = hist(
            A.M_PHASE_DURATION,
            "Duration of a phase block, or of a call outside any block.",
            (wf, phase),
            RUN_SECONDS_BUCKETS,
        )
        self.tool_calls = counter(A.M_TOOL_CALLS, "Tool calls by status.", (wf, tool, status))
        self.tool_duration = hist(
            A.M_TOOL_DURATION,
            "Duration of one tool call (all attempts).",
            (wf, tool),
            CALL_SECONDS_BUCKETS,
        )
        self.retries = counter(A.M_RETRIES, "Retries of model and tool calls.", (wf, typ))
        self.retrievals = counter(A.M_RETRIEVALS, "Retrievals by status.", (wf, status))
        self.internal_errors = counter(
            A.M_INTERNAL_ERRORS, "Errors inside budgetspan (logged, never raised).", (typ,)
        )
        self.spans_dropped = counter(
            A.M_SPANS_DROPPED, "Spans the exporter pipeline lost (queue full, export failed).", (A.L_REASON,)
        )
        self.live_runs = family("gauge", A.M_LIVE_RUNS, "Runs in progress.", (wf,), ())
        self.jobs = counter(A.M_JOBS, "Background jobs entering each state.", (wf, A.L_STATE))
        self.job_queue_wait = hist(
            A.M_JOB_QUEUE_WAIT, "A job's wait from submission to its first start.", (wf,), RUN_SECONDS_BUCKETS
        )
        # At a limit and in a loop (issue 18).
        self.extensions = counter(
            A.M_BUDGET_EXTENSIONS,
            "Budget extensions granted at a limit (on_limit), by limit.",
            (wf, A.L_LIMIT),
        )
        self.loops = counter(
            A.M_LOOPS, "Loops found in runs' tool calls, by type; warned or stopped.", (wf, typ, status)
        )
        self.tool_refusals = counter(
            A.M_TOOL_REFUSALS,
            "Tool calls refused by the tool's own cap (the run goes on).",
            (wf, tool, reason),
        )
        # The cache (budgetspan.cache) and provider prompt caching (accounting.prompt_cache).
        self.cache_requests = counter(A.M_CACHE_REQUESTS, "Cache requests by result.", (tool, A.L_RESULT))
        self.cache_saved_usd = counter(
            A.M_CACHE_SAVED_USD, "Recorded cost of the calls cache hits replaced.", (tool,)
        )
        self.cache_saved_s = counter(A.M_CACHE_SAVED_SECONDS, "Duration cache hits saved.", (tool,))
        self.prompt_saved = counter(
            A.M_PROMPT_CACHE_SAVED_USD,
            "Prompt cache reads: saved against the input price.",
            (wf, prov, model),
        )
        self.prompt_premium = counter(
            A.M_PROMPT_CACHE_WRITE_PREMIUM_USD,
            "Prompt cache writes: paid above the input price.",
            (wf, prov, model),
        )
        by_step = (wf, A.L_STEP, model, out)
        self.steps = StepCosts(
            counter(
                A.M_STEP_COST,
                "Cost of each step of finished runs, by the step's model and the run's outcome.",
                by_step,
            ),
            counter(A.M_STEP_RUNS, "Finished runs per step and the step's model, by outcome.", by_step),
        )
        if local and registry is not None:
            registry.register(LocalCollector(local))

    # runs ------------------------------------------------------------------------------------
    def on_run_start(self, run: Run) -> None:
        with self._lock:
            self._live[run.id] = run.workflow
            self.live_runs.child(run.workflow).inc()

    def on_run_end(self, run: Run) -> None:
        with self._lock:
            self._run_end(run)

    def _run_end(self, run: Run) -> None:
        started = self._live.pop(run.id, None)
        if started is not None:  # a run that started before metrics were installed is not live here
            self.live_runs.child(started).dec()
        wf = run.workflow
        outcome = run.outcome.value if run.outcome is not None else "unknown"
        usage = run.usage
        self.runs.child(wf, outcome).inc()
        trace_id = _run_trace(run) if self._exemplars else None
        if _sane(usage.cost_usd):
            self.run_cost.child(wf, outcome).observe(usage.cost_usd, trace_id)
        self.run_tokens.child(wf, outcome).observe(usage.input_tokens + usage.output_tokens)
        duration = run.duration_s if run.duration_s is not None else usage.wall_clock_s
        self.run_duration.child(wf, outcome).observe(duration, trace_id)
        self.steps.run_end(run.id, wf, outcome)
        for limit, allowed in run.budget.limits().items():
            if allowed <= 0:
                continue  # a zero limit has no share to speak of
            used = duration if limit == "max_wall_clock_s" else usage.value_of(limit)
            if _sane(used):
                self.utilisation.child(wf, limit).observe(used / allowed)

    def on_exhausted(self, run: Run, reason: str, observe: bool) -> None:
        if reason == "cancelled":
            return  # a cancellation is an outcome, not a budget limit
        family = self.would_exhaust if observe else self.exhaustions
        with self._lock:
            family.child(run.workflow, reason).inc()

    def on_phase_end(self, run: Run | None, workflow: str, phase: str, duration_s: float) -> None:
        with self._lock:
            self.phase_duration.child(workflow, phase).observe(duration_s)

    # calls -----------------------------------------------------------------------------------
    def on_call_end(self, r: CallRecord) -> None:
        in_block = context.current_phase() is not None
        if r.kind == "model":  # the common case, in one call under one lock
            lock = self._lock
            lock.acquire()  # (acquire/release: a ``with`` costs twice as much on CPython 3.11)
            try:
                series = self._model_call(r)
                if r.run is not None:
                    self.steps.call(r)
                if r.retries:
                    self.retries.child(r.workflow, r.kind).inc(r.retries)
                if not in_block:  # not inside a phase block: the call stands for its phase
                    ph = series.phase
                    if ph is None:
                        ph = series.phase = self.phase_duration.child(r.workflow, r.phase)
                    ph.observe(r.duration_s)
            finally:
                lock.release()
            return
        with self._lock:
            self._call_end(r, in_block)

    def _call_end(self, r: CallRecord, in_block: bool) -> None:
        """A tool call or a retrieval."""
        wf = r.workflow
        if r.kind == "tool":
            self.tool_calls.child(wf, r.tool, r.status).inc()
            self.tool_duration.child(wf, r.tool).observe(
                r.duration_s, r.trace_id if self._exemplars else None
            )
        else:
            self.retrievals.child(wf, r.status).inc()
        if r.retries:
            self.retries.child(wf, r.kind).inc(r.retries)
        if not in_block:  # not inside a phase block: the call stands for its phase
            self.phase_duration.child(wf, r.phase).observe(r.duration_s)

    def _model_call(self, r: CallRecord) -> _ModelSeries:
        wf, prov, model = r.workflow, r.provider, r.model
        key = (wf, prov, model, r.status, r.phase)
        s = self._model_series.get(key)
        if s is None:
            s = _ModelSeries()
            if len(self._model_series) < _CACHE_LIMIT and cacheable(key):
                self._model_series[key] = s
        # Each labelled child is looked up once per label set, then kept on ``s``: a model call
        # touches up to 7 series, and a family lookup (tuple, dict, caps) costs about a µs.
        # Children are made only when first used, so no empty series appears in the exposition.
        c = s.calls
        if c is None:
            c = s.calls = self.model_calls.child(wf, prov, model, r.status)
        c.inc()
        c = s.duration
        if c is None:
            c = s.duration = self.model_duration.child(prov, model)
        c.observe(r.duration_s, r.trace_id if self._exemplars else None)
        if r.time_to_first_token_s is not None:
            c = s.ttft
            if c is None:
                c = s.ttft = self.ttft.child(prov, model)
            c.observe(r.time_to_first_token_s)
        spend = r.spend
        if spend is not None:
            tokens = s.tokens
            for i, n in enumerate(
                (
                    spend.input_tokens,
                    spend.output_tokens,
                    spend.cache_read_tokens,
                    spend.cache_write_tokens,
                    spend.reasoning_tokens,
                )
            ):
                if n is not None and n > 0:
                    c = tokens[i]
                    if c is None:
                        family = self.tokens if i < 2 else self.token_details  # input, output | parts
                        c = tokens[i] = family.child(wf, prov, model, TOKEN_TYPES[i])
                    c.inc(n)
        cost = r.cost_usd if r.cost_usd is not None else (spend.cost_usd if spend else None)
        if cost is not None and _sane(cost):
            c = s.cost
            if c is None:
                c = s.cost = self.cost.child(wf, r.phase, prov, model)
            c.inc(cost)
        elif r.unpriced:
            self.unpriced.child(prov, model).inc()
        if r.unreported_usage:
            self.unreported.child(prov, model).inc()
        if spend is not None and (spend.cache_read_tokens or spend.cache_write_tokens):
            self._prompt_cache(r, spend)
        return s

    def _prompt_cache(self, r: CallRecord, spend: Spend) -> None:
        saving = spend_saving(r.provider, r.model, spend)
        if saving is not None:
            if saving.saved_usd > 0 and _sane(saving.saved_usd):
                self.prompt_saved.child(r.workflow, r.provider, r.model).inc(saving.saved_usd)
            if saving.premium_usd > 0 and _sane(saving.premium_usd):
                self.prompt_premium.child(r.workflow, r.provider, r.model).inc(saving.premium_usd)

    def on_cache(self, r: CacheRecord) -> None:
        with self._lock:
            self.cache_requests.child(r.tool, r.result).inc()
            if r.saved_usd is not None and _sane(r.saved_usd):
                self.cache_saved_usd.child(r.tool).inc(r.saved_usd)
            if r.saved_s is not None and _sane(r.saved_s):
                self.cache_saved_s.child(r.tool).inc(r.saved_s)

    def on_internal_error(self, where: str) -> None:
        with self._lock:
            self.internal_errors.child(where).inc()

    def on_spans_dropped(self, reason: str, count: int) -> None:
        with self._lock:
            self.spans_dropped.child(reason).inc(count)

    # jobs ------------------------------------------------------------------------------------
    def on_job_state(self, workflow: str, state: str) -> None:
        with self._lock:
            self.jobs.child(workflow, state).inc()

    def on_job_queue_wait(self, workflow: str, wait_s: float) -> None:
        if _sane(wait_s):
            with self._lock:
                self.job_queue_wait.child(workflow).observe(wait_s)

    def on_budget_extended(self, run: Run, limit: str) -> None:
        with self._lock:
            self.extensions.child(run.workflow, limit).inc()

    def on_loop(self, run: Run, kind: str, status: str) -> None:
        with self._lock:
            self.loops.child(run.workflow, kind, status).inc()

    def on_tool_refused(self, run: Run, tool: str, reason: str) -> None:
        with self._lock:
            self.tool_refusals.child(run.workflow, tool, reason).inc()
