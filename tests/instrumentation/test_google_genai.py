"""google-genai through budgetspan: the real SDK (its own response types) against a local Gemini
REST server. Each request the SDK sends is one budgeted model call, refused before it leaves;
tokens are the API's usageMetadata; cost is budgetspan's price; unreported usage is charged an
estimate; streams end once; the functions the SDK calls itself are budgeted tool calls."""

from __future__ import annotations

from typing import Any

import pytest
from google import genai
from google.genai import types

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.pricing import default_resolver
from budgetspan.instrumentation.google_genai import gemini_usage, model_id
from tests.instrumentation.llm_server import GEMINI_USAGE, LLMServer, assert_usage
from tests.instrumentation.local_server import LocalServer, json_answer

MODEL = "gemini-2.5-flash"
#: The fake's usageMetadata in OpenTelemetry terms: input includes the cached part, output the thoughts.
INPUT, OUTPUT, CACHED, THOUGHTS = 120, 37, 100, 30


_clients: list[genai.Client] = []


def client(server: LLMServer) -> genai.Client:
    """A client kept alive for the session (a collected ``Client`` closes its HTTP client, even
    under a ``.models`` still in use)."""
    c = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.base_url))
    _clients.append(c)
    return c


def expected_cost() -> float:
    cost = default_resolver().cost("gcp.gemini", MODEL, INPUT, OUTPUT, CACHED)
    assert cost is not None and cost > 0
    return cost


def model_spans(tracing: Any) -> list[Any]:
    return tracing.spans("generate_content")


