"""What the Bedrock Runtime operations answer, read into a model ``Call``.

Converse and ConverseStream share one shape across models (``usage`` with ``inputTokens`` ...;
stream events ``contentBlockDelta``, ``messageStop``, ``metadata``). InvokeModel bodies are each
model's own JSON: the usage is taken from Bedrock's ``X-Amzn-Bedrock-*-Token-Count`` headers
(any model), else from the body; a streamed body ends with ``amazon-bedrock-invocationMetrics``.
Every Bedrock figure of input tokens leaves out cache reads and writes: they are added, as the
OpenTelemetry conventions count them.

The model Bedrock names in a body (``claude-3-5-haiku-20241022``) is shown as the response
model but not used for the price: the requested id (``us.anthropic...-v1:0``) says which of
Bedrock's prices applies (regional, global), the bare name does not.
"""

from __future__ import annotations

import json
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call
from budgetspan.events import internal_error
from budgetspan.instrumentation.patching import ResultObserver
from budgetspan.instrumentation.usage import (
    AnthropicStreamUsage,
    bedrock_body_usage,
    bedrock_converse_usage,
    bedrock_header_usage,
    bedrock_metrics_usage,
    count,
    field,
)


class BedrockObserver(ResultObserver):
    """What both observers share: the model Bedrock names, and embeddings' zero output."""

    def __init__(self, call: Call, capture: bool = False) -> None:
        super().__init__(call, capture)
        self.named_model: str | None = None

    def _model(self, model: Any) -> None:
        if isinstance(model, str) and model and self.named_model is None:
            self.named_model = model

    def _reason(self, reason: Any) -> None:
        if isinstance(reason, str) and reason:
            self.finish_reasons = [reason]

    def set_usage(self, spend: Spend | None) -> None:
        if spend is not None and self.call.operation == A.OP_EMBEDDINGS and spend.output_tokens is None:
            spend = Spend(spend.input_tokens, 0)  # embeddings write no tokens: 0, not unreported
        super().set_usage(spend)

    def finish(self) -> None:
        super().finish()
        if self.named_model and self.call.span is not None:
            self.call.end_attributes[A.GEN_AI_RESPONSE_MODEL] = self.named_model


# --- Converse / ConverseStream ------------------------------------------------------------------


