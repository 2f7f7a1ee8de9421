"""A small LlamaIndex ``FunctionCallingLLM`` over the real ``openai`` 3.x SDK: a TEST DOUBLE for
``llama-index-llms-openai``.

Why a double: ``llama-index-llms-openai`` (0.8.x) requires ``openai<3``, while this project's test
environment has ``openai`` 3.x (``openai-agents`` and ``pydantic-ai`` need it). What is real and
what is not:

- real: ``llama-index-core``'s agents (FunctionAgent, ReActAgent, AgentWorkflow), its tools, its
  workflow runtime; the ``openai`` SDK's client and HTTP requests (so budgetspan's OpenAI
  instrumentation counts them exactly as it would under ``llama-index-llms-openai``);
- the double: only the translation between LlamaIndex chat messages / tool selections and the
  OpenAI chat-completions format (what ``llama-index-llms-openai`` does), kept minimal.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import openai
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
)
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import PrivateAttr


def _to_openai(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        role = m.role.value
        item: dict[str, Any] = {"role": role, "content": m.content or ""}
        calls = m.additional_kwargs.get("tool_calls")
        if role == "assistant" and calls:
            item["tool_calls"] = calls
            item["content"] = m.content or None
        if role == "tool":
            item["tool_call_id"] = m.additional_kwargs.get("tool_call_id")
        out.append(item)
    return out


def _message(content: str | None, calls: list[dict[str, Any]]) -> ChatMessage:
    extra = {"tool_calls": calls} if calls else {}
    return ChatMessage(role="assistant", content=content or "", additional_kwargs=extra)


class _Accumulator:
    """Joins streamed deltas (text and tool-call fragments) into one message."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Any) -> str:
        if not chunk.choices:
            return ""
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            slot = self.calls.setdefault(
                call.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            slot["id"] = call.id or slot["id"]
            if call.function is not None:
                slot["function"]["name"] += call.function.name or ""
                slot["function"]["arguments"] += call.function.arguments or ""
        self.text += delta.content or ""
        return delta.content or ""

    def response(self, delta: str, raw: Any) -> ChatResponse:
        calls = [self.calls[i] for i in sorted(self.calls)]
        return ChatResponse(message=_message(self.text, calls), delta=delta, raw=raw)


class OpenAIChatLLM(FunctionCallingLLM):
    """Chat completions with tools over ``openai.OpenAI`` / ``openai.AsyncOpenAI``."""

    model: str
    base_url: str
    entered: int = 0  # chat calls the agent made (a refused one included)
    _sync: Any = PrivateAttr(default=None)
    _async: Any = PrivateAttr(default=None)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, is_chat_model=True, is_function_calling_model=True)

    def _client(self) -> openai.OpenAI:
        if self._sync is None:
            self._sync = openai.OpenAI(base_url=self.base_url, api_key="test", max_retries=0)
        return self._sync  # type: ignore[no-any-return]

    def _aclient(self) -> openai.AsyncOpenAI:
        if self._async is None:
            self._async = openai.AsyncOpenAI(base_url=self.base_url, api_key="test", max_retries=0)
        return self._async  # type: ignore[no-any-return]

    def _request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        self.entered += 1
        request: dict[str, Any] = {"model": self.model, "messages": _to_openai(messages)}
        if kwargs.get("tools"):
            request["tools"] = kwargs["tools"]
        return request

    @staticmethod
    def _whole(completion: Any) -> ChatResponse:
        msg = completion.choices[0].message
        calls = [c.model_dump() for c in msg.tool_calls or []]
        return ChatResponse(message=_message(msg.content, calls), raw=completion)

    # --- chat -----------------------------------------------------------------------------------
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._whole(self._client().chat.completions.create(**self._request(messages, kwargs)))

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        completion = await self._aclient().chat.completions.create(**self._request(messages, kwargs))
        return self._whole(completion)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Iterator[ChatResponse]:
        stream = self._client().chat.completions.create(**self._request(messages, kwargs), stream=True)

        def gen() -> Iterator[ChatResponse]:
            acc = _Accumulator()
            for chunk in stream:
                yield acc.response(acc.add(chunk), chunk)

        return gen()

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> AsyncIterator[ChatResponse]:
        stream = await self._aclient().chat.completions.create(**self._request(messages, kwargs), stream=True)

        async def gen() -> AsyncIterator[ChatResponse]:
            acc = _Accumulator()
            async for chunk in stream:
                yield acc.response(acc.add(chunk), chunk)

        return gen()

    # --- completion (not used by the agents; kept to the minimum the base class requires) -----------
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(
            text=self.chat([ChatMessage(role="user", content=prompt)]).message.content or ""
        )

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        answer = await self.achat([ChatMessage(role="user", content=prompt)])
        return CompletionResponse(text=answer.message.content or "")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError

    # --- tools ----------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role="user", content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        return {"messages": messages, "tools": [t.metadata.to_openai_tool() for t in tools]}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError("the model selected no tool")
        selections = []
        for call in calls:
            try:
                arguments = json.loads(call["function"]["arguments"] or "{}")
            except json.JSONDecodeError:
                continue  # a fragment still being streamed
            selections.append(
                ToolSelection(tool_id=call["id"], tool_name=call["function"]["name"], tool_kwargs=arguments)
            )
        return selections
