"""AWS Bedrock Runtime through the real ``boto3``: every recorded exchange replayed (vcrpy) with
its usage matched exactly, and enforcement, streams, retries and unreported usage against a
loopback server that counts the requests reaching the wire."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import boto3
import botocore.endpoint
import pytest
import yaml
from botocore.config import Config
from botocore.eventstream import EventStream
from botocore.exceptions import EventStreamError
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from tests.instrumentation.local_server import (
    Answer,
    LocalServer,
    chunk_event,
    event,
    event_frame,
    event_stream,
    json_answer,
)
from tests.replay import all_cassettes, cassette, expected_cost, replay, requests_of

HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
CONVERSE: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": "Tell me a joke"}]}]}

# cassette -> per interaction: (input incl. cache, output, cache read, cache write)
EXPECTED: dict[str, list[tuple[int, int, int | None, int | None]]] = {
    "bedrock/test_meta__test_meta_converse.yaml": [(52, 30, None, None)],
    "bedrock/test_nova__test_nova_converse_stream.yaml": [(54, 18, None, None)],
    "bedrock/test_anthropic__test_anthropic_3_completion_string_content.yaml": [(16, 19, None, None)],
    "bedrock/test_prompt_caching__test_invoke_model_cache_tokens.yaml": [
        (4 + 18131, 50, 0, 18131),  # Bedrock's input (4) leaves the cache write out: added
        (4 + 18131, 50, 18131, 0),
    ],
}


def recorded(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(operation, modelId, request body) of each exchange, read off the cassette's URIs."""
    data = yaml.safe_load(cassette(name).read_text())
    out = []
    for interaction, body in zip(data["interactions"], requests_of(name), strict=True):
        _, _, model, operation = interaction["request"]["uri"].rsplit("/", 3)
        out.append((operation, unquote(model), body))
    return out


def send(client: Any, operation: str, model: str, body: dict[str, Any]) -> Any:
    if operation == "converse":
        return client.converse(modelId=model, **body)
    if operation == "converse-stream":
        response = client.converse_stream(modelId=model, **body)
        return list(response["stream"])
    response = client.invoke_model(modelId=model, body=json.dumps(body))
    return json.loads(response["body"].read())


def check(span: Any, want: tuple[int, int, int | None, int | None], model: str) -> None:
    attrs = dict(span.attributes)
    inp, out, cr, cw = want
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "aws.bedrock"
    assert attrs[A.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[A.GEN_AI_REQUEST_MODEL] == model
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == inp
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == out
    assert attrs.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS) == cr
    assert attrs.get(A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS) == cw
    assert A.USAGE_UNREPORTED not in attrs
    price = expected_cost("aws", model, inp, out, cr or 0, cw or 0)
    assert price is not None  # every recorded Bedrock id is priced, region prefix or not
    assert attrs[A.GEN_AI_USAGE_COST] == pytest.approx(price, rel=1e-9)


def calls(tracing: Any) -> list[Any]:
    """The model-call spans (not the run's)."""
    return [s for s in tracing.spans() if s.attributes.get(A.GEN_AI_OPERATION_NAME) != "invoke_agent"]


def test_every_bedrock_cassette_is_covered() -> None:
    assert sorted(EXPECTED) == [c for c in all_cassettes() if c.startswith("bedrock/")]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_replay_matches_the_recorded_usage(bedrock: Any, name: str) -> None:
    client = boto3.client("bedrock-runtime")
    exchanges = recorded(name)
    with replay(name) as cas, budgetspan.run("replay") as run:
        answers = [send(client, *exchange) for exchange in exchanges]
        assert cas.all_played
    spans = calls(bedrock)
    assert len(spans) == len(EXPECTED[name])
    for span, want, (_, model, _) in zip(spans, EXPECTED[name], exchanges, strict=True):
        check(span, want, model)
    assert run.usage.model_calls == len(exchanges)
    assert run.usage.input_tokens == sum(w[0] for w in EXPECTED[name])
    assert run.usage.output_tokens == sum(w[1] for w in EXPECTED[name])
    assert run.usage.cost_usd == pytest.approx(sum(s.attributes[A.GEN_AI_USAGE_COST] for s in spans))
    assert answers  # the caller still got every answer


