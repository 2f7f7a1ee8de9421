"""One counted operation (model call, tool call, retrieval): reserve, span, end once, commit.

``Call`` reserves in the ledger *before* the span opens and before the request is sent (so a
refused call never leaves the process), writes tokens and cost on the span *before* it ends
(``_on_ending`` cannot change a span), commits to the ledger whether or not the span is
sampled, and ends exactly once whatever path the caller takes.

Only ``BudgetExhausted`` (and its ``RunCancelled``) escape from here on purpose; any other error
inside budgetspan is logged and swallowed so the user's call goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.budget import Budget, Limit, ToolLimits
from budgetspan.accounting.ledger import CallKind, Refusal, Reservation, Spend
from budgetspan.calls import foreign
from budgetspan.calls.bounds import AsyncBounds
from budgetspan.calls.outcome import cut_short, record_failure, status_of
from budgetspan.calls.pricing import (
    call_cost,
    check_unpriced,
    estimate_attributes,
    highest,
    increase,
    reported,
    usage_attributes,
    worst_case_cost,
)
from budgetspan.calls.span_write import sampler_reads_attributes, write_end_attributes
from budgetspan.config import capture_content
from budgetspan.events import CallRecord, internal_error
from budgetspan.runs import context, limits, loops
from budgetspan.runs.implicit import resolve_run
from budgetspan.runs.phases import DEFAULT_PHASE_BY_OPERATION
from budgetspan.runs.run import Run

_KIND_BY_OPERATION: dict[str, CallKind | None] = {A.OP_EXECUTE_TOOL: CallKind.TOOL, A.OP_RETRIEVAL: None}
_KIND_NAME: dict[CallKind | None, str] = {**{k: k.value for k in CallKind}, None: "retrieval"}
_NOTHING = Spend()  # what a stream has committed before its first report (never changed)
#: Given to a call's span when it starts, where the sampler could read them
#: (``span_write.sampler_reads_attributes``); every attribute is written again with the results
#: when the call ends, validated once (``span_write.write_end_attributes``).
_AT_START = (
    A.GEN_AI_OPERATION_NAME,
    A.GEN_AI_PROVIDER_NAME,
    A.GEN_AI_REQUEST_MODEL,
    A.GEN_AI_TOOL_NAME,
    A.GEN_AI_DATA_SOURCE_ID,
)


class Call(AsyncBounds):
    """One counted operation. Use ``start()``, then ``end()`` once (further ends are ignored)."""

    #: About 40 fields: past 30, CPython 3.11 gives an instance its own dict, resized as they are
    #: set; slots save about 29k CPU instructions a model call (bench/README.md, per-call pass).
    __slots__ = tuple(
        "_committed _deadline _end_lock _ended _input_estimate _outer _t0 _tokens _watch "  # noqa: SIM905
        "arguments attributes cost_usd defer_commit documents end_attributes estimate is_model kind "
        "kind_name label model operation output_estimate phase provider reservation response_model "
        "retries run signature span span_kind span_name started step tool tool_limits ttft_s usage "
        "worst_case_cost worst_case_input_tokens worst_case_tokens".split()
    )

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
        worst_case_input_tokens: int | None = None,
        input_estimate: Callable[[], int] | None = None,
        label: str | None = None,
        tool_limits: ToolLimits | None = None,
        arguments: tuple[Any, Any] | None = None,
    ) -> None:
        self.operation = operation
        self.is_model = operation not in _KIND_BY_OPERATION  # (every other operation is a model call)
        self.kind: CallKind | None = CallKind.MODEL if self.is_model else _KIND_BY_OPERATION[operation]
        self.kind_name = _KIND_NAME[self.kind]
        self.span_name = span_name
        self.attributes = attributes if attributes is not None else {}
        self.provider = provider
        self.model = model
        self.tool = tool
        self.span_kind = span_kind
        self.worst_case_cost = worst_case_cost
        self.worst_case_tokens = worst_case_tokens  # output tokens: max_tokens x n
        self.worst_case_input_tokens = worst_case_input_tokens
        #: Estimates the request's input tokens, only when needed: a token or dollar limit to hold
        #: the worst case against, or usage the provider never reported.
        self._input_estimate = input_estimate
        self.label = label
        self.tool_limits = tool_limits
        #: A tool call's (args, kwargs): its signature, for loops (``runs/loops.py``).
        self.arguments = arguments
        self.signature: str | None = None
        self._init_state()

    def _init_state(self) -> None:
        """What the call learns and does between its start and its end."""
        #: Set by the instrumentation: written on the span at the end (response id, reasons...).
        self.end_attributes: dict[str, Any] = {}
        #: A whole response's usage is committed with the reservation at the end; a stream's as it comes.
        self.defer_commit = False
        self.response_model: str | None = None
        self.documents: int | None = None
        self.run: Run | None = None
        self.span: Span | None = None
        self.reservation: Reservation | None = None
        self.phase = ""
        self.step = ""  # budgetspan.step(...), else the phase
        self.usage: Spend | None = None  # the cumulative usage last reported
        #: Estimated output tokens of the text the caller received: charged when the provider
        #: never reports usage (with the request's input estimate), never shown as reported.
        self.output_estimate: int | None = None
        self.estimate: Spend | None = None  # what was charged for unreported usage, if anything
        self.cost_usd: float | None = None
        self.retries = 0
        self.ttft_s: float | None = None
        self.started = False
        self._committed: Spend | None = None  # what a stream's reports added to the ledger so far
        self._t0 = 0.0
        self._outer = False
        self._tokens: tuple[object, object] | None = None
        self._ended = False
        self._end_lock = threading.Lock()
        self._deadline: float | None = None  # the run's wall-clock deadline (time.monotonic)
        self._watch: tuple[Any, Any, Any] | None = None  # an async stream's task, untrack, timer

    @property
    def ended(self) -> bool:
        return self._ended

    # start -------------------------------------------------------------------------------
    async def astart(self) -> Call:
        """``start`` for an async call: an async ``on_limit`` policy is awaited here."""
        for _ in range(limits.MAX_ASKS):
            try:
                return self.start(can_await=True)
            except limits.DecisionPending as pending:
                await pending.decide()  # returns after an extension: try again
        return self.start()

    def start(self, *, can_await: bool = False) -> Call:
        """Reserve and open the span. Raises BudgetExhausted if a limit refuses the call."""
        context.check_not_abandoned()  # (ToolTimeout: in a timed-out tool's abandoned body)
        try:
            self.run = resolve_run()
            self.phase = context.current_phase() or DEFAULT_PHASE_BY_OPERATION.get(
                self.operation, "model_decision"
            )
            self.step = context.current_step() or self.phase
            if self.is_model and _limited(self.run, lambda b: b.spend_limited):
                self._estimate_input()
                if self.worst_case_cost is None and self.model:
                    wc_in, wc_out = self.worst_case_input_tokens, self.worst_case_tokens
                    self.worst_case_cost = worst_case_cost(
                        self.provider, self.model, wc_in, wc_out, self.attributes
                    )
        except Exception:
            internal_error("Call.start")
            self.run = None
        run = self.run
        if self.is_model and run is not None and _limited(run, lambda b: b.max_cost_usd is not None):
            check_unpriced(self.provider, self.model, self.attributes, run)  # BudgetExhausted: "refuse"
        self._reserve(can_await)  # BudgetExhausted propagates: the call must not start
        try:
            remaining = self.run.remaining_s() if self.run is not None else None
            if remaining is not None:
                self._deadline = time.monotonic() + remaining
            self._open_span()
        except Exception:
            internal_error("Call.start span")
        return self

    def _reserve(self, can_await: bool = False) -> None:
        run = self.run
        if run is None:
            return
        if run.loops is not None and self.arguments is not None and self.kind is CallKind.TOOL:
            self.signature = loops.signature(self.tool or "", *self.arguments)
            loops.check(run, self.tool or "", self.signature)  # a loop that stops the run raises
        if self.kind is None:  # a retrieval: counted by no limit, refused once the run stopped
            run.check()
            return
        # Started inside another instrumentation's span for this same call: take its
        # reservation over rather than count the call twice.
        taken = foreign.take_over(run, self.kind)
        if taken is not None:
            foreign.mark_duplicate()  # the peer's span around ours: ours counts this call
            self.reservation = run.adopt(taken.reservation)
            return
        self.reservation = run.reserve(
            self.kind,
            tool=self.tool,
            worst_case_cost=self.worst_case_cost,
            worst_case_tokens=self.worst_case_tokens if self.is_model else None,
            worst_case_input_tokens=self.worst_case_input_tokens if self.is_model else None,
            tool_limits=self.tool_limits,
            phase=self.phase,
            can_await=can_await,
        )

    def _open_span(self) -> None:
        attrs = self.attributes  # the request's, and budgetspan's own
        attrs[A.GEN_AI_OPERATION_NAME] = self.operation
        attrs[A.PHASE] = self.phase
        attrs[A.STEP] = self.step
        fallback = context.current_fallback()
        if fallback is not None:
            attrs[A.FALLBACK_FROM], attrs[A.FALLBACK_REASON] = fallback
        if self.run is not None:
            attrs[A.RUN_ID] = self.run.id
            attrs[A.WORKFLOW] = self.run.workflow
        if self.reservation is not None and self.reservation.would_refuse is not None:
            attrs[A.WOULD_REFUSE] = self.reservation.would_refuse.reason
        if self.worst_case_cost is not None:
            attrs[A.WORST_CASE_COST] = self.worst_case_cost
        tracer = context.get_tracer()
        at_start = (
            {key: attrs[key] for key in _AT_START if key in attrs}
            if sampler_reads_attributes(tracer)
            else None
        )
        self.span = tracer.start_span(self.span_name, kind=self.span_kind, attributes=at_start)
        self._outer = context.current_call() is None
        self._t0 = time.monotonic()
        self.started = True
        kind_name = self.kind_name
        events.emit("on_call_start", kind_name, self.span_name, self.run, self.phase, self.label)

    def activate(self) -> Call:
        """Make the span current (and mark 'inside a call') for the SDK call: ``with call.activate():``.
        Activations of one call are sequential (attempts), never nested."""
        return self

    def __enter__(self) -> None:
        try:
            if self.span is not None:
                self._tokens = (
                    otel_context.attach(trace.set_span_in_context(self.span)),
                    context.enter_call(self),  # tells the processor which call is running
                )
        except Exception:
            internal_error("Call.activate")

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        tokens, self._tokens = self._tokens, None
        if tokens is not None:
            try:
                context.exit_call(tokens[1])  # type: ignore[arg-type]
                otel_context.detach(tokens[0])  # type: ignore[arg-type]
            except Exception:
                internal_error("Call.deactivate")

    # during -------------------------------------------------------------------------------
    def first_token(self) -> None:
        if self.ttft_s is None and self.started:
            self.ttft_s = time.monotonic() - self._t0

    def past_deadline(self) -> BaseException | None:
        """Past the run's wall-clock deadline: the run stops there (``max_wall_clock_s``); the
        exception for the caller to raise. None while there is time left."""
        if self._deadline is None or time.monotonic() < self._deadline or self.run is None:
            return None
        return self.run.exhaust(Refusal(Limit.WALL_CLOCK_S.value, self.run.budget.max_wall_clock_s))

    def retry(self) -> None:
        """One more attempt of this call; counted against max_retries (may raise BudgetExhausted)."""
        self.retries += 1
        if self.run is not None:
            self.run.reserve(CallKind.RETRY, tool=self.tool, tool_limits=self.tool_limits)

    def set_usage(self, spend: Spend) -> None:
        """The call's cumulative usage so far (as last reported); commits the increase."""
        try:
            self.usage = spend
            if self.run is None or self.defer_commit:
                return
            self.cost_usd = call_cost(self.provider, self.model, self.response_model, spend)
            now = Spend(
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_read_tokens,
                spend.cache_write_tokens,
                spend.reasoning_tokens,
                self.cost_usd,
            )
            before = _NOTHING if self._committed is None else self._committed
            delta = increase(now, before)
            self._committed = highest(now, before)
            if delta.cost_usd and self.run.ended:  # (read before: what lands in the open run is in it)
                events.emit("on_late_spend", self.run, delta.cost_usd)
            self.run.add_spend(delta, self.reservation)
        except Exception:
            internal_error("Call.set_usage")

    # end ----------------------------------------------------------------------------------
    def end(
        self, error: BaseException | None = None, *, status: str | None = None, stream_end: str | None = None
    ) -> None:
        """End the span and commit, exactly once."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        if self._watch is not None:
            self._unwatch()
        try:
            self._end(error, status or status_of(error), stream_end)
        except Exception:
            internal_error("Call.end")
            if self.span is not None:
                try:
                    self.span.end()
                except Exception:
                    pass

    def _end(self, error: BaseException | None, status: str, stream_end: str | None) -> None:
        duration = time.monotonic() - self._t0 if self.started else 0.0
        spend = self.usage
        unreported = self.is_model and not reported(spend)
        if self.is_model and spend is not None and not unreported:
            self.cost_usd = call_cost(self.provider, self.model, self.response_model, spend)
        if unreported:
            if self.output_estimate is None and stream_end is None and cut_short(error):
                self.output_estimate = self.worst_case_tokens  # sent, unread: billed, maybe whole
            spend = self.estimate = self._estimate()
        priced = self.cost_usd is not None and A.TOOL_FEES_UNPRICED not in self.end_attributes  # (fees too)
        unpriced = self.is_model and not unreported and not priced
        if self.span is not None:
            self._finish_span(self.span, error, status, stream_end, unreported)
        if status == "ok" and self._deadline is not None:
            self.past_deadline()  # a sync call that ended late stops its run (the next call is refused)
        run = self.run
        if run is not None:
            if self._outer:
                run.busy_s += duration
            if self.is_model:
                run.saw_provider(self.provider)
            if self.reservation is not None:
                rest = self._rest(spend)
                if rest is not None and rest.cost_usd and run.ended:
                    events.emit("on_late_spend", run, rest.cost_usd)
                run.commit(
                    self.reservation, rest, finished=status == "ok", unreported=unreported, unpriced=unpriced
                )
        events.emit("on_call_end", self._record(duration, status, self.usage, unreported, unpriced))

    def _estimate_input(self) -> None:
        if self.worst_case_input_tokens is None and self._input_estimate is not None:
            try:
                self.worst_case_input_tokens = self._input_estimate()
            except Exception:
                internal_error("input estimate")

    def _estimate(self) -> Spend | None:
        """Unreported usage is never zero: the request's input estimate and the estimate of the
        text received, priced where the model is (``calls.estimate`` says how good it is)."""
        self._estimate_input()
        inp, out = self.worst_case_input_tokens, self.output_estimate
        if not inp and not out:
            return None
        figures = Spend(inp, out)
        figures.cost_usd = call_cost(self.provider, self.model, self.response_model, figures)
        return figures

    def _rest(self, spend: Spend | None) -> Spend | None:
        """What is left to commit at the end: all of a whole response; of a stream, whatever the
        last report (or a later price) adds to what was committed as it arrived."""
        if spend is None:
            return None
        final = Spend(
            spend.input_tokens,
            spend.output_tokens,
            spend.cache_read_tokens,
            spend.cache_write_tokens,
            spend.reasoning_tokens,
            spend.cost_usd if spend is self.estimate else self.cost_usd,
        )
        return final if self._committed is None else increase(final, self._committed)

    def _finish_span(
        self, span: Span, error: BaseException | None, status: str, stream_end: str | None, unreported: bool
    ) -> None:
        attrs = {**self.attributes, **self.end_attributes}  # the request's (see _AT_START), the results
        if self.response_model:
            attrs[A.GEN_AI_RESPONSE_MODEL] = self.response_model
        if self.is_model:
            if unreported:
                attrs[A.USAGE_UNREPORTED] = True
                attrs.update(estimate_attributes(self.estimate))
            else:
                assert self.usage is not None
                attrs.update(usage_attributes(self.usage, self.cost_usd))
            if self.ttft_s is not None:
                attrs[A.TIME_TO_FIRST_TOKEN_S] = self.ttft_s
        if self.retries:
            attrs[A.RETRIES] = self.retries
            attrs[A.ATTEMPTS] = self.retries + 1
        if self.documents is not None:
            attrs[A.RETRIEVAL_DOCUMENTS] = self.documents
        if stream_end is not None:
            attrs[A.STREAM_END] = stream_end
        if status != "ok":
            record_failure(span, attrs, error, status, redact=not capture_content())
        write_end_attributes(span, attrs)
        span.end()

    def _record(
        self, duration: float, status: str, spend: Spend | None, unreported: bool, unpriced: bool
    ) -> CallRecord:
        return call_record(self, duration, status, spend, unreported, unpriced)


def call_record(
    call: Call, duration: float, status: str, spend: Spend | None, unreported: bool, unpriced: bool
) -> CallRecord:
    """The record a finished call gives its listeners, made with positional arguments: 20
    keywords cost CPython 3.11 about 10k CPU instructions more per call (bench/README.md, second
    per-call pass); ``tests/calls/test_call_record.py`` pins the order of the fields."""
    run = call.run
    span = call.span
    return CallRecord(
        call.kind_name,  # kind
        run.workflow if run is not None else "default",  # workflow
        call.phase,  # phase
        duration,  # duration_s
        status,  # status
        call.provider,  # provider
        call.response_model or call.model,  # model
        call.tool,  # tool
        spend,  # spend
        call.cost_usd,  # cost_usd
        unreported,  # unreported_usage
        unpriced,  # unpriced
        call.retries,  # retries
        call.ttft_s,  # time_to_first_token_s
        call.documents,  # documents
        call.label,  # label
        call.operation,  # operation
        call.step,  # step
        run,  # run
        # the call's own span: cheaper than a context lookup, and the right trace from any thread
        sampled_trace_id(span.get_span_context() if span is not None else None),  # trace_id
    )


def sampled_trace_id(ctx: SpanContext | None) -> int | None:
    """The trace id an exemplar may link to: a sampled trace's only (the backend has it)."""
    return ctx.trace_id if ctx is not None and ctx.trace_flags.sampled else None


def _limited(run: Run | None, has: Callable[[Budget], bool]) -> bool:
    """Whether the run, an enclosing one or a scope above it (tenant, user ...) has a limit that
    ``has`` finds: a call's worst case is then priced and held, an unpriced call is noticed."""
    if run is None:
        return False
    if has(run.budget) or any(has(s.limits.budget) for s in run.scopes):
        return True
    return run.parent is not None and any(has(r.budget) for r in run.ancestors())
