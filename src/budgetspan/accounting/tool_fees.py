"""Per-use fees of providers' built-in (server-side) tools, charged on top of the model's tokens.

A web search, a file search, a code container or a generated image run by the provider is billed
per use, not per token: counted as $0 a dollar limit did not hold for an agent that searches. The
figures are the providers' published list prices (USD per use; read from their pricing pages,
2025-2026), by provider family; a tool with no figure here is *unpriced*, never $0.

- OpenAI (Responses API): ``web_search`` $10 / 1k calls (its search content tokens are billed as
  input tokens, already counted); ``web_search_preview`` $25 / 1k calls on non-reasoning models,
  $10 on reasoning ones: the higher is used; ``file_search`` $2.50 / 1k calls; a
  ``code_interpreter`` container $0.03 (1 GB), $0.12 (4 GB), $0.48 (16 GB), $1.92 (64 GB) each;
  ``image_generation`` per image by quality and size (gpt-image-1: low $0.011 / $0.016, medium
  $0.042 / $0.063, high $0.167 / $0.25 for 1024x1024 / a larger size).
- Anthropic (also on Vertex AI and Bedrock): ``web_search`` $10 / 1k searches; ``web_fetch`` no
  fee beyond its tokens; code execution $0.05 per container-hour with a 5-minute minimum, charged
  as that minimum per container and marked estimated (the time used is not reported).
"""

from __future__ import annotations

#: Provider (``gen_ai.provider.name``) -> the family whose list prices apply. An unrecognised
#: OpenAI-compatible server is a gateway in front of OpenAI when it answers with OpenAI's tool
#: items (as it is priced as OpenAI for an OpenAI model's name).
FAMILY = {
    "openai": "openai",
    "azure.ai.openai": "openai",
    "openai_compatible": "openai",
    "anthropic": "anthropic",
    "gcp.vertex_ai": "anthropic",
    "aws.bedrock": "anthropic",
}

#: Where the figures come from: list prices on the providers' own pages (OpenAI's API pricing
#: page, "Built-in tools"; Anthropic's pricing page and its web search, web fetch and code
#: execution tool docs), as of 2025-12, written here by hand (no network at run time).
SOURCE = "provider pricing pages, list prices, 2025-12"

#: (family, tool) -> USD per use.
FEES: dict[tuple[str, str], float] = {
    ("openai", "web_search"): 10.0 / 1000,  # $10.00 / 1k calls
    ("openai", "web_search_preview"): 25.0 / 1000,  # $25.00 / 1k calls (non-reasoning models)
    ("openai", "file_search"): 2.5 / 1000,  # $2.50 / 1k calls
    ("openai", "code_interpreter"): 0.03,  # a 1 GB container (the default)
    ("anthropic", "web_search"): 10.0 / 1000,  # $10 / 1k searches
    ("anthropic", "web_fetch"): 0.0,  # "no additional charges beyond standard token costs"
    ("anthropic", "code_execution"): 0.05 * 5 / 60,  # $0.05 / container-hour, 5-minute minimum
}

#: OpenAI code interpreter containers by ``memory_limit``.
CONTAINER_FEES = {"1g": 0.03, "4g": 0.12, "16g": 0.48, "64g": 1.92}

#: OpenAI image generation, per image: quality -> (1024x1024, a larger size).
IMAGE_FEES = {"low": (0.011, 0.016), "medium": (0.042, 0.063), "high": (0.167, 0.25)}
#: An image whose quality or size is not said ("auto", absent): the dearest known.
IMAGE_WORST = 0.25

#: Fees that are estimates even when the tool is known (billed by time, not reported).
ESTIMATED = frozenset({("anthropic", "code_execution")})


def family(provider: str | None) -> str | None:
    return FAMILY.get(provider or "")


def fee(provider: str | None, tool: str) -> float | None:
    """USD per use of ``tool`` at ``provider``; None: no known price (unpriced, never $0)."""
    fam = family(provider)
    return None if fam is None else FEES.get((fam, tool))


def container_fee(memory_limit: object) -> float:
    """An OpenAI code interpreter container; an unknown memory size at the dearest known."""
    if memory_limit is None:
        return CONTAINER_FEES["1g"]
    return CONTAINER_FEES.get(str(memory_limit).lower(), max(CONTAINER_FEES.values()))


def image_fee(quality: object, size: object) -> tuple[float, bool]:
    """(USD, estimated) for one generated image; an unsaid quality or size at the dearest known
    (estimated: the image model, e.g. a cheaper mini one, is not known here)."""
    pair = IMAGE_FEES.get(quality) if isinstance(quality, str) else None
    if pair is None:
        return IMAGE_WORST, True
    if size == "1024x1024":
        return pair[0], False
    return pair[1], size not in ("1024x1536", "1536x1024")