def assert_exact(span: Any) -> None:
    attrs = assert_usage(span, "gcp.gemini", MODEL, (INPUT, OUTPUT), expected_cost())
    assert attrs[A.GEN_AI_RESPONSE_MODEL] == MODEL
    assert attrs[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == CACHED
    assert attrs[A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == THOUGHTS


def test_usage_parser_follows_the_api_total() -> None:
    spend = gemini_usage(types.GenerateContentResponseUsageMetadata.model_validate(GEMINI_USAGE))
    assert spend is not None
    assert (spend.input_tokens, spend.output_tokens) == (INPUT, OUTPUT)
    assert spend.input_tokens + spend.output_tokens == GEMINI_USAGE["totalTokenCount"]
    assert (spend.cache_read_tokens, spend.reasoning_tokens) == (CACHED, THOUGHTS)
    assert gemini_usage(types.GenerateContentResponseUsageMetadata()) is None  # nothing: unreported
    empty_answer = gemini_usage({"prompt_token_count": 5})  # the API leaves zero counts out
    assert empty_answer is not None and (empty_answer.input_tokens, empty_answer.output_tokens) == (5, None)


def test_model_names_are_priced_by_their_bare_id() -> None:
    assert model_id("models/gemini-2.5-flash") == MODEL
    assert model_id("publishers/google/models/gemini-2.5-flash") == MODEL
    assert model_id("projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash") == MODEL
    assert model_id("tunedModels/123") == "tunedModels/123"


def test_generate_content_exact_tokens_and_cost(genai_instrumented: Any, llm_server: LLMServer) -> None:
    with budgetspan.run("r") as run:
        response = client(llm_server).models.generate_content(
            model="models/gemini-2.5-flash",
            contents="hi",
            config=types.GenerateContentConfig(max_output_tokens=64),
        )
    assert response.text == "Hello from the fake."
    assert len(llm_server.requests) == 1
    [span] = model_spans(genai_instrumented)
    assert_exact(span)
    assert span.attributes[A.GEN_AI_REQUEST_MAX_TOKENS] == 64
    assert span.attributes[A.GEN_AI_RESPONSE_ID] == "resp-gemini-1"
    assert span.attributes[A.GEN_AI_RESPONSE_FINISH_REASONS] == ("STOP",)
    usage = run.usage
    assert (usage.model_calls, usage.input_tokens, usage.output_tokens) == (1, INPUT, OUTPUT)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (CACHED, THOUGHTS)
    assert usage.cost_usd == pytest.approx(expected_cost())


def test_stream_ends_once_with_the_last_chunks_usage(genai_instrumented: Any, llm_server: LLMServer) -> None:
    with budgetspan.run("r") as run:
        stream = client(llm_server).models.generate_content_stream(model=MODEL, contents="hi")
        texts = [chunk.text for chunk in stream]
    assert texts == ["Hello", " from", " the fake."]
    assert llm_server.paths() == [f"/v1/models/{MODEL}:streamGenerateContent?alt=sse"]
    [span] = model_spans(genai_instrumented)
    assert_exact(span)
    assert span.attributes[A.STREAM_END] == "consumed"
    assert A.TIME_TO_FIRST_TOKEN_S in span.attributes
    # the running totals of the chunks are not summed: the request is counted once
    assert (run.usage.input_tokens, run.usage.output_tokens) == (INPUT, OUTPUT)
    assert run.usage.cost_usd == pytest.approx(expected_cost())


def test_stream_left_early_ends_once(genai_instrumented: Any, llm_server: LLMServer) -> None:
    with budgetspan.run("r") as run:
        stream = client(llm_server).models.generate_content_stream(model=MODEL, contents="hi")
        assert next(stream).text == "Hello"
        stream.close()
        del stream
    [span] = model_spans(genai_instrumented)
    assert span.attributes[A.STREAM_END] in ("closed", "abandoned")
    assert run.usage.model_calls == 1
    assert run.usage.input_tokens == INPUT  # the prompt count came with the first chunk


def test_a_stream_left_before_its_output_count_is_charged_what_it_received(
    genai_instrumented: Any, llm_server: LLMServer
) -> None:
    """review10: the API's chunks repeat the prompt count; the output count comes with the last
    one. A stream left before it had 0 output tokens charged for all it received."""
    llm_server.settings.text = ["lorem ipsum " * 100] * 5 + ["."]
    with budgetspan.run("r") as run:
        stream = client(llm_server).models.generate_content_stream(model=MODEL, contents="hi")
        received = [next(stream).text for _ in range(5)]
        stream.close()
    assert len("".join(received)) == 6000
    [span] = model_spans(genai_instrumented)
    assert run.usage.input_tokens == INPUT
    assert run.usage.output_tokens == 2000  # was 0
    assert span.attributes[A.USAGE_ESTIMATED_OUTPUT] == 2000
    assert run.usage.cost_usd > expected_cost() - 1e-9


def retrying(server: LocalServer, attempts: int = 5) -> genai.Client:
    """A client with the SDK's own retries on (``HttpRetryOptions``: off unless asked for)."""
    options = types.HttpRetryOptions(
        attempts=attempts, initial_delay=0.01, max_delay=0.01, http_status_codes=[500]
    )
    c = genai.Client(
        api_key="test", http_options=types.HttpOptions(base_url=server.url, retry_options=options)
    )
    _clients.append(c)
    return c


GEMINI_FAIL = json_answer({"error": {"code": 500, "message": "overloaded", "status": "INTERNAL"}}, 500)


def gemini_ok() -> Any:
    return json_answer(
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": GEMINI_USAGE,
            "modelVersion": MODEL,
        }
    )


def test_the_sdks_retries_are_held_to_max_retries(genai_instrumented: Any, server: LocalServer) -> None:
    """review10: the SDK's retries (``HttpRetryOptions``) ran below the patched request method:
    5 requests under ``max_retries=1``. Each attempt after the first is a retry, refused at the
    limit before it is sent."""
    server.reset(GEMINI_FAIL, GEMINI_FAIL, GEMINI_FAIL, GEMINI_FAIL, gemini_ok())
    with budgetspan.run("r", max_retries=1) as run, pytest.raises(budgetspan.BudgetExhausted) as info:
        retrying(server).models.generate_content(model=MODEL, contents="hi")
    assert info.value.reason == "max_retries"
    assert len(server.requests) == 2
    assert run.usage.retries == 1


async def test_the_sdks_async_retries_within_the_budget_are_counted(
    genai_instrumented: Any, server: LocalServer
) -> None:
    server.reset(GEMINI_FAIL, GEMINI_FAIL, gemini_ok())
    async with budgetspan.run("r", max_retries=3) as run:
        response = await retrying(server).aio.models.generate_content(model=MODEL, contents="hi")
        server.reset(gemini_ok())
        await retrying(server).aio.models.generate_content(model=MODEL, contents="again")  # no retry
    assert response.text == "ok"
    assert (run.usage.model_calls, run.usage.retries) == (2, 2)
    [first, _] = model_spans(genai_instrumented)
    assert first.attributes[A.RETRIES] == 2


async def test_async_generate_content_and_stream(genai_instrumented: Any, llm_server: LLMServer) -> None:
    aio = client(llm_server).aio
    async with budgetspan.run("r") as run:
        response = await aio.models.generate_content(model=MODEL, contents="hi")
        stream = await aio.models.generate_content_stream(model=MODEL, contents="hi")
        texts = [chunk.text async for chunk in stream]
    assert response.text == "Hello from the fake."
    assert texts == ["Hello", " from", " the fake."]
    assert len(llm_server.requests) == 2
    spans = model_spans(genai_instrumented)
    assert len(spans) == 2
    for span in spans:
        assert_exact(span)
    assert spans[1].attributes[A.STREAM_END] == "consumed"
    assert (run.usage.model_calls, run.usage.input_tokens, run.usage.output_tokens) == (
        2,
        2 * INPUT,
        2 * OUTPUT,
    )


def test_refused_calls_send_nothing(genai_instrumented: Any, llm_server: LLMServer) -> None:
    models = client(llm_server).models
    with budgetspan.run("r", max_model_calls=1), pytest.raises(budgetspan.BudgetExhausted) as info:
        models.generate_content(model=MODEL, contents="hi")
        models.generate_content(model=MODEL, contents="hi")
    assert info.value.reason == "max_model_calls"
    assert info.value.partial["last_model_answer"] == "Hello from the fake."
    with budgetspan.run("r", max_model_calls=0), pytest.raises(budgetspan.BudgetExhausted):
        for _ in models.generate_content_stream(model=MODEL, contents="hi"):
            pass
    assert len(llm_server.requests) == 1
    assert len(model_spans(genai_instrumented)) == 1  # refused calls make no span


async def test_refused_async_calls_send_nothing(genai_instrumented: Any, llm_server: LLMServer) -> None:
    aio = client(llm_server).aio
    async with budgetspan.run("r", max_model_calls=0):
        with pytest.raises(budgetspan.BudgetExhausted):
            await aio.models.generate_content(model=MODEL, contents="hi")
    async with budgetspan.run("r", max_model_calls=0):
        stream = await aio.models.generate_content_stream(model=MODEL, contents="hi")
        with pytest.raises(budgetspan.BudgetExhausted):  # the SDK sends on the first chunk
            async for _ in stream:
                pass
    assert llm_server.requests == []


def test_worst_case_is_reserved_before_the_request(genai_instrumented: Any, llm_server: LLMServer) -> None:
    models = client(llm_server).models
    config = types.GenerateContentConfig(max_output_tokens=500, candidate_count=2)
    with budgetspan.run("r", max_output_tokens=999), pytest.raises(budgetspan.BudgetExhausted) as info:
        models.generate_content(model=MODEL, contents="hi", config=config)  # 2 x 500 could come back
    assert info.value.reason == "max_output_tokens"
    with budgetspan.run("r", max_cost_usd=0.001), pytest.raises(budgetspan.BudgetExhausted) as info:
        # 100k output tokens of gemini-2.5-flash could cost $0.25, a dict config alike
        models.generate_content(model=MODEL, contents="hi", config={"max_output_tokens": 100_000})
    assert info.value.reason == "max_cost_usd"
    assert llm_server.requests == []
    with budgetspan.run("r", max_output_tokens=1000):
        models.generate_content(model=MODEL, contents="hi", config=config)
    [span] = model_spans(genai_instrumented)
    worst = default_resolver().worst_case_cost("gcp.gemini", MODEL, 1, 1000)  # "hi": one token
    assert span.attributes[A.WORST_CASE_COST] == pytest.approx(worst)


def test_unreported_usage_is_charged_an_estimate(genai_instrumented: Any, llm_server: LLMServer) -> None:
    llm_server.settings.gemini_usage = None
    models = client(llm_server).models
    with budgetspan.run("r") as run:
        models.generate_content(model=MODEL, contents="a question of some length")
        list(models.generate_content_stream(model=MODEL, contents="a question of some length"))
    spans = model_spans(genai_instrumented)
    assert len(spans) == 2
    for span in spans:
        attrs = span.attributes
        assert attrs[A.USAGE_UNREPORTED] is True
        assert A.GEN_AI_USAGE_INPUT_TOKENS not in attrs  # gen_ai.usage.* stays what the API said
        assert attrs[A.USAGE_ESTIMATED_INPUT] > 0
        assert attrs[A.USAGE_ESTIMATED_OUTPUT] > 0  # the text the caller received
        assert attrs[A.COST_ESTIMATED] > 0
    assert run.usage.unreported_usage_calls == 2
    assert run.usage.input_tokens > 0 and run.usage.output_tokens > 0
    assert run.usage.cost_usd > 0


def _weather_function(llm_server: LLMServer) -> tuple[list[str], types.GenerateContentConfig]:
    """A config with one Python function for automatic function calling, which the server's
    answers call; and the cities the function ran for."""
    ran: list[str] = []

    def get_weather(city: str) -> str:
        """The weather of a city."""
        ran.append(city)
        return "sunny"

    llm_server.settings.function_call = "get_weather"
    return ran, types.GenerateContentConfig(tools=[get_weather])


def test_automatic_function_calling_counts_each_request_and_the_function(
    genai_instrumented: Any, llm_server: LLMServer
) -> None:
    ran, config = _weather_function(llm_server)
    with budgetspan.run("r") as run:
        response = client(llm_server).models.generate_content(model=MODEL, contents="weather?", config=config)
    assert response.text == "Hello from the fake."
    assert ran == ["Paris"]
    assert len(llm_server.requests) == 2
    assert (run.usage.model_calls, run.usage.tool_calls) == (2, 1)
    assert run.usage.input_tokens == 2 * INPUT  # each request's own usage, not only the last one's
    [tool] = genai_instrumented.spans("execute_tool")
    assert tool.attributes[A.GEN_AI_TOOL_NAME] == "get_weather"


def test_a_refused_function_never_runs_and_the_run_stops(
    genai_instrumented: Any, llm_server: LLMServer
) -> None:
    ran, config = _weather_function(llm_server)
    with budgetspan.run("r", max_tool_calls=0), pytest.raises(budgetspan.BudgetExhausted) as info:
        client(llm_server).models.generate_content(model=MODEL, contents="weather?", config=config)
    assert info.value.reason == "max_tool_calls"
    assert ran == []
    assert len(llm_server.requests) == 1  # the SDK's next request was refused too


def test_uninstrumented_and_suppressed_calls_are_left_alone(
    genai_instrumented: Any, llm_server: LLMServer
) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with budgetspan.run("r", max_model_calls=0), suppress_instrumentation():
        client(llm_server).models.generate_content(model=MODEL, contents="hi")
    assert len(llm_server.requests) == 1
    assert model_spans(genai_instrumented) == []
