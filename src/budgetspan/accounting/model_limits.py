"""The most output a model can return in one call: a request's worst case when it sets no limit.

Published maximum output tokens per model family (longest prefix wins). A model not listed has
no known maximum: its calls hold only their input estimate against token and dollar limits (the
overshoot bound is then one call's output per call in flight, as the README says).
"""

from __future__ import annotations

import functools
import re

# (model id prefix, maximum output tokens per call), from the providers' model pages.
_MAX_OUTPUT: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini", 16_384),
    ("gpt-4o", 16_384),
    ("gpt-4.1", 32_768),
    ("gpt-4.5", 16_384),  # (not gpt-4's 8,192)
    ("chatgpt-4o", 16_384),
    ("gpt-4-turbo", 4_096),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 4_096),
    ("gpt-5", 128_000),
    ("o1-mini", 65_536),
    ("o1", 100_000),
    ("o3-mini", 100_000),
    ("o3", 100_000),
    ("o4-mini", 100_000),
    ("claude-3-haiku", 4_096),
    ("claude-3-opus", 4_096),
    ("claude-3-5-haiku", 8_192),
    ("claude-3-5-sonnet", 8_192),
    ("claude-3-7-sonnet", 64_000),
    ("claude-sonnet-4", 64_000),
    ("claude-haiku-4", 64_000),
    ("claude-opus-4", 32_000),
    ("claude-opus-4-5", 64_000),  # (not Opus 4's 32,000)
    ("gemini-1.5", 8_192),
    ("gemini-2.0", 8_192),
    ("gemini-2.5", 65_536),
    ("gemini-3", 65_536),
    ("mistral-large", 32_768),
    ("mistral-small", 32_768),
    ("deepseek-chat", 8_192),
    ("deepseek-reasoner", 65_536),
)
_BY_LENGTH = sorted(_MAX_OUTPUT, key=lambda row: -len(row[0]))


#: A Bedrock model id: an optional ARN head, an optional cross-region inference-profile prefix
#: (``us.``, ``eu.``, ``apac.``, ``global.``...), the vendor, the model, and a version suffix
#: (``-v1:0``, ``-v2:0:200k``, ``-v1``, ``-v0:2``).
_BEDROCK_ID = re.compile(
    r"^(?:[a-z]{2,6}(?:-[a-z]+)?\.)?"
    r"(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|openai|qwen|writer|moonshotai|zai|google|nvidia|minimax)\."
    r"(?P<base>.+?)(?:-v\d+(?::\d+)?(?::\d+k)?|:\d+(?::\d+k)?)?$"
)


def bedrock_base_model(model: str) -> str:
    """The vendor's own name in a Bedrock model id, or ``model`` unchanged when it is not one:
    ``us.anthropic.claude-3-5-haiku-20241022-v1:0`` -> ``claude-3-5-haiku-20241022``; an ARN
    (``arn:aws:bedrock:...:inference-profile/ID``) is read from its last part."""
    name = model.rsplit("/", 1)[-1].lower() if model.startswith("arn:") else model.lower()
    found = _BEDROCK_ID.match(name)
    return found.group("base") if found else model


@functools.lru_cache(maxsize=1024)
def max_output_tokens(model: str | None) -> int | None:
    """The model's maximum output per call, or None when it is not known (a Bedrock id is
    looked up by its vendor's model name)."""
    if not model:
        return None
    name = bedrock_base_model(model).rsplit("/", 1)[-1].lower()  # provider-prefixed ("openai/gpt-4o")
    if name.startswith("ft:"):
        name = name.split(":")[1]  # a fine-tuned model answers like its base
    for prefix, limit in _BY_LENGTH:
        if name.startswith(prefix):
            return limit
    return None
