"""BudgetSpanProcessor: accounts every GenAI span, whoever made it, in the run's ledger.

budgetspan's own wrappers reserve in the ledger before they open a span (so a refused call never
starts, and sampled-out calls are still counted); this processor skips their spans. Spans from
other instrumentations (OpenLLMetry, the official OpenAI instrumentation, a hand-made span) are
recognised by ``gen_ai.operation.name``: reserved in ``on_start``, committed in ``on_end`` with the
cost computed from the span's usage where it has none.

The SDK calls ``on_start`` without a try/except, so raising there escapes into whatever code
started the span. By default this processor therefore never raises for a span it did not make: a
foreign call over a limit is counted and marked (``budgetspan.observe.would_refuse``), the run
becomes exhausted, and the next budgetspan-instrumented call raises. ``enforce_foreign=True``
(or ``BUDGETSPAN_ENFORCE_FOREIGN_SPANS=true``) refuses foreign spans in ``on_start`` instead.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import TOOL_CAP_REASONS, BudgetExhausted
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.pricing import default_resolver
from budgetspan.calls import foreign
from budgetspan.calls.call import sampled_trace_id
from budgetspan.events import CallRecord
from budgetspan.runs import context, implicit
from budgetspan.runs.phases import DEFAULT_PHASE_BY_OPERATION, Phase

log = logging.getLogger(__name__)

_ACCOUNTED_OPS = A.MODEL_OPERATIONS | {A.OP_EXECUTE_TOOL}
_TRUE = ("1", "true", "yes")


def _amount(v: Any) -> bool:
    """A usable figure: a finite non-negative number (not a bool, NaN, inf or an int past floats)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and v >= 0
    except OverflowError:
        return False


def _int_attr(attrs: Mapping[str, Any], key: str, legacy: str | None = None) -> int | None:
    for name in (key, legacy):
        if name is not None:
            v = attrs.get(name)
            if v is not None and _amount(v):
                return int(v)
    return None