def test_converse_stream_replay_ends_once_consumed(bedrock: Any) -> None:
    name = "bedrock/test_nova__test_nova_converse_stream.yaml"
    client = boto3.client("bedrock-runtime")
    with replay(name):
        events = send(client, *recorded(name)[0])
    assert "metadata" in events[-1]  # the caller saw every event, the usage one too
    (span,) = calls(bedrock)
    assert span.attributes[A.STREAM_END] == "consumed"
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("guardrail_intervened",)
    assert span.attributes[A.STREAM] is True


def test_invoke_model_body_still_readable_and_response_read(bedrock: Any) -> None:
    name = "bedrock/test_anthropic__test_anthropic_3_completion_string_content.yaml"
    client = boto3.client("bedrock-runtime")
    _, model, body = recorded(name)[0]
    with replay(name):
        response = client.invoke_model(modelId=model, body=json.dumps(body))
    answer = json.loads(response["body"].read())  # read inside the call, handed back unread
    assert answer["usage"] == {"input_tokens": 16, "output_tokens": 19}
    (span,) = calls(bedrock)
    assert span.attributes[A.GEN_AI_RESPONSE_ID] == answer["id"]
    assert span.attributes[A.GEN_AI_RESPONSE_MODEL] == "claude-3-sonnet-20240229"
    assert span.attributes[A.GEN_AI_REQUEST_MAX_TOKENS] == 200
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("end_turn",)


def test_prompt_caching_in_the_run_ledger(bedrock: Any) -> None:
    name = "bedrock/test_prompt_caching__test_invoke_model_cache_tokens.yaml"
    client = boto3.client("bedrock-runtime")
    with replay(name), budgetspan.run("cache") as run:
        for exchange in recorded(name):
            send(client, *exchange)
    assert run.usage.cache_write_tokens == 18131
    assert run.usage.cache_read_tokens == 18131
    assert run.usage.input_tokens == 2 * (4 + 18131)
    # the write is dearer than plain input, the read cheaper: the two calls do not cost the same
    first, second = (s.attributes[A.GEN_AI_USAGE_COST] for s in calls(bedrock))
    assert first > second


# --- against the loopback server ------------------------------------------------------------


def local(server: LocalServer, **config: Any) -> Any:
    config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
    return boto3.client("bedrock-runtime", endpoint_url=server.url, config=Config(**config))


def converse_answer(usage: dict[str, Any] | None = None, text: str = "Hello there") -> Answer:
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "metrics": {"latencyMs": 5},
    }
    if usage is not None:
        body["usage"] = usage
    return json_answer(body)


USAGE = {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15}


def test_refused_call_sends_no_request(bedrock: Any, server: LocalServer) -> None:
    server.reset(converse_answer(USAGE, text="first answer"))
    client = local(server)
    with budgetspan.run("r", max_model_calls=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        client.converse(modelId=HAIKU, **CONVERSE)
        client.converse(modelId=HAIKU, **CONVERSE)
    assert len(server.requests) == 1
    assert info.value.reason == "max_model_calls"
    assert info.value.partial["last_model_answer"] == "first answer"
    assert len(calls(bedrock)) == 1


@pytest.mark.parametrize(
    "send_it",
    [
        lambda c: c.converse(modelId=HAIKU, inferenceConfig={"maxTokens": 8000}, **CONVERSE),
        lambda c: c.converse_stream(modelId=HAIKU, inferenceConfig={"maxTokens": 8000}, **CONVERSE),
        lambda c: c.invoke_model(
            modelId=HAIKU,
            body=json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8000, **CONVERSE}),
        ),
        lambda c: c.invoke_model_with_response_stream(
            modelId="meta.llama3-70b-instruct-v1:0", body=json.dumps({"prompt": "hi", "max_gen_len": 8000})
        ),
    ],
    ids=["converse", "converse_stream", "invoke_model", "invoke_model_stream_llama"],
)
def test_worst_case_cost_refuses_before_sending(bedrock: Any, server: LocalServer, send_it: Any) -> None:
    server.reset(converse_answer(USAGE))
    # 8000 output tokens of Claude 3.5 Haiku ($4/M) or Llama 3 70B ($3.5/M) cost ~$0.03
    with budgetspan.run("r", max_cost_usd=0.01), pytest.raises(budgetspan.BudgetExhausted) as info:
        send_it(local(server))
    assert info.value.reason == "max_cost_usd"
    assert server.requests == []


