"""Qdrant (``qdrant-client``): searches as ``retrieval {collection}`` spans, in local or remote mode.

Wrapped on ``QdrantClient`` / ``AsyncQdrantClient`` (not on the local or remote back end underneath,
so one search is one span): ``query_points``, ``query_batch_points``, ``query_points_groups``, and
the older ``search`` / ``search_batch`` / ``search_groups`` where the installed version has them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.retrieval import arg, retrieval_wrapper

SYSTEM = "qdrant"


def _points(result: Any) -> int | None:
    points = getattr(result, "points", None)
    return len(points) if points is not None else None


def _batch(result: Any) -> int | None:
    return sum(_points(r) or 0 for r in result) if isinstance(result, list) else None


def _groups(result: Any) -> int | None:
    groups = getattr(result, "groups", None)
    return sum(len(g.hits) for g in groups) if groups is not None else None


def _hits(result: Any) -> int | None:
    return len(result) if isinstance(result, list) else None


def _hits_batch(result: Any) -> int | None:
    return sum(len(r) for r in result) if isinstance(result, list) else None


def _collection(_instance: Any, args: Any, kwargs: Any) -> str:
    return str(arg(args, kwargs, 0, "collection_name") or "qdrant")


_METHODS: tuple[tuple[str, Callable[[Any], int | None]], ...] = (
    ("query_points", _points),
    ("query_batch_points", _batch),
    ("query_points_groups", _groups),
    ("search", _hits),
    ("search_batch", _hits_batch),
    ("search_groups", _groups),
)


class QdrantInstrumentor(PatchInstrumentor):
    """Searches of ``qdrant-client``."""

    DEPENDENCIES = ("qdrant-client >= 1.10",)
    PATCHES = tuple(
        (module, f"{cls}.{method}", retrieval_wrapper(_collection, SYSTEM, count, is_async))
        for module, cls, is_async in (
            ("qdrant_client.qdrant_client", "QdrantClient", False),
            ("qdrant_client.async_qdrant_client", "AsyncQdrantClient", True),
        )
        for method, count in _METHODS
    )
