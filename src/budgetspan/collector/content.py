"""Which attributes and span events carry message content, so the tier can strip them.

Prompts, completions, tool arguments and results, retrieved documents: whatever the
instrumentation called them (the GenAI conventions, OpenLLMetry's indexed ``gen_ai.prompt.N.*``,
OpenInference's ``input.value`` and ``llm.input_messages.*``, OpenLIT's ``gen_ai.content.*``,
Traceloop's entity input and output). Token counts, model names and tool names are not content
and stay. The rule errs on the side of removing: a key under a content prefix goes.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from budgetspan import attributes as A

CONTENT_KEYS: Final = frozenset(
    {
        A.GEN_AI_INPUT_MESSAGES,
        A.GEN_AI_OUTPUT_MESSAGES,
        "gen_ai.system_instructions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.tool.definitions",
        "gen_ai.prompt",
        "gen_ai.completion",
        "input.value",
        "output.value",
        "llm.prompts",
        "traceloop.entity.input",
        "traceloop.entity.output",
    }
)
CONTENT_PREFIXES: Final = (
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "gen_ai.content.",
    "llm.input_messages.",
    "llm.output_messages.",
    "llm.prompt_template.",
    "retrieval.documents.",
    "embedding.embeddings.",
    "llm.tools.",
)
#: Span events whose attributes are all content (the GenAI event conventions, OpenLLMetry,
#: OpenLIT); their attributes are removed, the event itself (its name and time) stays.
CONTENT_EVENTS: Final = frozenset(
    {
        "gen_ai.system.message",
        "gen_ai.user.message",
        "gen_ai.assistant.message",
        "gen_ai.tool.message",
        "gen_ai.choice",
        "gen_ai.content.prompt",
        "gen_ai.content.completion",
        "gen_ai.client.inference.operation.details",
    }
)
#: An ``exception`` event's text: its message, and its stack trace, whose last line is the message,
#: may quote the prompt (a provider's 400) or a tool's input. Its type and ``escaped`` stay.
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_TEXT_KEYS: Final = frozenset({"exception.message", "exception.stacktrace"})


def is_event_content(event: Any, key: str) -> bool:
    """Whether the attribute ``key`` of a span event named ``event`` is content."""
    if event == EXCEPTION_EVENT:
        return key in EXCEPTION_TEXT_KEYS or is_content(key)
    return event in CONTENT_EVENTS or is_content(key)


@functools.lru_cache(maxsize=4096)
def is_content(key: str) -> bool:
    """Cached by key (a span's keys recur span after span; indexed names such as
    ``gen_ai.prompt.N.content`` are bounded by the cache's size): a cache hit is one C call, the
    test itself a Python call and a scan of nine prefixes. Measured (``bench_collector.py
    --instructions``, the core alone on a GenAI span of 6 attributes): 121.7k -> 115.9k
    instructions a span."""
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)
