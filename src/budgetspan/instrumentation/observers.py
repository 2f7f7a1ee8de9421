"""What an instrumentation reads from one provider's results: the ``Observer`` interface."""

from __future__ import annotations

import json
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call


class Observer:
    """Reads one provider's results; subclasses override what they understand.

    ``finish`` runs once, just before the call ends, and writes what was seen onto the call
    (response model, usage, response attributes, the answer text for ``BudgetExhausted.partial``).
    """

    def __init__(self, call: Call) -> None:
        self.call = call

    def on_item(self, item: Any) -> None:
        """One stream item (chunk / event)."""

    def on_response(self, response: Any) -> None:
        """A whole response: an SDK object, or a dict parsed from a raw body."""

    def finish(self) -> None:
        """Write the observed results onto the call (before it ends)."""

    def set_usage(self, spend: Spend | None) -> None:
        if spend is not None:
            self.call.set_usage(spend)

    def hidden(self, item: Any) -> bool:
        """Whether the caller must not see ``item`` (a chunk only budgetspan asked for)."""
        return False

    def undo_change(self, error: BaseException, kwargs: dict[str, Any]) -> bool:
        """Whether ``error`` refused something budgetspan added to the request (and not the
        caller's own request): the addition is then taken out of ``kwargs`` and the request
        sent once more, within the same call."""
        return False


def content_json(value: Any) -> str | None:
    """Message content as a JSON string for gen_ai.input/output.messages (best effort)."""
    try:
        return json.dumps(value, default=_jsonable, ensure_ascii=False)
    except Exception:
        return None


def capture_input_messages(attributes: dict[str, Any], messages: Any, system: Any) -> None:
    """Record the request's messages (with a separate ``system`` prompt first, as Anthropic and
    Bedrock take it) as gen_ai.input.messages; call only when content capture is on."""
    if not isinstance(messages, (list, tuple)):
        return
    payload = list(messages)
    if system is not None:
        payload = [{"role": "system", "content": system}, *payload]
    encoded = content_json(payload)
    if encoded is not None:
        attributes[A.GEN_AI_INPUT_MESSAGES] = encoded


def _jsonable(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