class ConverseObserver(BedrockObserver):
    """A Converse response dict, or the events of a ConverseStream."""

    def on_response(self, response: Any) -> None:
        message = field(field(response, "output"), "message")
        for block in field(message, "content") or ():
            self._block(block)
        self._reason(field(response, "stopReason"))
        self.set_usage(bedrock_converse_usage(field(response, "usage")))

    def _block(self, block: Any) -> None:
        text = field(block, "text")
        if isinstance(text, str):
            self.text.append(text)
        tool = field(block, "toolUse")
        if tool is not None:
            self.tool_calls.append({"id": field(tool, "toolUseId"), "name": field(tool, "name")})

    def on_item(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        delta = field(item.get("contentBlockDelta"), "delta")
        if delta is not None:
            self.call.first_token()
            text = field(delta, "text")
            if isinstance(text, str):
                self.text.append(text)
            return
        start = field(item.get("contentBlockStart"), "start")
        if start is not None:
            self._block(start)
        elif "messageStop" in item:
            self._reason(field(item["messageStop"], "stopReason"))
        elif "metadata" in item:
            self.set_usage(bedrock_converse_usage(field(item["metadata"], "usage")))


# --- InvokeModel / InvokeModelWithResponseStream ------------------------------------------------


def _json(data: Any) -> Any:
    if not isinstance(data, (bytes, bytearray, str)) or not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None  # not JSON (an image, a binary embedding): no figures to read


class InvokeObserver(BedrockObserver):
    """An InvokeModel response (its body already buffered), or the chunks of a streamed body."""

    def __init__(self, call: Call, capture: bool = False) -> None:
        super().__init__(call, capture)
        self.anthropic = AnthropicStreamUsage()
        self.anthropic_seen = False
        self.metrics: Spend | None = None
        self.llama: tuple[int | None, int | None] = (None, None)
        #: The whole response body, read inside the call (``bedrock.buffer_body``).
        self.body: bytes | None = None

    def on_response(self, response: Any) -> None:
        parsed = _json(self.body)
        if isinstance(parsed, dict):
            self._head(parsed)
            self._reason(parsed.get("stop_reason") or parsed.get("stopReason"))
            self._body_text(parsed)
        headers = field(field(response, "ResponseMetadata"), "HTTPHeaders")
        self.set_usage(bedrock_header_usage(headers) or bedrock_body_usage(parsed))

    def _body_text(self, body: dict[str, Any]) -> None:
        """The answer in the body shapes Bedrock's models use (Anthropic, Nova, Llama, Titan,
        Mistral); other shapes leave it unknown."""
        for block in body.get("content") or ():
            if field(block, "type") == "text" and isinstance(field(block, "text"), str):
                self.text.append(field(block, "text"))
            elif field(block, "type") == "tool_use":
                self.tool_calls.append({"id": field(block, "id"), "name": field(block, "name")})
        for block in field(field(field(body, "output"), "message"), "content") or ():
            if isinstance(field(block, "text"), str):
                self.text.append(field(block, "text"))
        if isinstance(body.get("generation"), str):
            self.text.append(body["generation"])
        for result in body.get("results") or body.get("outputs") or ():
            piece = field(result, "outputText") or field(result, "text")
            if isinstance(piece, str):
                self.text.append(piece)

    def on_item(self, item: Any) -> None:
        event = _json(field(field(item, "chunk"), "bytes"))
        if not isinstance(event, dict):
            return
        try:
            self._event(event)
        except Exception:
            internal_error("bedrock stream chunk")

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            self.call.first_token()
            delta = event.get("delta")
            if field(delta, "type") == "text_delta" and isinstance(field(delta, "text"), str):
                self.text.append(field(delta, "text"))
        elif kind == "message_start":
            self._head(event.get("message"))
        elif kind == "message_delta":
            self._reason(field(event.get("delta"), "stop_reason"))
        elif isinstance(event.get("generation"), str):  # Llama
            self.call.first_token()
            self.text.append(event["generation"])
            self._reason(event.get("stop_reason"))
        elif isinstance(event.get("outputText"), str):  # Titan
            self.call.first_token()
            self.text.append(event["outputText"])
        changed = self.anthropic.on_event(event)
        self.anthropic_seen = self.anthropic_seen or changed
        llama_in, llama_out = (
            count(event.get("prompt_token_count")),
            count(event.get("generation_token_count")),
        )
        if llama_in is not None or llama_out is not None:
            before_in, before_out = self.llama
            self.llama = (
                before_in if llama_in is None else llama_in,
                before_out if llama_out is None else llama_out,
            )
            changed = True
        metrics = bedrock_metrics_usage(event.get("amazon-bedrock-invocationMetrics"))
        if metrics is not None:
            self.metrics = metrics
            changed = True
        if changed:
            self.set_usage(self._stream_usage())

    def finish(self) -> None:
        super().finish()
        anthropic = self.anthropic
        if (
            self.anthropic_seen
            and anthropic.raw_input is not None
            and not anthropic.final
            and self.metrics is None
        ):
            self.charge_received_output()  # an Anthropic body left or cut before its final count

    def _stream_usage(self) -> Spend | None:
        """Anthropic's own events (they carry the cache figures), else Bedrock's closing
        metrics, else Llama's running counts."""
        if self.anthropic_seen:
            spend = self.anthropic.spend()
            if spend is not None:
                return spend
        if self.metrics is not None:
            return self.metrics
        llama_in, llama_out = self.llama
        if llama_in is None and llama_out is None:
            return None
        return Spend(llama_in, llama_out)
