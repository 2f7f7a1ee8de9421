"""The same metrics through the OpenTelemetry Metrics API, so an OTLP pipeline carries them.

Under ``opentelemetry-instrument`` (the distro's default ``OTEL_METRICS_EXPORTER=otlp``) or with
any ``MeterProvider`` set globally, budgetspan records:

- the GenAI semantic-convention client metrics, for budgetspan's own model and tool calls:
  ``gen_ai.client.token.usage`` (``gen_ai.token.type`` input | output; input includes cached
  tokens, so the two sum to the call's total), ``gen_ai.client.operation.duration``,
  ``gen_ai.client.operation.time_to_first_chunk`` (streams), ``gen_ai.execute_tool.duration``
  and ``gen_ai.invoke_agent.duration`` (one per run). Calls budgetspan only saw on another
  instrumentation's span are left out here: that instrumentation records its own;
- budgetspan's own series (runs by outcome, cost, tokens, exhaustions, utilisation, ...), named
  so that the standard OTLP-to-Prometheus translation gives exactly the names the dashboards and
  alerts query (``attributes.OTEL_M_*``): one set of dashboards for the scrape and OTLP paths.

Like the Prometheus listener, the numbers come from ``budgetspan.events``, not from spans, so they
hold under any sampler. Label values go through the same caps (``BUDGETSPAN_METRICS_MAX_LABEL_VALUES``).
With no MeterProvider set, the API's proxy makes every record a cheap no-op (and a provider set
later is picked up); an SDK provider with no metric reader is skipped altogether.
Each record through the API costs a few µs (DESIGN.md), so attribute dicts are built once per
label set and reused.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.prompt_cache import spend_saving
from budgetspan.processors import buckets
from budgetspan.processors.labels import LabelCaps, cacheable
from budgetspan.processors.metrics import _sane
from budgetspan.processors.step_costs import StepCosts
from budgetspan.runs import context

if TYPE_CHECKING:
    from budgetspan.events import CacheRecord, CallRecord
    from budgetspan.runs.run import Run

log = logging.getLogger(__name__)

# Bucket boundaries the GenAI conventions advise.
GEN_AI_TOKEN_BOUNDS: Final = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
GEN_AI_SECONDS_BOUNDS: Final = tuple(0.01 * 2**i for i in range(14))  # 0.01 ... 81.92
_CACHE_LIMIT: Final = 4096
_OWN_TOKEN_FIELDS: Final = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)


class _StepFamily:
    """``StepCosts``' view of a counter: ``child(workflow, step, model, outcome).inc(amount)``."""

    __slots__ = ("owner", "totals")
    LABELS: Final = (A.L_WORKFLOW, A.L_STEP, A.L_MODEL, A.L_OUTCOME)

    def __init__(self, owner: Any, totals: _Totals) -> None:
        self.owner, self.totals = owner, totals

    def child(self, *values: Any) -> _StepChild:
        return _StepChild(self.totals, self.owner.attrs(*zip(self.LABELS, values, strict=True)))


class _StepChild:
    __slots__ = ("attributes", "totals")

    def __init__(self, totals: _Totals, attributes: dict[str, Any]) -> None:
        self.totals, self.attributes = totals, attributes

    def inc(self, amount: float = 1.0) -> None:
        self.totals.add(amount, self.attributes)


class _Totals:
    """A counter kept as plain sums and reported by an observable instrument when collected.

    A synchronous ``Counter.add`` through the SDK costs several µs (attribute set hashing, a lock,
    the aggregation); a model call adds to five counters. Here an add is one dict lookup under
    the listener's lock, and the SDK reads the cumulative sums once per export.
    """

    __slots__ = ("lock", "sums")

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.sums: dict[tuple[Any, ...], list[Any]] = {}  # label values -> [attributes, sum]

    def add(self, amount: float, attributes: dict[str, Any]) -> None:
        key = tuple(attributes.values())
        with self.lock:
            cell = self.sums.get(key)
            if cell is None:
                self.sums[key] = [attributes, amount]
            else:
                cell[1] += amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            cells = [(attributes, total) for attributes, total in self.sums.values()]
        return [Observation(total, attributes) for attributes, total in cells]