def test_worst_case_output_without_max_tokens_is_the_model_maximum(bedrock: Any, server: LocalServer) -> None:
    """No maxTokens: Claude 3.5 Haiku may write 8192 tokens, over a 5000-token output limit."""
    server.reset(converse_answer(USAGE))
    with budgetspan.run("r", max_output_tokens=5000), pytest.raises(budgetspan.BudgetExhausted) as info:
        local(server).converse(modelId="us." + HAIKU, **CONVERSE)
    assert info.value.reason == "max_output_tokens"
    assert server.requests == []


def test_converse_exact_usage_with_cache_figures(bedrock: Any, server: LocalServer) -> None:
    usage = {**USAGE, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 20}
    server.reset(converse_answer(usage))
    with budgetspan.run("r") as run:
        local(server).converse(modelId=HAIKU, system=[{"text": "be brief"}], **CONVERSE)
    (span,) = calls(bedrock)
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 12 + 100 + 20
    assert span.attributes[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 100
    assert span.attributes[A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] == 20
    assert span.attributes[A.SERVER_ADDRESS] == "127.0.0.1"
    assert run.usage.input_tokens == 132 and run.usage.output_tokens == 3
    assert run.usage.cost_usd == pytest.approx(expected_cost("aws", HAIKU, 132, 3, 100, 20))
    sent = json.loads(server.requests[0].body)
    assert sent["messages"] == CONVERSE["messages"]  # the request went out unchanged


def test_unreported_usage_is_charged_an_estimate(bedrock: Any, server: LocalServer) -> None:
    server.reset(converse_answer(None, text="x" * 300))
    with budgetspan.run("r") as run:
        local(server).converse(modelId=HAIKU, **CONVERSE)
    (span,) = calls(bedrock)
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert A.GEN_AI_USAGE_INPUT_TOKENS not in span.attributes
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == 100  # 300 bytes of text
    assert span.attributes[A.USAGE_ESTIMATED_INPUT] > 0
    assert run.usage.unreported_usage_calls == 1
    assert run.usage.output_tokens == 100 and run.usage.input_tokens > 0
    assert run.usage.cost_usd > 0  # never a free call


# --- streams --------------------------------------------------------------------------------


def converse_events(usage: dict[str, Any] | None = USAGE) -> list[bytes]:
    frames = [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
    ]
    if usage is not None:
        frames.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 3}}))
    return frames


def test_converse_stream_consumed_exact(bedrock: Any, server: LocalServer) -> None:
    server.reset(event_stream(*converse_events()))
    with budgetspan.run("r") as run:
        response = local(server).converse_stream(modelId=HAIKU, **CONVERSE)
        text = "".join(
            e["contentBlockDelta"]["delta"]["text"] for e in response["stream"] if "contentBlockDelta" in e
        )
    assert text == "Hello"
    assert isinstance(response["stream"], EventStream)  # the proxy passes for botocore's stream
    (span,) = calls(bedrock)
    assert span.attributes[A.STREAM_END] == "consumed"
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert A.TIME_TO_FIRST_TOKEN_S in span.attributes
    assert run.usage.input_tokens == 12 and run.usage.model_calls == 1


def test_converse_stream_closed_early_ends_once_unreported(bedrock: Any, server: LocalServer) -> None:
    server.reset(event_stream(*converse_events()))
    with budgetspan.run("r") as run:
        stream = local(server).converse_stream(modelId=HAIKU, **CONVERSE)["stream"]
        first = next(iter(stream))
        stream.close()
        stream.close()
    assert first == {"messageStart": {"role": "assistant"}}
    (span,) = calls(bedrock)
    assert span.attributes[A.STREAM_END] == "closed"
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert run.usage.unreported_usage_calls == 1 and run.usage.input_tokens > 0


def test_converse_stream_abandoned_ends_once(bedrock: Any, server: LocalServer) -> None:
    import gc

    server.reset(event_stream(*converse_events()))
    response = local(server).converse_stream(modelId=HAIKU, **CONVERSE)
    del response
    gc.collect()
    (span,) = calls(bedrock)
    assert span.attributes[A.STREAM_END] == "abandoned"


def test_converse_stream_error_event_ends_as_an_error(bedrock: Any, server: LocalServer) -> None:
    error = event_frame(
        {
            ":message-type": "exception",
            ":exception-type": "modelStreamErrorException",
            ":content-type": "application/json",
        },
        json.dumps({"message": "model failed"}).encode(),
    )
    server.reset(event_stream(*converse_events()[:2], error))
    stream = local(server).converse_stream(modelId=HAIKU, **CONVERSE)["stream"]
    with pytest.raises(EventStreamError):
        list(stream)
    (span,) = calls(bedrock)
    assert span.attributes[A.STREAM_END] == "error"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[A.USAGE_UNREPORTED] is True