def _usage_figures(attrs: Mapping[str, Any]) -> Spend:
    """The span's token figures (the GenAI names, then the older ones); None where not usable."""
    return Spend(
        _int_attr(attrs, A.GEN_AI_USAGE_INPUT_TOKENS, A.GEN_AI_USAGE_PROMPT_TOKENS_LEGACY),
        _int_attr(attrs, A.GEN_AI_USAGE_OUTPUT_TOKENS, A.GEN_AI_USAGE_COMPLETION_TOKENS_LEGACY),
        _int_attr(attrs, A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        _int_attr(attrs, A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        _int_attr(attrs, A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
    )


def _duration(span: ReadableSpan) -> float:
    return ((span.end_time or 0) - (span.start_time or 0)) / 1e9


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


class BudgetSpanProcessor(SpanProcessor):
    """The single authority on limits for spans that budgetspan's wrappers did not make."""

    def __init__(self, enforce_foreign: bool | None = None) -> None:
        if enforce_foreign is None:
            enforce_foreign = os.environ.get(A.ENV_ENFORCE_FOREIGN, "").strip().lower() in _TRUE
        self.enforce_foreign = enforce_foreign
        #: Called on shutdown: what the provider's lifetime owns but need not see every span
        #: (the metrics endpoint).
        self.closers: list[Callable[[], None]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            implicit.note_span_start(span, parent_context)  # each request its own implicit run
        except Exception:
            events.log_failure(log, "budgetspan: marking a span's local root failed")
        scope = span.instrumentation_scope
        if scope is not None and scope.name == A.INSTRUMENTATION_SCOPE:
            return  # budgetspan's own: reserved by its wrapper
        attrs = span.attributes or {}
        op = attrs.get(A.GEN_AI_OPERATION_NAME)
        if op not in _ACCOUNTED_OPS:
            return
        kind = CallKind.TOOL if op == A.OP_EXECUTE_TOOL else CallKind.MODEL
        current = context.current_call()
        if current is not None:
            # Inside budgetspan's own call of the same kind: another instrumentation's view of
            # that call (openai-v2 inside our OpenAI wrapper, an in-process MCP server serving our
            # tool call), already counted.
            if getattr(current, "kind", None) is kind:
                span.set_attribute(A.DUPLICATE_CALL, True)
                return
            if kind is CallKind.TOOL and span.kind is SpanKind.SERVER:
                return  # an in-process tool server serving a call already counted
        refused: BudgetExhausted | None = None
        try:
            refused = self._account_start(span, attrs, str(op), kind)
        except Exception:
            events.log_failure(log, "budgetspan: accounting a foreign span failed")
        if refused is not None:
            raise refused  # only with enforce_foreign: the caller asked for refusal here

    def _account_start(
        self, span: Span, attrs: Mapping[str, Any], op: str, kind: CallKind
    ) -> BudgetExhausted | None:
        run = implicit.resolve_run()
        phase = str(
            context.current_phase()
            or attrs.get(A.PHASE)
            or DEFAULT_PHASE_BY_OPERATION.get(op, "model_decision")
        )
        step = context.current_step() or phase
        span.set_attributes({A.PHASE: phase, A.STEP: step, A.RUN_ID: str(run.id)})
        tool = _text(attrs.get(A.GEN_AI_TOOL_NAME)) if kind is CallKind.TOOL else None
        enforce = self.enforce_foreign and run.mode is Mode.ENFORCE
        try:
            res = run.ledger.reserve(
                run.id,
                kind,
                tool=tool,
                force=not enforce,
                final=phase == Phase.FINAL_RESPONSE,
                scopes=run.scope_refs(),
            )
        except LedgerRefused as r:
            span.set_attribute(A.WOULD_REFUSE, r.refusal.reason)
            if r.refusal.reason in TOOL_CAP_REASONS:
                return run.refuse_tool(r.refusal)
            return run.exhaust(r.refusal)
        except KeyError:
            return None
        if res.would_refuse is not None:
            span.set_attribute(A.WOULD_REFUSE, res.would_refuse.reason)
            if run.mode is Mode.ENFORCE and res.would_refuse.reason in TOOL_CAP_REASONS:
                pass  # a tool's own cap refuses the tool, not the run: budgetspan's call is refused (adopt)
            elif run.mode is Mode.ENFORCE:
                # Counted, and the run stops: budgetspan's own call for this span (if it is one
                # budgetspan instruments too) is refused; otherwise the run is exhausted at the end.
                run.hold(res.would_refuse)
            else:
                run.note_would_refuse(res.would_refuse)
        ctx = span.get_span_context()
        foreign.add(ctx.trace_id, ctx.span_id, foreign.ForeignCall(run, res, phase, kind, step))
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            if foreign.in_flight():  # (the usual span: no foreign call is being accounted)
                ctx = span.context
                entry = foreign.pop(ctx.trace_id, ctx.span_id) if ctx is not None else None
                if entry is not None:
                    self._account_end(span, entry)
            if implicit.has_trace_runs():  # implicit runs, one per trace: a local root ends its trace's
                parent, ctx = span.parent, span.context
                if (
                    ctx is not None
                    and (parent is None or parent.is_remote)
                    and implicit.has_trace_run(ctx.trace_id, ctx.span_id)
                ):
                    implicit.end_trace_run(ctx.trace_id, ctx.span_id, error=not span.status.is_ok)
        except Exception:
            events.log_failure(log, "budgetspan: accounting a finished span failed")

    def _account_end(self, span: ReadableSpan, entry: foreign.ForeignCall) -> None:
        attrs = span.attributes or {}
        run, res = entry.run, entry.reservation
        ok = span.status.is_ok
        if res is not None and res.would_refuse is not None and run.mode is Mode.ENFORCE:
            run.settle(res.would_refuse)
        if entry.kind is CallKind.TOOL:
            if res is not None:
                run.commit(res, None, finished=ok)
            tool = _text(attrs.get(A.GEN_AI_TOOL_NAME)) or "unknown"
            events.emit(
                "on_call_end",
                CallRecord(
                    "tool",
                    run.workflow,
                    entry.phase,
                    _duration(span),
                    "ok" if ok else "error",
                    tool=tool,
                    run=run,
                    step=entry.step,
                    trace_id=sampled_trace_id(span.context),
                ),
            )
            return
        self._account_model_end(span, attrs, entry)

    def _account_model_end(
        self, span: ReadableSpan, attrs: Mapping[str, Any], entry: foreign.ForeignCall
    ) -> None:
        run, res = entry.run, entry.reservation
        provider = _text(attrs.get(A.GEN_AI_PROVIDER_NAME) or attrs.get(A.GEN_AI_SYSTEM_DEPRECATED))
        model = _text(attrs.get(A.GEN_AI_RESPONSE_MODEL) or attrs.get(A.GEN_AI_REQUEST_MODEL))
        spend = _usage_figures(attrs)
        unreported = spend.input_tokens is None and spend.output_tokens is None
        cost_attr = attrs.get(A.GEN_AI_USAGE_COST)
        if cost_attr is not None and _amount(cost_attr):
            spend.cost_usd = float(cost_attr)
        elif not unreported:
            spend.cost_usd = default_resolver().cost(
                provider or "",
                model,
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_read_tokens,
                spend.cache_write_tokens,
            )
        unpriced = not unreported and spend.cost_usd is None
        run.saw_provider(provider)
        if res is not None:
            run.commit(res, None if unreported else spend, unreported=unreported, unpriced=unpriced)
        events.emit(
            "on_call_end",
            CallRecord(
                "model",
                run.workflow,
                entry.phase,
                _duration(span),
                "ok" if span.status.is_ok else "error",
                provider=provider,
                model=model,
                spend=None if unreported else spend,
                cost_usd=spend.cost_usd,
                unreported_usage=unreported,
                unpriced=unpriced,
                run=run,
                trace_id=sampled_trace_id(span.context),
                step=entry.step,
            ),
        )

    def shutdown(self) -> None:
        foreign.clear()
        for close in self.closers:
            try:
                close()
            except Exception:
                log.warning("budgetspan: closing %r failed", close, exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
