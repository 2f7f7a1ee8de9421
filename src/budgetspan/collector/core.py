"""The processing core: one span in, the edits to make to it out, metrics and run state updated.

Plain Python over a span's facts and its attributes as a dict, so that every host (rotel's span
objects, the plain-dict form in ``dict_host``) shares one implementation. Per span, in order:

1. normalise other instrumentations' token, model and operation names (``normalise.py``);
2. tag the phase from the operation where none is set (the in-process default rule);
3. price a model call that carries usage but no cost (``gen_ai.usage.cost``, marked
   ``budgetspan.cost.source=collector``); a cost set upstream is never replaced; usage that was
   never reported stays unpriced (``budgetspan.usage.unreported``), never a fake 0;
4. redact message content (``content.py``) unless the tier is told to keep it;
5. account the call in its run (``window.py``) and mark what enforce mode would have refused;
6. feed the metrics.

``process`` never raises: an error is counted in ``budgetspan_internal_errors_total`` and the span
goes on unchanged. Spans are never dropped or held back.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind
from budgetspan.accounting.pricing import PriceResolver, default_resolver
from budgetspan.accounting.prompt_cache import prompt_cache_saving
from budgetspan.collector.metrics import TierMetrics
from budgetspan.collector.normalise import apply_plan, token_count
from budgetspan.collector.shape import shape_of
from budgetspan.collector.window import DEFAULT_MAX_RUNS, DEFAULT_WINDOW_S, RunState, RunWindow
from budgetspan.config import Config, ConfigError, load_config
from budgetspan.config_numbers import env_amount, env_count
from budgetspan.runs.phases import DEFAULT_PHASE_BY_OPERATION

log = logging.getLogger(__name__)

_ACCOUNTED = A.MODEL_OPERATIONS | {A.OP_EXECUTE_TOOL, A.OP_RETRIEVAL}
_TRUE = ("1", "true", "yes", "on")
_BOOLEAN = (*_TRUE, "0", "false", "no", "off")
_TOKEN_KEYS = (
    (A.GEN_AI_USAGE_INPUT_TOKENS, "input"),
    (A.GEN_AI_USAGE_OUTPUT_TOKENS, "output"),
    (A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, "cache_read"),
    (A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, "cache_write"),
    (A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, "reasoning"),
)


@dataclass(frozen=True)
class TierOptions:
    keep_content: bool = False
    window_s: float = DEFAULT_WINDOW_S
    max_runs: int = DEFAULT_MAX_RUNS
    max_label_values: int | None = None
    #: Instrumentation scope names whose spans are not read (``plain_scopes`` in hosts.py).
    plain_scopes: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TierOptions:
        """Options from ``BUDGETSPAN_COLLECTOR_*``; a bad value is a ``ConfigError`` naming it."""
        env = os.environ if env is None else env
        keep_raw = env.get(A.ENV_COLLECTOR_KEEP_CONTENT, "").strip().lower()
        if keep_raw and keep_raw not in _BOOLEAN:  # a typo'd switch is said, not taken as "off"
            raise ConfigError(
                f"{A.ENV_COLLECTOR_KEEP_CONTENT}={keep_raw[:40]!r}: expected one of {', '.join(_BOOLEAN)}"
            )
        keep = keep_raw in _TRUE
        return cls(
            keep_content=keep,
            window_s=env_amount(env, A.ENV_COLLECTOR_WINDOW_S, DEFAULT_WINDOW_S),
            max_runs=env_count(env, A.ENV_COLLECTOR_MAX_RUNS, DEFAULT_MAX_RUNS, least=1),
            plain_scopes=frozenset(
                name.strip() for name in env.get(A.ENV_COLLECTOR_PLAIN_SCOPES, "").split(",") if name.strip()
            ),
        )


@dataclass(slots=True)
class SpanFacts:
    """What the core reads from a span besides its attributes (ids in lowercase hex)."""

    trace_id: str
    parent_id: str  # "" for a trace's root span
    start_ns: int
    end_ns: int
    error: bool
    service: str


@dataclass(slots=True)
class Edit:
    """What to change on the span: attributes to set (added, or replaced where present), keys to
    remove, and whether its content events are to be emptied."""

    set: dict[str, Any] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    redact_events: bool = False


_TOKEN_NAMES = tuple(key for key, _ in _TOKEN_KEYS)


def _text(value: Any) -> str | None:
    return value if type(value) is str and value else None  # (attribute values are never str subclasses)


class Tier:
    """The collector tier's state: configuration, prices, the run window and the metrics."""

    def __init__(
        self,
        options: TierOptions | None = None,
        config: Config | None = None,
        resolver: PriceResolver | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.options = options or TierOptions()
        self.keep_content = self.options.keep_content
        self.config = config if config is not None else load_config()
        self.resolver = resolver if resolver is not None else default_resolver()
        self.metrics = TierMetrics(registry, self.options.max_label_values)
        self.lock = self.metrics.lock
        self.window = RunWindow(self.metrics, self._budget, self.options.window_s, self.options.max_runs)
        self._budgets: dict[tuple[str, str | None], Budget | None] = {}

    # --- entry points (never raise) ------------------------------------------------------------
    def process(self, facts: SpanFacts, attrs: Mapping[str, Any]) -> Edit | None:
        """The edits for one span that may be a GenAI span or carry content; None: leave it."""
        try:
            with self.lock:
                return self._process(facts, attrs)
        except Exception:
            self.internal_error("collector.process")
            return None

    def plain_span(self, trace_id: str, is_root: bool, end_ns: int, error: bool) -> None:
        """A span with no GenAI attribute: only a trace's root matters (it ends the trace's run)."""
        if not is_root:
            return
        try:
            with self.lock:
                if self.window.has_trace(trace_id):
                    state = self.window.runs.get(self.window.key_for(trace_id, None))
                    if state is not None and state.key.startswith("trace:"):
                        self.window.end(state, "failure" if error else "success", end_ns)
        except Exception:
            self.internal_error("collector.root")

    def sweep(self) -> None:
        try:
            with self.lock:
                self.window.sweep()
        except Exception:
            self.internal_error("collector.sweep")

    def internal_error(self, where: str) -> None:
        # The type only (its text may quote what the span carried); the frames at DEBUG.
        events.log_failure(log, "budgetspan collector: %s failed; the span passes unchanged", where)
        try:
            with self.lock:
                self.metrics.internal_errors.child(where, "collector").inc()
        except Exception:  # the error counter itself must not fail the host
            pass

    # --- the rules -----------------------------------------------------------------------------
    def _process(self, facts: SpanFacts, attrs: Mapping[str, Any]) -> Edit:
        shape = shape_of(attrs)  # what the keys alone say, found once per set of keys
        edit = Edit({} if shape.plan is None else apply_plan(attrs, shape.plan))
        # a dict, not a Mapping, from here on: compiled (mypyc), ``dict.get`` is a direct call
        view: dict[str, Any] = (
            {**attrs, **edit.set} if edit.set else attrs if type(attrs) is dict else dict(attrs)
        )
        op = view.get(A.GEN_AI_OPERATION_NAME)
        phase = view.get(A.PHASE)
        if type(phase) is not str or not phase:  # (attribute values are never str subclasses)
            phase = None
            if op in DEFAULT_PHASE_BY_OPERATION:
                phase = edit.set[A.PHASE] = DEFAULT_PHASE_BY_OPERATION[op]
        if not self.keep_content:
            if shape.content:
                edit.remove = shape.content
                edit.set[A.CONTENT_REDACTED] = len(shape.content)
            edit.redact_events = True
        run_id = view.get(A.RUN_ID)
        if type(run_id) is not str or not run_id:  # (``_text``, inline: a call per read adds up)
            run_id = None
        if op in _ACCOUNTED and view.get(A.DUPLICATE_CALL) is not True:
            state = self._run(facts, view, run_id)
            if op == A.OP_EXECUTE_TOOL:
                self._tool(facts, view, state, edit, phase or "tool_execution")
            elif op == A.OP_RETRIEVAL:
                self._retrieval(facts, state, phase or "context_assembly")
            else:
                self._model(facts, view, state, edit, phase or "model_decision", shape.extras)
        if shape.cache:
            self._cache(view, facts.service)
        if op == A.OP_INVOKE_AGENT or not facts.parent_id:  # (most spans end nothing: no call)
            self._maybe_end(facts, view, op, run_id)
        return edit

    def _cache(self, view: dict[str, Any], svc: str) -> None:
        """A request to budgetspan's cache (a tool's miss span, or a ``cached`` span)."""
        m = self.metrics
        tool = _text(view.get(A.CACHE_NAME)) or _text(view.get(A.GEN_AI_TOOL_NAME)) or "unknown"
        result = _text(view.get(A.CACHE_RESULT)) or "unknown"
        m.cache_requests.child(tool, result, svc).inc()
        for family, key in ((m.cache_saved_usd, A.CACHE_SAVED_USD), (m.cache_saved_s, A.CACHE_SAVED_S)):
            v = view.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf:
                family.child(tool, svc).inc(float(v))

    def _run(self, facts: SpanFacts, view: dict[str, Any], run_id: str | None) -> RunState:
        workflow = view.get(A.WORKFLOW)
        if type(workflow) is not str:
            workflow = None
        profile = view.get(A.BUDGET_PROFILE)
        state = self.window.get(
            facts.trace_id,
            run_id,
            workflow or facts.service,
            facts.service,
            None if profile is None else _text(profile),
            facts.start_ns,
        )
        if workflow and state.workflow != workflow and not state.ended:  # named later than opened
            self.metrics.live_runs.child(state.workflow, state.service).dec()
            state.workflow = workflow
            self.metrics.live_runs.child(workflow, state.service).inc()
        return state

    def _model(
        self, facts: SpanFacts, view: dict[str, Any], state: RunState, edit: Edit, phase: str, extras: bool
    ) -> None:
        m, wf, svc = self.metrics, state.workflow, facts.service
        provider = view.get(A.GEN_AI_PROVIDER_NAME)
        if type(provider) is not str or not provider:  # (``_text``, inline)
            provider = "unknown"
        model = view.get(A.GEN_AI_RESPONSE_MODEL)
        if type(model) is not str or not model:
            model = _text(view.get(A.GEN_AI_REQUEST_MODEL))
        tokens = [  # ``token_count`` called only for what is neither missing nor a plain count
            v if type(v) is int and v >= 0 else (None if v is None else token_count(v))
            for v in map(view.get, _TOKEN_NAMES)
        ]
        inp, out, cache_read, cache_write = tokens[0], tokens[1], tokens[2], tokens[3]
        unreported = inp is None and out is None
        cost = self._price(view, edit, provider, model, tokens, unreported)
        label = model or "unknown"
        duration = max(0.0, (facts.end_ns - facts.start_ns) / 1e9)
        cells = m.model_cells(wf, phase, provider, label, "error" if facts.error else "ok", svc)
        cells.calls.value += 1.0
        cells.duration.observe(duration)
        cells.phase_duration.observe(duration)
        if inp:
            (cells.input or cells.spend("input")).value += inp
        if out:
            (cells.output or cells.spend("output")).value += out
        if cache_read or cache_write or tokens[4]:  # the parts, where reported
            for n, (_, kind) in zip(tokens[2:], _TOKEN_KEYS[2:], strict=True):
                if n:
                    m.token_details.add(n, wf, provider, label, kind, svc)
        step_name = view.get(A.STEP)
        step = state.steps.setdefault(
            step_name if type(step_name) is str and step_name else phase, [label, 0.0]
        )
        if cost is not None:
            (cells.cost or cells.spend("cost")).value += cost
            step[1] += cost
        elif not unreported:
            m.unpriced.add(1.0, provider, label, svc)
        if unreported:
            m.unreported.add(1.0, provider, label, svc)
        if extras:
            self._extras(view, wf, provider, label, svc, "model")
        if cache_read or cache_write:
            saving = prompt_cache_saving(provider, model, inp, out, cache_read, cache_write, self.resolver)
            if saving is not None:
                m.prompt_saved.add(saving.saved_usd, wf, provider, label, svc)
                m.prompt_premium.add(saving.premium_usd, wf, provider, label, svc)
        would = self.window.account(
            state, CallKind.MODEL, None, facts.start_ns, facts.end_ns, inp or 0, out or 0, cost or 0.0
        )
        if would is not None:
            self._mark(view, edit, would)

    def _price(
        self,
        view: dict[str, Any],
        edit: Edit,
        provider: str,
        model: str | None,
        tokens: list[int | None],
        unreported: bool,
    ) -> float | None:
        """The call's cost: the one set upstream (never replaced), else priced here and marked."""
        upstream = view.get(A.GEN_AI_USAGE_COST)
        cost: float | None = None
        if (
            upstream is not None
            and isinstance(upstream, (int, float))
            and not isinstance(upstream, bool)
            and 0 <= upstream < math.inf
        ):
            cost = float(upstream)
        elif not unreported:
            cost = self.resolver.cost(provider, model, tokens[0], tokens[1], tokens[2], tokens[3])
            if cost is not None:
                edit.set[A.GEN_AI_USAGE_COST] = cost
                edit.set[A.COST_SOURCE] = A.COST_SOURCE_COLLECTOR
            else:
                edit.set[A.COST_UNPRICED] = True
        if unreported and view.get(A.USAGE_UNREPORTED) is not True:
            edit.set[A.USAGE_UNREPORTED] = True
        return cost

    def _extras(self, view: dict[str, Any], wf: str, provider: str, model: str, svc: str, kind: str) -> None:
        """Time to first token and retries, where the instrumentation recorded them. Called only for
        a span with one of ``_EXTRA_KEYS`` (one set test instead of a call and three reads for most
        spans; measured, core alone on a GenAI span: 94.4k -> 93.8k instructions)."""
        ttft = view.get(A.TIME_TO_FIRST_TOKEN_S)
        if ttft is None:  # a span from a budgetspan before the GenAI name
            ttft = view.get(A.TIME_TO_FIRST_TOKEN_S_LEGACY)
        if isinstance(ttft, (int, float)) and not isinstance(ttft, bool) and 0 <= ttft < math.inf:
            self.metrics.ttft.child(provider, model, svc).observe(float(ttft))
        retries = view.get(A.RETRIES)  # (rarely set: the call is made only when it is)
        if retries is not None and (retries := token_count(retries)):
            self.metrics.retries.add(retries, wf, kind, svc)

    def _tool(self, facts: SpanFacts, view: dict[str, Any], state: RunState, edit: Edit, phase: str) -> None:
        m, wf, svc = self.metrics, state.workflow, facts.service
        tool = _text(view.get(A.GEN_AI_TOOL_NAME)) or "unknown"
        duration = max(0.0, (facts.end_ns - facts.start_ns) / 1e9)
        m.tool_calls.add(1.0, wf, tool, "error" if facts.error else "ok", svc)
        m.tool_duration.observe(duration, wf, tool, svc)
        m.phase_duration.observe(duration, wf, phase, svc)
        retries = view.get(A.RETRIES)
        if retries is not None and (retries := token_count(retries)):
            m.retries.add(retries, wf, "tool", svc)
        would = self.window.account(state, CallKind.TOOL, tool, facts.start_ns, facts.end_ns)
        if would is not None:
            self._mark(view, edit, would)

    def _retrieval(self, facts: SpanFacts, state: RunState, phase: str) -> None:
        m, wf, svc = self.metrics, state.workflow, facts.service
        m.retrievals.add(1.0, wf, "error" if facts.error else "ok", svc)
        m.phase_duration.child(wf, phase, svc).observe(max(0.0, (facts.end_ns - facts.start_ns) / 1e9))

    @staticmethod
    def _mark(view: dict[str, Any], edit: Edit, would: str) -> None:
        if A.WOULD_REFUSE not in view:  # an in-process mark stays
            edit.set[A.WOULD_REFUSE] = would
            edit.set[A.BUDGET_MODE] = "observe"

    def _maybe_end(self, facts: SpanFacts, view: dict[str, Any], op: Any, run_id: str | None) -> None:
        """A run span with its outcome (budgetspan in-process) or a trace's root ends the run."""
        outcome = _text(view.get(A.RUN_OUTCOME))
        if op == A.OP_INVOKE_AGENT and run_id and outcome:
            state = self._run(facts, view, run_id)
            reason = _text(view.get(A.EXHAUSTED_REASON)) if outcome == "budget_exhausted" else None
            if not state.ended:
                self._extensions_and_loops(state, view)
            self.window.end(state, outcome, facts.end_ns, reason)
        elif not facts.parent_id and self.window.has_trace(facts.trace_id):
            state_or_none = self.window.runs.get(self.window.key_for(facts.trace_id, None))
            if state_or_none is not None and state_or_none.key.startswith("trace:"):
                self.window.end(
                    state_or_none, outcome or ("failure" if facts.error else "success"), facts.end_ns
                )

    def _extensions_and_loops(self, state: RunState, view: dict[str, Any]) -> None:
        """What the run span of budgetspan in-process says of its extensions and loop stop."""
        m, wf, svc = self.metrics, state.workflow, state.service
        for limit in (_text(view.get(A.BUDGET_EXTENDED_LIMITS)) or "").split(","):
            if limit:
                m.extensions.child(wf, limit, svc).inc()
        loop = _text(view.get(A.LOOP_STOPPED))
        if loop:
            m.loops.child(wf, loop, "stopped", svc).inc()

    def _budget(self, workflow: str, profile: str | None) -> Budget | None:
        """The budget a run is accounted against; None when it limits nothing (checked once per
        workflow and profile: ``Budget.is_unlimited`` builds a dict, 0.7 µs CPU, on every call)."""
        key = (workflow, profile)
        if key in self._budgets:
            return self._budgets[key]
        cfg = self.config
        budget = cfg.budget_for(workflow, profile if profile in cfg.profiles else None)
        found = None if budget.is_unlimited else budget
        if len(self._budgets) > 4096:
            self._budgets.clear()
        self._budgets[key] = found
        return found