def test_converse_stream_cut_mid_way_is_charged_an_estimate(bedrock: Any, server: LocalServer) -> None:
    """botocore ends a stream whose connection dropped as if it were complete: the call ends
    once, and its missing usage is charged an estimate, never 0."""
    frames = converse_events()
    server.reset(event_stream(*frames, cut_at=len(b"".join(frames[:2])) + 5))
    with budgetspan.run("r") as run:
        events = list(local(server).converse_stream(modelId=HAIKU, **CONVERSE)["stream"])
    assert len(events) == 2
    (span,) = calls(bedrock)
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == 1  # "Hel"
    assert run.usage.unreported_usage_calls == 1 and run.usage.cost_usd > 0


def anthropic_chunks() -> list[bytes]:
    start_usage = {"input_tokens": 7, "output_tokens": 1, "cache_read_input_tokens": 50}
    return [
        chunk_event(
            {
                "type": "message_start",
                "message": {"id": "msg_s", "model": "claude-3-5-haiku-20241022", "usage": start_usage},
            }
        ),
        chunk_event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
        ),
        chunk_event(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}
        ),
        chunk_event(
            {
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 7,
                    "outputTokenCount": 9,
                    "invocationLatency": 5,
                    "firstByteLatency": 2,
                },
            }
        ),
    ]


