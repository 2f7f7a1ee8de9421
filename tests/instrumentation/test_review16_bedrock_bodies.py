"""Review 16: an InvokeModel body's text is estimated whatever the model family calls it. Cohere
Command R reads ``message``, ``chat_history``, ``documents`` and ``preamble``; only ``messages``,
``system``, ``prompt``... were read, so a 100k-token Cohere request was estimated at 0 input tokens
and sent under ``max_input_tokens=10000``. Real ``boto3`` against a loopback server that counts
the requests reaching it."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.config import Config

import budgetspan
from tests.instrumentation.local_server import LocalServer, json_answer

COHERE = "cohere.command-r-plus-v1:0"
BIG = "lorem ipsum dolor sit amet " * 12_000  # ~324k bytes: ~108k tokens by the estimate


def _client(server: LocalServer) -> Any:
    config = Config(retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client("bedrock-runtime", endpoint_url=server.url, config=config)


@pytest.mark.parametrize("where", ["message", "chat_history", "documents", "preamble"])
def test_a_big_cohere_request_is_refused_before_it_is_sent(
    bedrock: Any, server: LocalServer, where: str
) -> None:
    body: dict[str, Any] = {"message": "Summarise.", "max_tokens": 100}
    body[where] = {
        "message": BIG,
        "chat_history": [{"role": "USER", "message": BIG}],
        "documents": [{"title": "report", "snippet": BIG}],
        "preamble": BIG,
    }[where]
    server.reset(json_answer({"text": "ok", "finish_reason": "COMPLETE"}))
    with budgetspan.run("cohere", max_input_tokens=10_000, suppress_exhausted=True) as run:
        _client(server).invoke_model(modelId=COHERE, body=json.dumps(body))
    assert server.requests == []  # was 1: the request estimated at 0 input tokens
    assert run.exhausted is not None and run.exhausted.reason == "max_input_tokens"


def test_a_small_cohere_request_is_sent(bedrock: Any, server: LocalServer) -> None:
    server.reset(json_answer({"text": "ok", "finish_reason": "COMPLETE"}))
    body = {"message": "Summarise.", "chat_history": [], "max_tokens": 100}
    with budgetspan.run("cohere", max_input_tokens=10_000):
        _client(server).invoke_model(modelId=COHERE, body=json.dumps(body))
    assert len(server.requests) == 1
