"""One call seen by two instrumentations is counted once.

Under ``opentelemetry-instrument`` with OpenLLMetry or the official openai-v2 installed beside
budgetspan, each OpenAI call gets two GenAI spans: budgetspan's and the other one's, the other
either around budgetspan's wrapper or inside it (instrumentation order). Counting both would halve
every budget. The other instrumentation is played here by a plain tracer making the span it would
make (the peers themselves are checked the same way in bench/'s peer environment)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

import budgetspan
from tests.replay import Recorder, chat_completion, json_response

USAGE = {"prompt_tokens": 15, "completion_tokens": 19, "total_tokens": 34}
ARGS: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
PEER_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
}


def _client(rec: Recorder) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", http_client=rec.sync(), max_retries=0)


def test_a_peer_span_around_our_call_is_the_same_call(instrumented: Any) -> None:
    peer = instrumented.provider.get_tracer("peer.openai")
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with budgetspan.run("twice", max_model_calls=2) as run:
        for _ in range(2):  # two calls, each seen by both instrumentations
            with peer.start_as_current_span("chat gpt-4o-mini", attributes=PEER_CHAT):
                _client(rec).chat.completions.create(**ARGS)
        u = run.usage
    assert (u.model_calls, u.input_tokens, u.output_tokens) == (2, 30, 38)  # not 4 calls, not doubled
    assert len(rec.requests) == 2


def test_a_peer_span_inside_our_call_is_the_same_call(instrumented: Any) -> None:
    peer = instrumented.provider.get_tracer("peer.openai")

    def answer(request: Any) -> Any:  # the peer's span, made while the request runs inside our call
        with peer.start_as_current_span(
            "chat gpt-4o-mini", attributes={**PEER_CHAT, "gen_ai.usage.input_tokens": 15}
        ):
            return json_response(chat_completion(usage=USAGE))(request)

    rec = Recorder(answer)
    with budgetspan.run("twice", max_model_calls=1) as run:
        _client(rec).chat.completions.create(**ARGS)
        u = run.usage
    assert (u.model_calls, u.input_tokens, u.output_tokens) == (1, 15, 19)


def test_separate_peer_calls_still_count(instrumented: Any) -> None:
    """Positive control: a peer span that is not around or inside one of ours is its own call,
    and a peer span of another kind (a tool) inside our model call is counted as a tool call."""
    peer = instrumented.provider.get_tracer("peer.openai")
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with budgetspan.run("separate") as run:
        with peer.start_as_current_span("chat gpt-4o-mini", attributes=PEER_CHAT):
            pass
        _client(rec).chat.completions.create(**ARGS)
        u = run.usage
    assert u.model_calls == 2

    def answer(request: Any) -> Any:
        with peer.start_as_current_span(
            "execute_tool lookup",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"},
        ):
            return json_response(chat_completion(usage=USAGE))(request)

    with budgetspan.run("tool inside") as run:
        _client(Recorder(answer)).chat.completions.create(**ARGS)
        u = run.usage
    assert (u.model_calls, u.tool_calls) == (1, 1)


def test_the_limit_is_not_hit_early_when_two_instrumentations_see_each_call(instrumented: Any) -> None:
    peer = instrumented.provider.get_tracer("peer.openai")
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    done = 0
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("limit", max_model_calls=3):
            for _ in range(5):
                with peer.start_as_current_span("chat gpt-4o-mini", attributes=PEER_CHAT):
                    _client(rec).chat.completions.create(**ARGS)
                done += 1
    assert done == 3 and info.value.reason == "max_model_calls"


def test_a_peer_span_is_counted_once_in_the_report_metrics_and_explanation(instrumented: Any) -> None:
    """The peer's span is marked as the same call: the report and the metrics count one call per
    request, and the run span's explanation agrees with the exception."""
    from prometheus_client import CollectorRegistry

    from budgetspan import attributes as A
    from budgetspan import events
    from budgetspan.processors.file_export import encode_request
    from budgetspan.processors.metrics import BudgetspanMetrics
    from budgetspan.report.analysis import analyze
    from budgetspan.report.load import parse_request

    registry = CollectorRegistry()
    metrics = BudgetspanMetrics(registry=registry)
    events.add_listener(metrics)
    peer = instrumented.provider.get_tracer("peer.openai")
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    try:
        with pytest.raises(budgetspan.BudgetExhausted) as refused:
            with budgetspan.run("twice", max_model_calls=1):
                for _ in range(2):
                    with peer.start_as_current_span("chat gpt-4o-mini", attributes=PEER_CHAT):
                        _client(rec).chat.completions.create(**ARGS)
    finally:
        events.remove_listener(metrics)
    assert len(rec.requests) == 1
    spans = instrumented.exporter.get_finished_spans()
    peers = [s for s in spans if s.instrumentation_scope.name == "peer.openai"]
    assert all(s.attributes.get(A.DUPLICATE_CALL) is True for s in peers)
    (wf,) = analyze(parse_request(encode_request(spans))).workflows
    assert sum(p.calls for p in wf.phases) == 1  # not 2 (or 3) chat calls for one request
    counted = sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == A.M_MODEL_CALLS + "_total"
    )
    assert counted == 1
    (run_span,) = [s for s in spans if s.name == "invoke_agent twice"]
    assert run_span.attributes[A.EXHAUSTED_EXPLANATION] == refused.value.explain(refused.value.usage)
    assert "1 of 1 model calls" in run_span.attributes[A.EXHAUSTED_EXPLANATION]


def test_a_refusal_inside_a_peer_span_is_the_runs_own_story(instrumented: Any) -> None:
    """The peer's span over the limit cannot be refused in ``on_start``; our call inside it is the
    same call and is refused before it is sent. The exception the caller gets is the run's, and
    the run span says what it says: 1 of 1 model calls made, not 2 of 1."""
    peer = instrumented.provider.get_tracer("peer.openai")
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("peer limit", max_model_calls=1) as run:
            for _ in range(2):
                with peer.start_as_current_span("chat gpt-4o-mini", attributes=PEER_CHAT):
                    _client(rec).chat.completions.create(**ARGS)
    assert len(rec.requests) == 1
    assert info.value is run.exhausted
    assert "1 of 1 model calls" in info.value.explanation
    assert run.usage.model_calls == 1
    (run_span,) = instrumented.spans("invoke_agent peer limit")
    (event,) = [e for e in run_span.events if e.name == "budgetspan.budget_exhausted"]
    assert event.attributes["budgetspan.exhausted.explanation"] == info.value.explanation
    assert run_span.attributes["budgetspan.exhausted.explanation"] == info.value.explanation


def test_a_peer_call_over_the_limit_that_ends_stops_the_run_after_it(instrumented: Any) -> None:
    """A peer's call with no call of ours inside did happen: the run is exhausted when it ends
    (counted, 2 of 1), and the next call is refused."""
    peer = instrumented.provider.get_tracer("peer.openai")
    rec = Recorder(json_response(chat_completion(usage=USAGE)))
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("peer only", max_model_calls=1) as run:
            _client(rec).chat.completions.create(**ARGS)
            with peer.start_as_current_span("chat gpt-4o-mini", attributes=PEER_CHAT):
                pass
            assert run.exhausted is not None and run.usage.model_calls == 2
            _client(rec).chat.completions.create(**ARGS)
    assert len(rec.requests) == 1 and info.value.reason == "max_model_calls"
