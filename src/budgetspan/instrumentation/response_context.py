"""The context a chained Responses API call carries on the server, for its worst case.

``previous_response_id`` and ``conversation`` make OpenAI prepend an earlier exchange that the
request does not show, billed as input. The request's own text says nothing of it, so the worst
case held before the call would miss it and a long conversation would slip past a dollar or
token limit one small-looking request at a time. budgetspan remembers, for each response and
conversation it saw in this process, the tokens of that exchange (its input and its visible
output: reasoning is not carried) and adds them to the chained call's input estimate. A response
it did not see adds nothing: unknown, the call is settled with what the server reports. Bounded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from budgetspan.accounting.ledger import Spend
from budgetspan.instrumentation.patching import given
from budgetspan.instrumentation.usage import field

_MOST = 10_000  # responses and conversations remembered (about 1 MB at most)
_tokens: OrderedDict[str, int] = OrderedDict()
_lock = threading.Lock()


def _conversation_id(value: Any) -> str | None:
    """A request's ``conversation`` (an id, or ``{"id": ...}``) or a response's."""
    value = given(value)
    if not isinstance(value, str):
        value = field(value, "id")
    return value if isinstance(value, str) and value else None


def remember(response: Any, usage: Spend | None) -> None:
    """A finished response: what a call chained to it (or to its conversation) will carry."""
    if usage is None or usage.input_tokens is None:
        return
    visible = max(0, (usage.output_tokens or 0) - (usage.reasoning_tokens or 0))
    tokens = usage.input_tokens + visible
    keys = [k for k in (field(response, "id"), _conversation_id(field(response, "conversation"))) if k]
    with _lock:
        for key in keys:
            if isinstance(key, str):
                _tokens[key] = tokens
                _tokens.move_to_end(key)
        while len(_tokens) > _MOST:
            _tokens.popitem(last=False)


def carried(kwargs: dict[str, Any]) -> int:
    """The tokens a request's ``previous_response_id`` or ``conversation`` brings with it (0:
    none, or one this process did not see)."""
    previous = given(kwargs.get("previous_response_id"))
    keys = (previous if isinstance(previous, str) else None, _conversation_id(kwargs.get("conversation")))
    with _lock:
        return max((_tokens.get(k, 0) for k in keys if k), default=0)
