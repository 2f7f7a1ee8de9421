"""The shared wrapper core: one counted operation (model call, tool call, retrieval).

``Call`` reserves in the ledger *before* the span opens and before the request is sent (so a
refused call never leaves the process), writes tokens and cost on the span *before* it ends
(``_on_ending`` cannot change a span), commits to the ledger whether or not the span is
sampled, and ends exactly once whatever path the caller takes.

Only ``BudgetExhausted`` (and its ``RunCancelled``) escape from here on purpose; any other error
inside budgetspan is logged and swallowed so the user's call goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from budgetspan import attributes as A
from budgetspan import events, foreign_spans
from budgetspan.budget import BudgetExhausted, Limit, ToolLimits
from budgetspan.events import CallRecord
from budgetspan.instrumentation.trusted_attributes import attributes_unread_at_start, set_trusted_attributes
from budgetspan.ledger import CallKind, Refusal, Reservation, Spend
from budgetspan.phase import DEFAULT_PHASE_BY_OPERATION
from budgetspan.pricing import default_resolver
from budgetspan.run import Run, _current_phase, _in_call, get_tracer, resolve_run

log = logging.getLogger("budgetspan")

_NOTHING = Spend(0, 0, 0, 0, 0, 0.0)  # what a call has committed before its first usage report
_MODEL = CallKind.MODEL  # a global: enum members read through the class are slow
_KIND_BY_OPERATION = {A.OP_EXECUTE_TOOL: CallKind.TOOL, A.OP_RETRIEVAL: None}
_KIND_NAME: dict[CallKind | None, str] = {k: k.value for k in CallKind} | {None: "retrieval"}
_internal_errors = 0


def internal_error(where: str) -> None:
    """Log an error inside budgetspan (never raised to the user) and count it."""
    global _internal_errors
    _internal_errors += 1
    log.warning("budgetspan internal error in %s (the call goes on)", where, exc_info=True)
    events.emit("on_internal_error", where)


def capture_content() -> bool:
    """Message content is recorded only when the standard GenAI switch says so."""
    if _ENV_DATA is not None and _ENV_DATA.get(_CAPTURE_KEY) is None:
        return False  # unset (the usual case): one dict lookup, not os.environ's codecs
    return os.environ.get(A.ENV_CAPTURE_CONTENT, "").strip().lower() in ("true", "1", "yes")


# ``os.environ`` keeps its values in ``_data`` (keys encoded); setenv/putenv go through it.
_ENV_DATA: Any = getattr(os.environ, "_data", None)
try:
    _CAPTURE_KEY: Any = os.environ.encodekey(A.ENV_CAPTURE_CONTENT)
except Exception:
    _ENV_DATA = None
if not isinstance(_ENV_DATA, dict):
    _ENV_DATA = None


class Call:
    """One counted operation. Use ``start()``, then ``end()`` once (further ends are ignored)."""

    # Defaults live on the class: an instance stores only what differs (a call is made per
    # request; 20 assignments in __init__ were a measurable part of its cost).
    response_model: str | None = None
    run: Run | None = None
    span: Span | None = None
    reservation: Reservation | None = None
    phase: str = ""
    usage: Spend | None = None
    _committed: Spend = _NOTHING  # replaced at the first commit of a usage report
    # Written with the usage in the one trusted write at the end (response id, reasons...).
    end_attributes: dict[str, Any] | None = None
    # A whole response: its usage is committed with the reservation at the end, in one
    # ledger operation; streams commit each report as it arrives.
    defer_commit: bool = False
    cost_usd: float | None = None
    retries: int = 0
    ttft_s: float | None = None
    documents: int | None = None
    t0: float = 0.0
    started: bool = False
    _outer: bool = False
    _priced: tuple[Any, ...] | None = None  # (spend, response_model, model, provider) last priced
    _token: Any = None
    _deferred: dict[str, Any] | None = None  # start attributes written at the end (if absent)

    def __init__(
        self,
        operation: str,
        span_name: str,
        attributes: dict[str, Any] | None = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        tool: str | None = None,
        span_kind: SpanKind = SpanKind.CLIENT,
        worst_case_cost: float | None = None,
        worst_case_tokens: int | None = None,
        label: str | None = None,
        tool_limits: ToolLimits | None = None,
    ) -> None:
        self.operation = operation
        self.tool_limits = tool_limits
        self.kind: CallKind | None = _KIND_BY_OPERATION.get(operation, _MODEL)
        self.span_name = span_name
        self.attributes = attributes if attributes is not None else {}
        self.provider = provider
        self.model = model
        self.tool = tool
        self.span_kind = span_kind
        self.worst_case_cost = worst_case_cost
        self.worst_case_tokens = worst_case_tokens
        self.label = label
        # Exactly-once end without a lock: ``list.pop`` is atomic, only the first end gets the item.
        self._end_token: list[bool] = [True]

    @property
    def ended(self) -> bool:
        return not self._end_token

    # start -------------------------------------------------------------------------------
    def start(self) -> Call:
        """Reserve and open the span. Raises BudgetExhausted if a limit refuses the call."""
        try:
            self.run = resolve_run()
            self.phase = _current_phase.get() or DEFAULT_PHASE_BY_OPERATION.get(
                self.operation, "model_decision"
            )
            if self.kind is _MODEL and self.worst_case_cost is None and self.worst_case_tokens and self.model:
                self.worst_case_cost = default_resolver().worst_case_cost(
                    self.provider or "", self.model, 0, self.worst_case_tokens
                )
        except Exception:
            internal_error("Call.start")
            self.run = None
        taken = None
        if self.run is not None and self.kind is not None:
            # Started inside another instrumentation's span for this same call: take its
            # reservation over rather than count the call twice.
            taken = foreign_spans.take_over(self.run, self.kind)
        if taken is not None:
            assert self.run is not None
            self.reservation = self.run.adopt(taken.reservation)  # BudgetExhausted propagates
        elif self.run is not None and self.kind is not None:
            # BudgetExhausted propagates: the call must not start.
            self.reservation = self.run.reserve(
                self.kind,
                tool=self.tool,
                worst_case_cost=self.worst_case_cost,
                worst_case_tokens=self.worst_case_tokens if self.kind is _MODEL else None,
                tool_limits=self.tool_limits,
            )
        elif self.run is not None:
            self.run.check()
        try:
            attrs = self.attributes  # the request's, and budgetspan's own
            attrs[A.GEN_AI_OPERATION_NAME] = self.operation
            attrs[A.PHASE] = self.phase
            if self.run is not None:
                attrs[A.RUN_ID] = self.run.id
                attrs[A.WORKFLOW] = self.run.workflow
            if self.reservation is not None and self.reservation.would_refuse is not None:
                attrs[A.WOULD_REFUSE] = self.reservation.would_refuse.reason
            if self.worst_case_cost is not None:
                attrs[A.WORST_CASE_COST] = self.worst_case_cost
            tracer = get_tracer()
            if attributes_unread_at_start(tracer):
                # No sampler or processor looks at them before the end: they are written then, in
                # the one trusted write, where the span has no value of its own for them yet.
                self._deferred = attrs
                self.span = tracer.start_span(self.span_name, kind=self.span_kind)
            else:
                self.span = tracer.start_span(self.span_name, kind=self.span_kind, attributes=attrs)
            self._outer = not _in_call.get()
            self.t0 = time.monotonic()
            self.started = True
            events.emit(
                "on_call_start",
                _KIND_NAME[self.kind],
                self.span_name,
                self.run,
                self.phase,
                self.label,
            )
        except Exception:
            internal_error("Call.start span")
        return self

    def activate(self) -> Call:
        """Make the span current (and mark 'inside a call') for the duration of the SDK call:
        ``with call.activate():``. The call is its own context manager (one object less per call);
        activations of one call are sequential (attempts), never nested."""
        return self

    def __enter__(self) -> None:
        try:
            span = self.span
            if span is not None:
                self._token = (
                    otel_context.attach(trace.set_span_in_context(span)),
                    _in_call.set(self),  # truthy, and tells the processor which call is running
                )
        except Exception:
            internal_error("Call.activate")

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        tokens = self._token
        if tokens is not None:
            self._token = None
            try:
                _in_call.reset(tokens[1])
                otel_context.detach(tokens[0])
            except Exception:
                internal_error("Call.deactivate")

    # during -------------------------------------------------------------------------------
    def first_token(self) -> None:
        if self.ttft_s is None and self.started:
            self.ttft_s = time.monotonic() - self.t0

    def retry(self) -> None:
        """One more attempt of this call; counted against max_retries (may raise BudgetExhausted)."""
        self.retries += 1
        if self.run is not None:
            self.run.reserve(CallKind.RETRY, tool=self.tool, tool_limits=self.tool_limits)

    def set_usage(self, spend: Spend) -> None:
        """The call's cumulative usage so far (as last reported). Commits the increase to the ledger."""
        try:
            self.usage = spend
            if self.run is None or self.defer_commit:
                return
            cost = self._price(spend)
            c = self._committed  # every figure an int (a float for the cost), never None
            i, o, cr, cw, r = (
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_read_tokens,
                spend.cache_write_tokens,
                spend.reasoning_tokens,
            )
            ci, co, ccr, ccw, cr_ = (
                c.input_tokens or 0,
                c.output_tokens or 0,
                c.cache_read_tokens or 0,
                c.cache_write_tokens or 0,
                c.reasoning_tokens or 0,
            )
            cc = c.cost_usd or 0.0
            dc = None if cost is None else cost - cc
            delta = Spend(
                _inc(i, ci),
                _inc(o, co),
                _inc(cr, ccr),
                _inc(cw, ccw),
                _inc(r, cr_),
                None if dc is None else (dc if dc > 0.0 else 0.0),
            )
            self._committed = Spend(
                _hi(i, ci), _hi(o, co), _hi(cr, ccr), _hi(cw, ccw), _hi(r, cr_), _hi(cost or 0.0, cc)
            )
            self.run.add_spend(delta)
        except Exception:
            internal_error("Call.set_usage")

    def _price(self, spend: Spend) -> float | None:
        self._priced = (spend, self.response_model, self.model, self.provider)
        if spend.cost_usd is not None:  # the provider said what the call cost: that wins
            self.cost_usd = spend.cost_usd
            return spend.cost_usd
        model = self.response_model or self.model
        cost = default_resolver().cost(
            self.provider or "",
            model,
            spend.input_tokens,
            spend.output_tokens,
            spend.cache_read_tokens,
            spend.cache_write_tokens,
        )
        if cost is None and self.response_model and self.model and self.response_model != self.model:
            cost = default_resolver().cost(
                self.provider or "",
                self.model,
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_read_tokens,
                spend.cache_write_tokens,
            )
        self.cost_usd = cost
        return cost

    # end ----------------------------------------------------------------------------------
    def end(
        self, error: BaseException | None = None, *, status: str | None = None, stream_end: str | None = None
    ) -> None:
        """End the span and commit, exactly once."""
        try:
            self._end_token.pop()  # atomic: of several threads ending the call, one gets the item
        except IndexError:
            return  # already ended
        try:
            self._end(error, status, stream_end)
        except Exception:
            internal_error("Call.end")
            if self.span is not None:
                try:
                    self.span.end()
                except Exception:
                    pass

    def _end(self, error: BaseException | None, status: str | None, stream_end: str | None) -> None:
        duration = time.monotonic() - self.t0 if self.started else 0.0
        if status is None:
            if error is None:
                status = "ok"
            elif isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
                status = "cancelled"
            elif isinstance(error, (TimeoutError, asyncio.TimeoutError)):
                status = "timeout"
            elif isinstance(error, BudgetExhausted):
                status = "refused"
            else:
                status = "error"
        is_model = self.kind is _MODEL
        unreported = is_model and (
            self.usage is None or (self.usage.input_tokens is None and self.usage.output_tokens is None)
        )
        spend = self.usage
        if is_model and spend is not None and not unreported:
            priced = self._priced  # re-price only if the response model arrived after the last report
            if (
                priced is None
                or priced[0] is not spend
                or priced[1] != self.response_model
                or priced[2] != self.model
                or priced[3] != self.provider
            ):
                self._price(spend)
        unpriced = is_model and not unreported and self.cost_usd is None
        span = self.span
        if span is not None:
            attrs = self.end_attributes if self.end_attributes is not None else {}
            if self.response_model:
                attrs[A.GEN_AI_RESPONSE_MODEL] = self.response_model
            if is_model:
                if unreported:
                    attrs[A.USAGE_UNREPORTED] = True
                else:
                    assert spend is not None
                    _put(attrs, A.GEN_AI_USAGE_INPUT_TOKENS, spend.input_tokens)
                    _put(attrs, A.GEN_AI_USAGE_OUTPUT_TOKENS, spend.output_tokens)
                    _put(attrs, A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, spend.cache_read_tokens)
                    _put(attrs, A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, spend.cache_write_tokens)
                    _put(attrs, A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, spend.reasoning_tokens)
                    if self.cost_usd is not None:
                        attrs[A.GEN_AI_USAGE_COST] = self.cost_usd
                    else:
                        attrs[A.COST_UNPRICED] = True
                if self.ttft_s is not None:
                    attrs[A.TIME_TO_FIRST_TOKEN_S] = self.ttft_s
            if self.retries:
                attrs[A.RETRIES] = self.retries
                attrs[A.ATTEMPTS] = self.retries + 1
            if self.documents is not None:
                attrs[A.RETRIEVAL_DOCUMENTS] = self.documents
            if stream_end is not None:
                attrs[A.STREAM_END] = stream_end
            if status == "timeout":
                attrs[A.TOOL_TIMED_OUT] = True
            if error is not None and status != "ok":
                attrs[A.ERROR_TYPE] = type(error).__qualname__
                if status != "cancelled":
                    _record_error(span, error, redact=is_model and not capture_content())
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
            elif status not in ("ok",):
                attrs[A.ERROR_TYPE] = status
                span.set_status(Status(StatusCode.ERROR, status))
            set_trusted_attributes(span, attrs, self._deferred)
            span.end()
        run = self.run
        if run is not None:
            if self._outer:
                run.busy_s += duration
            if self.reservation is not None:
                rest = None
                if self._committed is _NOTHING:
                    # Nothing committed along the way (a whole response): all of it, now.
                    if spend is not None:
                        rest = Spend(
                            spend.input_tokens,
                            spend.output_tokens,
                            spend.cache_read_tokens,
                            spend.cache_write_tokens,
                            spend.reasoning_tokens,
                            self.cost_usd,
                        )
                elif self.cost_usd is not None and self.cost_usd > (self._committed.cost_usd or 0.0):
                    # Usage was committed as it arrived (set_usage); only a re-priced cost is left.
                    rest = Spend(cost_usd=self.cost_usd - (self._committed.cost_usd or 0.0))
                run.commit(
                    self.reservation, rest, finished=status == "ok", unreported=unreported, unpriced=unpriced
                )
        if not events.call_end_handlers:
            return  # nobody reads the record: do not build it
        events.emit(
            "on_call_end",
            CallRecord(
                _KIND_NAME[self.kind],
                run.workflow if run is not None else "default",
                self.phase,
                duration,
                status,
                self.provider,
                self.response_model or self.model,
                self.tool,
                spend,
                self.cost_usd,
                unreported,
                unpriced,
                self.retries,
                self.ttft_s,
                self.documents,
                self.label,
                run,
            ),
        )

    # deadlines and cancellation for async calls ---------------------------------------------
    @asynccontextmanager
    async def deadline(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Bound an awaited call by the run's remaining wall-clock time (and ``timeout_s``).

        The run's deadline turns into BudgetExhausted(max_wall_clock_s); ``timeout_s`` into
        TimeoutError; ``budgetspan.cancel`` into RunCancelled.
        """
        run = self.run
        remaining = run.remaining_s() if run is not None else None
        limit = min((t for t in (remaining, timeout_s) if t is not None), default=None)
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not on asyncio (trio via anyio): no bound, rather than an error
            yield
            return
        untrack = run._track_task(task) if (run is not None and task is not None) else None
        try:
            if limit is None:
                try:
                    yield
                except asyncio.CancelledError:
                    if run is not None and run.cancelled and task is not None:
                        task.uncancel()
                        raise run.exhaust(Refusal(Limit.CANCELLED.value, None)) from None
                    raise
                return
            try:
                async with asyncio.timeout(limit):
                    yield
            except TimeoutError:
                if (
                    run is not None
                    and remaining is not None
                    and remaining <= (timeout_s if timeout_s is not None else float("inf"))
                ):
                    raise run.exhaust(
                        Refusal(Limit.WALL_CLOCK_S.value, run.budget.max_wall_clock_s)
                    ) from None
                raise
            except asyncio.CancelledError:
                if run is not None and run.cancelled and task is not None:
                    task.uncancel()
                    raise run.exhaust(Refusal(Limit.CANCELLED.value, None)) from None
                raise
        finally:
            if untrack is not None:
                untrack()


def _record_error(span: Span, error: BaseException, *, redact: bool) -> None:
    """Record the exception; for model calls without content capture, without its message.

    A provider's error often quotes the request ("Invalid content: '...'"): its message and the
    last line of the stack trace would put prompt text on the span. The frames stay, for debugging.
    """
    if not redact:
        span.record_exception(error)
        return
    status = getattr(error, "status_code", None)
    message = type(error).__name__ + (f" (HTTP {status})" if isinstance(status, int) else "")
    frames = "".join(traceback.format_tb(error.__traceback__)) + message
    span.record_exception(error, attributes={"exception.message": message, "exception.stacktrace": frames})


def _inc(now: int | None, before: int) -> int | None:
    """``max(0, now - before)`` (None stays None), without the builtin's call overhead."""
    if now is None:
        return None
    d = now - before
    return d if d > 0 else 0


def _hi(now: Any, before: Any) -> Any:
    """``max(now or 0, before)``, same result (NaN included), without the call overhead."""
    a = now or 0
    return before if before > a else a


_INT64 = 2**63


def _put(attrs: dict[str, Any], key: str, value: int | None) -> None:
    # A count no provider could mean (negative, beyond int64: OTLP cannot encode it) is not written.
    if value is not None and 0 <= value < _INT64:
        attrs[key] = value