class OTelMetrics:
    """The instruments on one meter, and the ``budgetspan.events`` listener that feeds them."""

    def __init__(self, meter_provider: Any = None, max_label_values: int | None = None) -> None:
        provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
        meter = provider.get_meter(A.INSTRUMENTATION_SCOPE, A.VERSION)
        self.caps = LabelCaps(max_label_values)
        self._attrs: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._live: dict[str, str] = {}
        self._live_lock = threading.Lock()
        self._lock = threading.Lock()  # the counters' sums
        self._gen_ai(meter)
        self._own(meter)

    def _gen_ai(self, meter: Any) -> None:
        h = meter.create_histogram
        self.token_usage = h(
            A.OTEL_GEN_AI_TOKEN_USAGE,
            unit="{token}",
            description="Input and output tokens of a GenAI call (input includes cached tokens).",
            explicit_bucket_boundaries_advisory=GEN_AI_TOKEN_BOUNDS,
        )
        seconds = functools.partial(h, unit="s", explicit_bucket_boundaries_advisory=GEN_AI_SECONDS_BOUNDS)
        self.operation_duration = seconds(
            A.OTEL_GEN_AI_OPERATION_DURATION, description="Duration of a GenAI client operation."
        )
        self.time_to_first_chunk = seconds(
            A.OTEL_GEN_AI_TIME_TO_FIRST_CHUNK,
            description="Time from the request to the first chunk of a streamed response.",
        )
        self.tool_duration_gen_ai = seconds(
            A.OTEL_GEN_AI_EXECUTE_TOOL_DURATION, description="Duration of a tool execution."
        )
        self.agent_duration = seconds(
            A.OTEL_GEN_AI_INVOKE_AGENT_DURATION,
            description="Duration of an agent invocation (a budgetspan run).",
        )

    # long: one declaration per metric family, as in metrics.py; splitting it would scatter the list
    def _own(self, meter: Any) -> None:
        def counter(spec: tuple[str, str], doc: str, up_down: bool = False) -> _Totals:
            totals = _Totals(self._lock)
            create = meter.create_observable_up_down_counter if up_down else meter.create_observable_counter
            create(spec[0], callbacks=[totals.observe], unit=spec[1], description=doc)
            return totals

        def hist(spec: tuple[str, str], doc: str, bounds: Sequence[float]) -> Any:
            return meter.create_histogram(
                spec[0], unit=spec[1], description=doc, explicit_bucket_boundaries_advisory=bounds
            )

        self.runs = counter(A.OTEL_M_RUNS, "Finished runs by outcome.")
        self.run_cost = hist(
            A.OTEL_M_RUN_COST, "Dollar cost of a run (priced calls only).", buckets.COST_BUCKETS
        )
        self.run_duration = hist(
            A.OTEL_M_RUN_DURATION, "Wall-clock duration of a run.", buckets.RUN_SECONDS_BUCKETS
        )
        self.run_tokens = hist(
            A.OTEL_M_RUN_TOKENS, "Input plus output tokens of a run.", buckets.TOKEN_BUCKETS
        )
        self.exhaustions = counter(A.OTEL_M_BUDGET_EXHAUSTIONS, "Runs stopped at a budget limit.")
        self.would_exhaust = counter(
            A.OTEL_M_BUDGET_WOULD_EXHAUST, "Observe mode: runs enforce mode would have stopped."
        )
        self.utilisation = hist(
            A.OTEL_M_BUDGET_UTILISATION,
            "Share of each set limit used at run end.",
            buckets.UTILISATION_BUCKETS,
        )
        self.model_calls = counter(A.OTEL_M_MODEL_CALLS, "Model calls (chat, completion, embeddings).")
        self.tokens = counter(A.OTEL_M_TOKENS, "Tokens by type: input (cached included) and output.")
        self.token_details = counter(
            A.OTEL_M_TOKEN_DETAILS,
            "Parts of the tokens: cache_read, cache_write (input), reasoning (output).",
        )
        self.cost = counter(A.OTEL_M_COST, "Dollar cost of model calls.")
        self.unpriced = counter(A.OTEL_M_UNPRICED_CALLS, "Model calls with usage but no known price.")
        self.unreported = counter(
            A.OTEL_M_UNREPORTED_USAGE_CALLS, "Model calls whose provider never reported tokens."
        )
        self.model_duration = hist(
            A.OTEL_M_MODEL_CALL_DURATION, "Duration of one model call.", buckets.CALL_SECONDS_BUCKETS
        )
        self.ttft = hist(
            A.OTEL_M_TIME_TO_FIRST_TOKEN, "Time to the first streamed token.", buckets.CALL_SECONDS_BUCKETS
        )
        self.phase_duration = hist(
            A.OTEL_M_PHASE_DURATION,
            "Duration of a phase block, or of a call outside any block.",
            buckets.RUN_SECONDS_BUCKETS,
        )
        self.tool_calls = counter(A.OTEL_M_TOOL_CALLS, "Tool calls by status.")
        self.tool_duration = hist(
            A.OTEL_M_TOOL_DURATION, "Duration of one tool call.", buckets.CALL_SECONDS_BUCKETS
        )
        self.retries = counter(A.OTEL_M_RETRIES, "Retries of model and tool calls.")
        self.retrievals = counter(A.OTEL_M_RETRIEVALS, "Retrievals by status.")
        self.internal_errors = counter(A.OTEL_M_INTERNAL_ERRORS, "Errors inside budgetspan.")
        self.spans_dropped = counter(A.OTEL_M_SPANS_DROPPED, "Spans the exporter pipeline lost.")
        self.live_runs = counter(A.OTEL_M_LIVE_RUNS, "Runs in progress.", up_down=True)
        self.jobs = counter(A.OTEL_M_JOBS, "Background jobs entering each state.")
        self.job_queue_wait = hist(
            A.OTEL_M_JOB_QUEUE_WAIT,
            "A job's wait from submission to its first start.",
            buckets.RUN_SECONDS_BUCKETS,
        )
        self.extensions = counter(A.OTEL_M_BUDGET_EXTENSIONS, "Budget extensions granted at a limit.")
        self.loops = counter(A.OTEL_M_LOOPS, "Loops found in runs' tool calls; warned or stopped.")
        self.tool_refusals = counter(A.OTEL_M_TOOL_REFUSALS, "Tool calls refused by the tool's own cap.")
        self.cache_requests = counter(A.OTEL_M_CACHE_REQUESTS, "Cache requests by result.")
        self.cache_saved_usd = counter(
            A.OTEL_M_CACHE_SAVED_USD, "Recorded cost of the calls cache hits replaced."
        )
        self.cache_saved_s = counter(A.OTEL_M_CACHE_SAVED_SECONDS, "Duration cache hits saved.")
        self.prompt_saved = counter(
            A.OTEL_M_PROMPT_CACHE_SAVED_USD, "Prompt cache reads: saved against the input price."
        )
        self.prompt_premium = counter(
            A.OTEL_M_PROMPT_CACHE_WRITE_PREMIUM_USD, "Prompt cache writes: paid above the input price."
        )
        self.steps = StepCosts(
            _StepFamily(
                self, counter(A.OTEL_M_STEP_COST, "Cost of each step of finished runs, by model and outcome.")
            ),
            _StepFamily(
                self, counter(A.OTEL_M_STEP_RUNS, "Finished runs per step and the step's model, by outcome.")
            ),
        )
        self._steps_lock = threading.Lock()  # StepCosts' runs in flight

    def attrs(self, *pairs: tuple[str, Any]) -> dict[str, Any]:
        """The attribute dict for these (label, raw value) pairs, capped and built once."""
        cached = self._attrs.get(pairs)
        if cached is not None:
            return cached
        built = {label: self.caps[label](value) for label, value in pairs}
        if len(self._attrs) < _CACHE_LIMIT and cacheable(tuple(value for _, value in pairs)):
            self._attrs[pairs] = built
        return built

    def _gen_ai_attrs(self, r: CallRecord, token_type: str | None = None) -> dict[str, Any]:
        """GenAI attributes: the provider and model pass the same caps as the labels."""
        key = ("gen_ai", r.operation, r.provider, r.model, r.status, token_type)
        cached = self._attrs.get(key)
        if cached is not None:
            return cached
        built: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: r.operation,
            A.GEN_AI_PROVIDER_NAME: self.caps[A.L_PROVIDER](r.provider),
            A.GEN_AI_REQUEST_MODEL: self.caps[A.L_MODEL](r.model),
        }
        if r.status != "ok":
            built[A.ERROR_TYPE] = r.status
        if token_type is not None:
            built[A.GEN_AI_TOKEN_TYPE] = token_type
        if len(self._attrs) < _CACHE_LIMIT and cacheable(key):
            self._attrs[key] = built
        return built

    # runs ------------------------------------------------------------------------------------
    def on_run_start(self, run: Run) -> None:
        with self._live_lock:
            self._live[run.id] = run.workflow
        self.live_runs.add(1, self.attrs((A.L_WORKFLOW, run.workflow)))

    def on_run_end(self, run: Run) -> None:
        with self._live_lock:
            started = self._live.pop(run.id, None)
        if started is not None:
            self.live_runs.add(-1, self.attrs((A.L_WORKFLOW, started)))
        wf = run.workflow
        outcome = run.outcome.value if run.outcome is not None else "unknown"
        usage = run.usage
        by_outcome = self.attrs((A.L_WORKFLOW, wf), (A.L_OUTCOME, outcome))
        self.runs.add(1, by_outcome)
        with self._steps_lock:
            self.steps.run_end(run.id, wf, outcome)
        if _sane(usage.cost_usd):
            self.run_cost.record(usage.cost_usd, by_outcome)
        self.run_tokens.record(usage.input_tokens + usage.output_tokens, by_outcome)
        duration = run.duration_s if run.duration_s is not None else usage.wall_clock_s
        self.run_duration.record(duration, by_outcome)
        agent = {A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT, A.GEN_AI_AGENT_NAME: by_outcome[A.L_WORKFLOW]}
        self.agent_duration.record(duration, agent)
        for limit, allowed in run.budget.limits().items():
            if allowed <= 0:
                continue
            used = duration if limit == "max_wall_clock_s" else usage.value_of(limit)
            if _sane(used):
                self.utilisation.record(used / allowed, self.attrs((A.L_WORKFLOW, wf), (A.L_LIMIT, limit)))

    def on_exhausted(self, run: Run, reason: str, observe: bool) -> None:
        if reason == "cancelled":
            return
        family = self.would_exhaust if observe else self.exhaustions
        family.add(1, self.attrs((A.L_WORKFLOW, run.workflow), (A.L_REASON, reason)))

    def on_phase_end(self, run: Run | None, workflow: str, phase: str, duration_s: float) -> None:
        self.phase_duration.record(duration_s, self.attrs((A.L_WORKFLOW, workflow), (A.L_PHASE, phase)))

    def on_job_state(self, workflow: str, state: str) -> None:
        self.jobs.add(1, self.attrs((A.L_WORKFLOW, workflow), (A.L_STATE, state)))

    def on_job_queue_wait(self, workflow: str, wait_s: float) -> None:
        if _sane(wait_s):
            self.job_queue_wait.record(wait_s, self.attrs((A.L_WORKFLOW, workflow)))

    # calls -----------------------------------------------------------------------------------
    def on_call_end(self, r: CallRecord) -> None:
        wf = (A.L_WORKFLOW, r.workflow)
        if r.kind == "model":
            self._model_call(r)
            if r.run is not None:
                with self._steps_lock:
                    self.steps.call(r)
        elif r.kind == "tool":
            self.tool_calls.add(1, self.attrs(wf, (A.L_TOOL, r.tool), (A.L_STATUS, r.status)))
            self.tool_duration.record(r.duration_s, self.attrs(wf, (A.L_TOOL, r.tool)))
            if r.operation is not None and r.status != "refused":
                tool = {
                    A.GEN_AI_OPERATION_NAME: A.OP_EXECUTE_TOOL,
                    A.GEN_AI_TOOL_NAME: self.caps[A.L_TOOL](r.tool),
                }
                self.tool_duration_gen_ai.record(r.duration_s, tool)
        else:
            self.retrievals.add(1, self.attrs(wf, (A.L_STATUS, r.status)))
        if r.retries:
            self.retries.add(r.retries, self.attrs(wf, (A.L_TYPE, r.kind)))
        if context.current_phase() is None:  # outside a phase block the call stands for its phase
            self.phase_duration.record(r.duration_s, self.attrs(wf, (A.L_PHASE, r.phase)))

    def _model_call(self, r: CallRecord) -> None:
        wf, prov, model = (A.L_WORKFLOW, r.workflow), (A.L_PROVIDER, r.provider), (A.L_MODEL, r.model)
        self.model_calls.add(1, self.attrs(wf, prov, model, (A.L_STATUS, r.status)))
        per_model = self.attrs(prov, model)
        self.model_duration.record(r.duration_s, per_model)
        if r.time_to_first_token_s is not None:
            self.ttft.record(r.time_to_first_token_s, per_model)
        spend = r.spend
        if spend is not None:
            for token_type, field in _OWN_TOKEN_FIELDS:
                n = getattr(spend, field)
                if n is not None and n > 0:
                    family = self.token_details if token_type in A.TOKEN_SUBSETS else self.tokens
                    family.add(n, self.attrs(wf, prov, model, (A.L_TYPE, token_type)))
        cost = r.cost_usd if r.cost_usd is not None else (spend.cost_usd if spend else None)
        if cost is not None and _sane(cost):
            self.cost.add(cost, self.attrs(wf, (A.L_PHASE, r.phase), prov, model))
        elif r.unpriced:
            self.unpriced.add(1, per_model)
        if r.unreported_usage:
            self.unreported.add(1, per_model)
        if r.operation is not None and r.status != "refused":
            self._gen_ai_call(r)
        if spend is not None and (spend.cache_read_tokens or spend.cache_write_tokens):
            saving = spend_saving(r.provider, r.model, spend)
            if saving is not None:
                by_model = self.attrs(wf, prov, model)
                self.prompt_saved.add(saving.saved_usd, by_model)
                self.prompt_premium.add(saving.premium_usd, by_model)

    def on_cache(self, r: CacheRecord) -> None:
        self.cache_requests.add(1, self.attrs((A.L_TOOL, r.tool), (A.L_RESULT, r.result)))
        if r.saved_usd is not None and _sane(r.saved_usd):
            self.cache_saved_usd.add(r.saved_usd, self.attrs((A.L_TOOL, r.tool)))
        if r.saved_s is not None and _sane(r.saved_s):
            self.cache_saved_s.add(r.saved_s, self.attrs((A.L_TOOL, r.tool)))

    def _gen_ai_call(self, r: CallRecord) -> None:
        """The GenAI client metrics of one of budgetspan's own calls that reached the provider."""
        self.operation_duration.record(r.duration_s, self._gen_ai_attrs(r))
        if r.time_to_first_token_s is not None:
            self.time_to_first_chunk.record(r.time_to_first_token_s, self._gen_ai_attrs(r))
        spend = r.spend
        if spend is None or r.unreported_usage:
            return  # the conventions: no usage metric when the provider did not say
        if spend.input_tokens is not None:
            self.token_usage.record(spend.input_tokens, self._gen_ai_attrs(r, A.TOKEN_TYPE_INPUT))
        if spend.output_tokens is not None:
            self.token_usage.record(spend.output_tokens, self._gen_ai_attrs(r, A.TOKEN_TYPE_OUTPUT))

    def on_internal_error(self, where: str) -> None:
        self.internal_errors.add(1, self.attrs((A.L_TYPE, where)))

    def on_spans_dropped(self, reason: str, count: int) -> None:
        self.spans_dropped.add(count, self.attrs((A.L_REASON, reason)))

    def on_budget_extended(self, run: Run, limit: str) -> None:
        self.extensions.add(1, self.attrs((A.L_WORKFLOW, run.workflow), (A.L_LIMIT, limit)))

    def on_loop(self, run: Run, kind: str, status: str) -> None:
        self.loops.add(1, self.attrs((A.L_WORKFLOW, run.workflow), (A.L_TYPE, kind), (A.L_STATUS, status)))

    def on_tool_refused(self, run: Run, tool: str, reason: str) -> None:
        self.tool_refusals.add(
            1, self.attrs((A.L_WORKFLOW, run.workflow), (A.L_TOOL, tool), (A.L_REASON, reason))
        )


