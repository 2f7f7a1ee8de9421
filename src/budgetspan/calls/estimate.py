"""Token estimates where the provider says nothing yet (a request) or ever (a stream without usage).

Estimate: one token per 3 bytes of UTF-8 text, plus 4 tokens per message. Byte-level BPE
tokenizers (OpenAI's o200k/cl100k, Anthropic's, Llama's) average 3.5-4.5 bytes per token on
English prose and code, about 3 on CJK text, so the estimate is typically 0-35% above the true
count and rarely below it; it is an estimate, marked as one wherever it is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
_MAX_DEPTH = 32


def text_tokens(text: str) -> int:
    """Estimated tokens of one piece of text."""
    return math.ceil(len(text.encode("utf-8", "replace")) / BYTES_PER_TOKEN)


def _strings(value: Any, depth: int = 0) -> Iterable[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, depth + 1)
    else:
        dump = getattr(value, "model_dump", None)  # SDK objects passed back as messages
        if callable(dump):
            try:
                yield from _strings(dump(), depth + 1)
            except Exception:
                return


def request_tokens(parts: Iterable[Any]) -> int:
    """Estimated input tokens of a request: every string in its messages, system prompt, tools...
    (``parts``), plus the per-message overhead of each list of messages."""
    total = 0
    for part in parts:
        if part is None:
            continue
        total += sum(text_tokens(s) for s in _strings(part))
        if isinstance(part, (list, tuple)):
            total += TOKENS_PER_MESSAGE * len(part)
    return total
