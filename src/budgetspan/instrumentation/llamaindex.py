"""LlamaIndex (``llama-index-core``): ``BaseRetriever.retrieve`` / ``aretrieve`` as ``retrieval`` spans.

The data source is the retriever's class name; documents are the nodes returned. A retriever that
delegates to another (recursive or fusion retrieval) is one retrieval: the inner one is folded in.
"""

from __future__ import annotations

from typing import Any

from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import retrieval_wrapper

SYSTEM = "llamaindex"


def _count(result: Any) -> int | None:
    return len(result) if isinstance(result, list) else None


def _class_name(instance: Any, *_: Any) -> str:
    return type(instance).__name__


_retrieve = retrieval_wrapper(_class_name, SYSTEM, _count, False)
_aretrieve = retrieval_wrapper(_class_name, SYSTEM, _count, True)


class LlamaIndexInstrumentor(PatchInstrumentor):
    """Retrievers of ``llama-index-core``."""

    DEPENDENCIES = ("llama-index-core >= 0.12",)
    PATCHES = (
        ("llama_index.core.base.base_retriever", "BaseRetriever.retrieve", _retrieve),
        ("llama_index.core.base.base_retriever", "BaseRetriever.aretrieve", _aretrieve),
    )
