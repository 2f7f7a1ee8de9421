"""LlamaIndex (``llama-index-core``): ``BaseRetriever.retrieve`` / ``aretrieve`` as ``retrieval`` spans.

The data source is the retriever's class name; documents are the nodes returned. A retriever that
delegates to another (recursive or fusion retrieval) is one retrieval: the inner one is folded in.
"""

from __future__ import annotations

from typing import Any

from budgetspan.instrumentation._retrieval import (
    Patch,
    PatchInstrumentor,
    atraced_retrieval,
    traced_retrieval,
)

SYSTEM = "llamaindex"


def _count(result: Any) -> int | None:
    return len(result) if isinstance(result, list) else None


def _retrieve(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return traced_retrieval(
        wrapped, args, kwargs, source=lambda: type(instance).__name__, system=SYSTEM, count=_count
    )


def _aretrieve(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return atraced_retrieval(
        wrapped, args, kwargs, source=lambda: type(instance).__name__, system=SYSTEM, count=_count
    )


_PATCHES: tuple[Patch, ...] = (
    ("llama_index.core.base.base_retriever", "BaseRetriever", "retrieve", _retrieve),
    ("llama_index.core.base.base_retriever", "BaseRetriever", "aretrieve", _aretrieve),
)


class LlamaIndexInstrumentor(PatchInstrumentor):
    """Retrievers of ``llama-index-core``."""

    PATCHES = _PATCHES
    DEPENDENCIES = ("llama-index-core >= 0.12",)
