"""Images in a request, estimated as images (review10). The estimate read a message's JSON text:
an image by URL was ~10 tokens (a model reads ~1,000 and more), so a stream without usage was
charged a fraction of its input; an image sent inline (base64) was ~1 token per 3 bytes, so a
300 KB screenshot held a 100,000-token worst case and was refused under any real budget."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.calls.estimate import IMAGE_TOKENS, request_tokens
from tests.instrumentation.local_server import Answer, LocalServer, json_answer

MODEL = "gpt-4o-mini"


def image_message(
    url: str, text: str = "What is in these pictures?", images: int = 1
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url, "detail": "high"}} for _ in range(images)]
    return [{"role": "user", "content": parts}]


def sse(*texts: str) -> Answer:
    chunks = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}],
        }
        for t in texts
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return Answer(200, body.encode(), {"Content-Type": "text/event-stream"})


def client(server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)


def test_images_by_url_are_charged_as_images_when_usage_is_unreported(
    instrumented: Any, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(A.ENV_OPENAI_STREAM_USAGE, "never")
    server.reset(sse("Two", " cats."))
    with budgetspan.run("r") as run:
        stream = client(server).chat.completions.create(
            model=MODEL, messages=image_message("https://example.com/cat.png", images=2), stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "Two cats."
    [span] = instrumented.spans("chat")
    assert span.attributes[A.USAGE_UNREPORTED] is True
    assert span.attributes[A.USAGE_ESTIMATED_INPUT] >= 2 * IMAGE_TOKENS  # was 44
    assert run.usage.input_tokens >= 2 * IMAGE_TOKENS


def test_an_inline_image_is_not_held_as_its_bytes(instrumented: Any, server: LocalServer) -> None:
    picture = base64.b64encode(bytes(range(256)) * 1200).decode()  # 300 KB, ~100k tokens as text
    server.reset(
        json_answer(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "a cat"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1120, "completion_tokens": 3, "total_tokens": 1123},
            }
        )
    )
    with budgetspan.run("r", max_input_tokens=10_000) as run:
        client(server).chat.completions.create(
            model=MODEL, messages=image_message(f"data:image/png;base64,{picture}"), max_tokens=50
        )
    assert len(server.requests) == 1 and run.usage.input_tokens == 1120


def test_the_estimate_of_text_alone_is_unchanged() -> None:
    """The control: no image, the same figure as before (JSON text, 3 bytes a token, 4 a message)."""
    messages = [{"role": "user", "content": "x" * 300}]
    assert request_tokens([messages]) == -(-len(json.dumps(messages)) // 3) + 4
    with_image = image_message("https://example.com/a.png")
    without = [{"role": "user", "content": [{"type": "text", "text": "What is in these pictures?"}]}]
    assert request_tokens([with_image]) > IMAGE_TOKENS
    assert request_tokens([with_image]) - request_tokens([without]) < IMAGE_TOKENS + 20


def test_an_inline_image_through_google_genai_is_not_held_as_its_bytes(
    genai_instrumented: Any, llm_server: Any
) -> None:
    """review15: google-genai's image part (``Part.from_bytes``, a pydantic model whose
    ``inline_data`` holds raw bytes) was estimated from the bytes' repr: a 300 KB picture held a
    360,194-token worst case and was refused under ``max_input_tokens=10000``."""
    from google import genai
    from google.genai import types

    picture = bytes(range(256)) * 1200
    gemini = genai.Client(api_key="test", http_options=types.HttpOptions(base_url=llm_server.base_url))
    with budgetspan.run("r", max_input_tokens=10_000) as run:
        gemini.models.generate_content(
            model="gemini-2.5-flash",
            contents=["What is in this picture?", types.Part.from_bytes(data=picture, mime_type="image/png")],
        )
    assert len(llm_server.requests) == 1 and run.usage.model_calls == 1


def test_google_genai_image_parts_count_as_images() -> None:
    from google.genai import types

    picture = types.Part.from_bytes(data=bytes(range(256)) * 1200, mime_type="image/jpeg")
    by_uri = types.Part.from_uri(file_uri="gs://bucket/cat.png", mime_type="image/png")
    text = [types.Content(role="user", parts=[types.Part.from_text(text="What is this?")])]
    for image in (picture, by_uri):
        with_image = [types.Content(role="user", parts=[types.Part.from_text(text="What is this?"), image])]
        added = request_tokens([with_image]) - request_tokens([text])
        assert IMAGE_TOKENS <= added < IMAGE_TOKENS + 200  # (+ the JSON of the part's empty fields)


def test_a_bedrock_converse_image_block_counts_as_an_image() -> None:
    """review15: Converse's ``{"image": {"format", "source": {"bytes"}}}`` has no ``type``: a
    300 KB picture was estimated from its bytes (100,043 tokens)."""
    question = {"text": "What is this?"}
    image = {"image": {"format": "png", "source": {"bytes": bytes(range(256)) * 1200}}}
    with_image = [{"role": "user", "content": [question, image]}]
    added = request_tokens([with_image]) - request_tokens([[{"role": "user", "content": [question]}]])
    assert IMAGE_TOKENS <= added < IMAGE_TOKENS + 20
