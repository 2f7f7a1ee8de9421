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
from collections.abc import Callable
from typing import Any, TypeGuard

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from budgetspan import events, foreign_spans
from budgetspan.attributes import (
    ENV_ENFORCE_FOREIGN,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM_DEPRECATED,
    GEN_AI_TOOL_NAME,
    GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    GEN_AI_USAGE_COMPLETION_TOKENS_LEGACY,
    GEN_AI_USAGE_COST,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GEN_AI_USAGE_PROMPT_TOKENS_LEGACY,
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    INSTRUMENTATION_SCOPE,
    MODEL_OPERATIONS,
    OP_EXECUTE_TOOL,
    PHASE,
    RUN_ID,
    WOULD_REFUSE,
)
from budgetspan.budget import BudgetExhausted
from budgetspan.events import CallRecord
from budgetspan.instrumentation.trusted_attributes import register_blind_processor, tag_starting_span
from budgetspan.ledger import CallKind, LedgerRefused, Mode, Reservation, Spend
from budgetspan.phase import DEFAULT_PHASE_BY_OPERATION
from budgetspan.pricing import default_resolver
from budgetspan.run import (
    Run,
    _current_phase,
    _current_run,
    _in_call,
    _trace_runs,
    end_trace_run,
    resolve_run,
)

log = logging.getLogger(__name__)

# Enum members read through the class cost ~10x a global: every accounted span uses these.
_MODEL, _TOOL, _ENFORCE = CallKind.MODEL, CallKind.TOOL, Mode.ENFORCE
_new_tuple = tuple.__new__
_pending = foreign_spans.pending
_ACCOUNTED_OPS = MODEL_OPERATIONS | {OP_EXECUTE_TOOL}
_INT_FAST_LIMIT = 2**1023  # below it an int converts to a finite float (a power of two: see _usage_figures)


def _amount(v: Any) -> TypeGuard[int | float]:
    """A usable figure: a finite non-negative number (not a bool, NaN, inf or an int past floats)."""
    if type(v) is int and 0 <= v < _INT_FAST_LIMIT:  # the common case, decided without isfinite
        return True
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and v >= 0
    except OverflowError:
        return False


def _int_attr(attrs: Any, key: str, legacy: str | None = None) -> int | None:
    v = attrs.get(key)
    if type(v) is int and 0 <= v < _INT_FAST_LIMIT:
        return v
    if v is not None and _amount(v):
        return int(v)
    if legacy is not None:
        v = attrs.get(legacy)
        if v is not None and _amount(v):
            return int(v)
    return None


def _duration(span: ReadableSpan) -> float:
    return ((span.end_time or 0) - (span.start_time or 0)) / 1e9