def test_invoke_model_stream_anthropic_exact(bedrock: Any, server: LocalServer) -> None:
    server.reset(event_stream(*anthropic_chunks()))
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, **CONVERSE}
    with budgetspan.run("r") as run:
        response = local(server).invoke_model_with_response_stream(modelId=HAIKU, body=json.dumps(body))
        chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert chunks[-1]["type"] == "message_stop"
    (span,) = calls(bedrock)
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 57  # 7 + 50 read from the cache
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 9  # cumulative, not 1 + 9
    assert span.attributes[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 50
    assert span.attributes[A.STREAM_END] == "consumed"
    assert run.usage.output_tokens == 9 and run.partial["last_model_answer"] == "Hi"


def test_invoke_model_stream_anthropic_cut_before_its_final_count(bedrock: Any, server: LocalServer) -> None:
    """review10: a body cut after its text but before ``message_delta`` had 1 output token (the
    provisional count of ``message_start``) charged for all it received: now its estimate."""
    start, text = anthropic_chunks()[:2]
    pieces = [
        chunk_event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word " * 60}}
        )
        for _ in range(10)
    ]
    server.reset(event_stream(start, text, *pieces))  # the connection closes there
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5000, **CONVERSE}
    with budgetspan.run("r") as run:
        response = local(server).invoke_model_with_response_stream(modelId=HAIKU, body=json.dumps(body))
        assert len(list(response["body"])) == 12
    (span,) = calls(bedrock)
    received = -(-(2 + 10 * 300) // 3)
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == received
    assert run.usage.output_tokens == received  # was 1
    assert run.usage.input_tokens == 57  # reported, kept


def test_invoke_model_stream_llama_from_invocation_metrics(bedrock: Any, server: LocalServer) -> None:
    metrics = {"inputTokenCount": 5, "outputTokenCount": 2, "invocationLatency": 5, "firstByteLatency": 2}
    server.reset(
        event_stream(
            chunk_event(
                {
                    "generation": "Hi",
                    "prompt_token_count": 5,
                    "generation_token_count": 1,
                    "stop_reason": None,
                }
            ),
            chunk_event(
                {
                    "generation": "!",
                    "prompt_token_count": None,
                    "generation_token_count": 2,
                    "stop_reason": "stop",
                    "amazon-bedrock-invocationMetrics": metrics,
                }
            ),
        )
    )
    model = "meta.llama3-70b-instruct-v1:0"
    response = local(server).invoke_model_with_response_stream(
        modelId=model, body=json.dumps({"prompt": "hi", "max_gen_len": 64})
    )
    for _ in response["body"]:
        pass
    (span,) = calls(bedrock)
    assert span.name == f"text_completion {model}"
    assert span.attributes[A.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)


def test_invoke_model_llama_body_usage_without_headers(bedrock: Any, server: LocalServer) -> None:
    body = {
        "generation": "Hello!",
        "prompt_token_count": 8,
        "generation_token_count": 4,
        "stop_reason": "stop",
    }
    server.reset(json_answer(body))
    model = "us.meta.llama3-2-1b-instruct-v1:0"
    with budgetspan.run("r") as run:
        response = local(server).invoke_model(
            modelId=model, body=json.dumps({"prompt": "hi", "max_gen_len": 32})
        )
    assert json.loads(response["body"].read()) == body
    (span,) = calls(bedrock)
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 8
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert span.attributes[A.GEN_AI_USAGE_COST] == pytest.approx(expected_cost("aws", model, 8, 4))
    assert run.partial["last_model_answer"] == "Hello!"


def test_titan_embeddings_output_is_zero_not_unreported(bedrock: Any, server: LocalServer) -> None:
    server.reset(json_answer({"embedding": [0.1, 0.2], "inputTextTokenCount": 6}))
    model = "amazon.titan-embed-text-v2:0"
    local(server).invoke_model(modelId=model, body=json.dumps({"inputText": "hello world"}))
    (span,) = calls(bedrock)
    assert span.name == f"embeddings {model}"
    assert span.attributes[A.GEN_AI_USAGE_INPUT_TOKENS] == 6
    assert span.attributes[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 0
    assert A.USAGE_UNREPORTED not in span.attributes


# --- retries, errors, other services ----------------------------------------------------------


THROTTLED = json_answer(
    {"message": "slow down"}, status=429, headers={"x-amzn-ErrorType": "ThrottlingException"}
)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore sleeps up to a second before a retry: not in a test."""

    class _Time:
        @staticmethod
        def sleep(seconds: float) -> None:
            pass

    monkeypatch.setattr(botocore.endpoint, "time", _Time)


def test_botocore_retries_are_counted(bedrock: Any, server: LocalServer, no_backoff: None) -> None:
    server.reset(THROTTLED, converse_answer(USAGE))
    with budgetspan.run("r") as run:
        local(server, retries={"max_attempts": 3, "mode": "standard"}).converse(modelId=HAIKU, **CONVERSE)
    assert len(server.requests) == 2
    (span,) = calls(bedrock)
    assert span.attributes[A.RETRIES] == 1 and span.attributes[A.ATTEMPTS] == 2
    assert run.usage.retries == 1 and run.usage.model_calls == 1


def test_max_retries_stops_botocore_retrying(bedrock: Any, server: LocalServer, no_backoff: None) -> None:
    server.reset(THROTTLED)
    client = local(server, retries={"max_attempts": 5, "mode": "standard"})
    with budgetspan.run("r", max_retries=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        client.converse(modelId=HAIKU, **CONVERSE)
    assert info.value.reason == "max_retries"
    assert len(server.requests) == 2  # the first attempt and the one retry allowed


def test_error_response_ends_the_call_as_an_error(bedrock: Any, server: LocalServer) -> None:
    server.reset(
        json_answer({"message": "bad"}, status=400, headers={"x-amzn-ErrorType": "ValidationException"})
    )
    client = local(server)
    with budgetspan.run("r") as run, pytest.raises(client.exceptions.ValidationException):
        client.converse(modelId=HAIKU, **CONVERSE)
    (span,) = calls(bedrock)
    assert span.status.status_code is StatusCode.ERROR
    assert run.usage.model_calls == 1


def test_other_services_and_suppressed_calls_pass_untouched(bedrock: Any, server: LocalServer) -> None:
    server.reset(
        Answer(
            200,
            b"<ListAllMyBucketsResult><Buckets></Buckets></ListAllMyBucketsResult>",
            {"Content-Type": "application/xml"},
        ),
        converse_answer(USAGE),
    )
    s3 = boto3.client("s3", endpoint_url=server.url)
    assert s3.list_buckets()["Buckets"] == []
    with suppress_instrumentation():
        local(server).converse(modelId=HAIKU, **CONVERSE)
    assert len(server.requests) == 2
    assert calls(bedrock) == []


def test_uninstrument_restores_botocore(tracing: Any, aws_env: None, server: LocalServer) -> None:
    from budgetspan.instrumentation.bedrock import BedrockInstrumentor

    BedrockInstrumentor().instrument()
    BedrockInstrumentor().uninstrument()
    server.reset(converse_answer(USAGE))
    with budgetspan.run("r", max_model_calls=0):
        local(server).converse(modelId=HAIKU, **CONVERSE)  # not ours any more: not refused
    assert len(server.requests) == 1 and calls(tracing) == []
