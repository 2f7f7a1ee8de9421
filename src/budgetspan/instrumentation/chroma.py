"""Chroma (``chromadb``): ``Collection.query`` (sync and async) as ``retrieval {collection}`` spans.

Documents: the results over all query embeddings of the batch. Embedding the query text (when
``query_texts`` is given) happens inside the query and is part of its time.
"""

from __future__ import annotations

from typing import Any

from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import retrieval_wrapper

SYSTEM = "chroma"


def _count(result: Any) -> int | None:
    ids = result.get("ids") if isinstance(result, dict) else None
    if ids is None:
        return None
    return sum(len(batch) for batch in ids)


def _name(instance: Any, *_: Any) -> str:
    return str(getattr(instance, "name", None) or "chroma")


_query = retrieval_wrapper(_name, SYSTEM, _count, False)
_aquery = retrieval_wrapper(_name, SYSTEM, _count, True)


class ChromaInstrumentor(PatchInstrumentor):
    """Queries of ``chromadb`` collections."""

    DEPENDENCIES = ("chromadb >= 0.5",)
    PATCHES = (
        ("chromadb.api.models.Collection", "Collection.query", _query),
        ("chromadb.api.models.AsyncCollection", "AsyncCollection.query", _aquery),
    )