def _usage_figures(attrs: Any) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """Input, output, cache read, cache write and reasoning tokens; None where not a usable figure."""
    inp = attrs.get(GEN_AI_USAGE_INPUT_TOKENS)
    out = attrs.get(GEN_AI_USAGE_OUTPUT_TOKENS)
    cr = attrs.get(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)
    cw = attrs.get(GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS)
    reasoning = attrs.get(GEN_AI_USAGE_REASONING_OUTPUT_TOKENS)
    # The usual span: input and output as plain ints in range, the others such ints or absent.
    # One bitwise or checks the ranges: negative if any figure is, and below the limit (a power
    # of two) only if every one is. (Plain code: map/set tricks cost twice as much at this size.)
    if (
        type(inp) is int
        and type(out) is int
        and (cr is None or type(cr) is int)
        and (cw is None or type(cw) is int)
        and (reasoning is None or type(reasoning) is int)
        and 0 <= inp | out | (cr or 0) | (cw or 0) | (reasoning or 0) < _INT_FAST_LIMIT
    ):
        return inp, out, cr, cw, reasoning
    return (
        _int_attr(attrs, GEN_AI_USAGE_INPUT_TOKENS, GEN_AI_USAGE_PROMPT_TOKENS_LEGACY),
        _int_attr(attrs, GEN_AI_USAGE_OUTPUT_TOKENS, GEN_AI_USAGE_COMPLETION_TOKENS_LEGACY),
        _int_attr(attrs, GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        _int_attr(attrs, GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        _int_attr(attrs, GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
    )


def _attributes(span: ReadableSpan) -> Any:
    """The span's attributes for reading, as a plain dict where the SDK keeps one.

    ``ReadableSpan.attributes`` wraps them in a read-only proxy over ``BoundedAttributes``, where
    each missing key costs an exception (~1 µs) and a copy a few µs; every span passes here, so
    use the SDK's underlying dict when it is there, and the public view otherwise. Only read.
    """
    try:
        raw = span._attributes._dict  # type: ignore[union-attr]
    except AttributeError:
        raw = None
    if type(raw) is dict:
        return raw
    return span.attributes or {}


class BudgetSpanProcessor(SpanProcessor):
    """The single authority on limits for spans that budgetspan's wrappers did not make."""

    def __init__(self, enforce_foreign: bool | None = None) -> None:
        if enforce_foreign is None:
            enforce_foreign = os.environ.get(ENV_ENFORCE_FOREIGN, "").strip().lower() in (
                "1",
                "true",
                "yes",
            )
        self.enforce_foreign = enforce_foreign
        #: Called on shutdown: what the provider's lifetime owns but need not see every span
        #: (the metrics endpoint).
        self.closers: list[Callable[[], None]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:  # the SDK span's fields, read directly: its properties are Python calls
            scope_name = span._instrumentation_scope._name  # type: ignore[union-attr]
            attrs = span._attributes._dict  # type: ignore[union-attr]
        except AttributeError:
            scope = span.instrumentation_scope
            scope_name = scope.name if scope is not None else None
            attrs = None
        if scope_name == INSTRUMENTATION_SCOPE:
            return
        if type(attrs) is not dict:
            attrs = _attributes(span)
        op = attrs.get(GEN_AI_OPERATION_NAME)
        if op not in _ACCOUNTED_OPS:
            return
        kind = _TOOL if op == OP_EXECUTE_TOOL else _MODEL
        current = _in_call.get()
        if current:
            # Inside budgetspan's own call of the same kind: another instrumentation's view of
            # that call (openai-v2 inside our OpenAI wrapper, an in-process MCP server serving our
            # tool call), already counted.
            if getattr(current, "kind", None) is kind:
                return
            if op == OP_EXECUTE_TOOL and span.kind is SpanKind.SERVER:
                return  # an in-process tool server serving a call already counted
        refused: BudgetExhausted | None = None
        try:
            refused = self._account_start(span, attrs, op, kind)
        except Exception:
            log.warning("budgetspan: accounting a foreign span failed", exc_info=True)
        if refused is not None:
            raise refused  # only with enforce_foreign: the caller asked for refusal here

    def _account_start(self, span: Span, attrs: Any, op: str, kind: CallKind) -> BudgetExhausted | None:
        run = _current_run.get()
        if run is None:
            run = resolve_run()
        phase = (
            _current_phase.get() or attrs.get(PHASE) or DEFAULT_PHASE_BY_OPERATION.get(op, "model_decision")
        )
        if type(phase) is not str:
            phase = str(phase)
        run_id = run.id
        if type(run_id) is not str:  # (typed str, but the tag below writes it unchecked)
            run_id = str(run_id)
        tag_starting_span(span, PHASE, phase, RUN_ID, run_id)
        tool = attrs.get(GEN_AI_TOOL_NAME) if kind is _TOOL else None
        enforce = self.enforce_foreign and run.mode is _ENFORCE
        try:
            res = run._ledger.reserve(run.id, kind, tool=tool, force=not enforce)
        except LedgerRefused as r:
            span.set_attribute(WOULD_REFUSE, r.refusal.reason)
            return run.exhaust(r.refusal)
        except KeyError:
            return None
        if res.would_refuse is not None:
            span.set_attribute(WOULD_REFUSE, res.would_refuse.reason)
            if run.mode is _ENFORCE:
                run.exhaust(res.would_refuse)  # counted; the next budgetspan call is refused
            else:
                run.note_would_refuse(res.would_refuse)
        try:
            ctx = span._context
        except AttributeError:
            ctx = span.get_span_context()
        if ctx is not None:
            # (tuple.__new__: a NamedTuple's own constructor is a Python call, this one is not)
            _pending[id(ctx)] = _new_tuple(foreign_spans.ForeignCall, (run, res, phase, kind, ctx))
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            try:  # the SDK span's fields, read directly: its properties are Python calls
                ctx = span._context
            except AttributeError:
                ctx = span.context
            if ctx is None:
                return
            entry = _pending.pop(id(ctx), None) if _pending else None  # (see foreign_spans.pending)
            if entry is not None:
                run, res, phase, kind, _ = entry
                self._account_end(span, run, res, phase, kind)
            if _trace_runs:  # implicit runs, one per trace: a local root span ends its trace's
                parent = span.parent
                if (parent is None or parent.is_remote) and ctx.trace_id in _trace_runs:
                    end_trace_run(ctx.trace_id, error=not span.status.is_ok)
        except Exception:
            log.warning("budgetspan: accounting a finished span failed", exc_info=True)

    def _account_end(
        self, span: ReadableSpan, run: Run, res: Reservation | None, phase: str, kind: CallKind
    ) -> None:
        attrs = _attributes(span)
        if kind is _TOOL:
            ok = span.status.is_ok
            if res is not None:
                run.commit(res, None, finished=ok)
            if not events.call_end_handlers:
                return
            events.emit(
                "on_call_end",
                CallRecord(
                    "tool",
                    run.workflow,
                    phase,
                    _duration(span),
                    "ok" if ok else "error",
                    tool=str(attrs.get(GEN_AI_TOOL_NAME) or "unknown"),
                    run=run,
                ),
            )
            return
        provider = attrs.get(GEN_AI_PROVIDER_NAME) or attrs.get(GEN_AI_SYSTEM_DEPRECATED) or ""
        if type(provider) is not str:
            provider = str(provider)
        model = attrs.get(GEN_AI_RESPONSE_MODEL) or attrs.get(GEN_AI_REQUEST_MODEL) or None
        if model is not None and type(model) is not str:
            model = str(model)
        inp, out, cr, cw, reasoning = _usage_figures(attrs)
        unreported = inp is None and out is None
        cost_attr = attrs.get(GEN_AI_USAGE_COST)
        cost: float | None = None
        if cost_attr is not None and _amount(cost_attr):
            cost = float(cost_attr)
        elif not unreported:
            cost = default_resolver().cost(provider, model, inp, out, cr, cw)
        unpriced = not unreported and cost is None
        if res is not None:
            if unreported:  # no tokens said: nothing is added, as for any call without usage
                refusal = run._ledger.commit(res, None, unreported=True)
            else:
                refusal = run._ledger.commit_figures(
                    res, inp, out, cr, cw, reasoning, cost, unpriced=unpriced
                )
            if refusal is not None:
                run.note_spend_limit(refusal)
        if not events.call_end_handlers:
            return
        spend = Spend(inp, out, cr, cw, reasoning, cost)
        # Positional, in field order (as in instrumentation/calls.py): keywords to a class call
        # go through a dict, about 0.3 µs more for a record this size.
        events.emit(
            "on_call_end",
            CallRecord(
                "model",
                run.workflow,
                phase,
                _duration(span),
                "ok" if span.status.is_ok else "error",
                provider or None,  # provider
                model,
                None,  # tool
                None if unreported else spend,
                cost,
                unreported,  # unreported_usage
                unpriced,
                0,  # retries
                None,  # time_to_first_token_s
                None,  # documents
                None,  # label
                run,
            ),
        )

    def shutdown(self) -> None:
        foreign_spans.clear()
        for close in self.closers:
            try:
                close()
            except Exception:
                log.warning("budgetspan: closing %r failed", close, exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# Its on_start returns before reading anything for budgetspan's own spans (checked by scope).
register_blind_processor(BudgetSpanProcessor)