_lock = threading.Lock()
_installed: OTelMetrics | None = None


def _has_no_reader(provider: Any) -> bool:
    """An SDK MeterProvider with no metric reader (``OTEL_METRICS_EXPORTER=none``): nothing to feed."""
    readers = getattr(provider, "_metric_readers", None)  # SDK internals: absent elsewhere
    return isinstance(readers, (list, tuple)) and len(readers) == 0


def _is_proxy(provider: Any) -> bool:
    return type(provider).__name__ == "_ProxyMeterProvider"


def install() -> OTelMetrics | None:
    """Subscribe budgetspan's Metrics API instruments to its events, once per process."""
    global _installed
    with _lock:
        if _installed is not None:
            events.add_listener(_installed)
            return _installed
        provider = otel_metrics.get_meter_provider()
        if _is_proxy(provider):
            # No MeterProvider was set (yet): recording through the API's proxy would cost every
            # call ~7 µs for nothing. Set the MeterProvider before configure() to get these metrics
            # (opentelemetry-instrument does: it sets it before budgetspan's hook runs).
            log.debug("budgetspan: no MeterProvider is set; no OpenTelemetry metrics")
            return None
        if isinstance(provider, otel_metrics.NoOpMeterProvider) or _has_no_reader(provider):
            log.debug("budgetspan: the MeterProvider has no reader; no OpenTelemetry metrics")
            return None
        _installed = OTelMetrics(provider)
        events.add_listener(_installed)
        return _installed


def uninstall() -> None:
    """Unsubscribe (tests)."""
    global _installed
    with _lock:
        if _installed is not None:
            events.remove_listener(_installed)
        _installed = None
