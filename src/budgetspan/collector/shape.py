"""What a span's set of attribute keys tells the core, worked out once per set of keys.

Spans of one instrumentation carry the same keys span after span, so what depends on the keys
alone (the normalisation plan, which attributes are message content, whether the optional reads
apply) is found by one lookup of the key set instead of a dozen set operations and tests per
span. Measured (``bench_collector.py --instructions``, the core alone on a GenAI span with
OpenLLMetry's names): see ``bench/README.md``, collector section, fourth pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from budgetspan import attributes as A
from budgetspan.collector.content import is_content
from budgetspan.collector.normalise import Plan, plan_for

#: Read by ``Tier._extras`` only when present: most model spans carry none of it.
EXTRA_KEYS: Final = frozenset({A.TIME_TO_FIRST_TOKEN_S, A.TIME_TO_FIRST_TOKEN_S_LEGACY, A.RETRIES})
_MAX_SHAPES = 4096  # distinct key sets remembered (indexed content names make more of them)


@dataclass(frozen=True, slots=True)
class Shape:
    plan: Plan | None  # normalisation to apply; None: nothing to normalise
    content: tuple[str, ...]  # the keys that are message content
    extras: bool  # one of ``EXTRA_KEYS`` is present
    cache: bool  # budgetspan's cache result is present


_SHAPES: dict[frozenset[str], Shape] = {}


def shape_of(attrs: Mapping[str, Any]) -> Shape:
    """The shape of a span's attributes (cached by key set; the cache is cleared when full)."""
    keys = frozenset(attrs)
    found = _SHAPES.get(keys)
    if found is None:
        found = Shape(
            plan_for(keys),
            tuple(k for k in attrs if is_content(k)),
            not EXTRA_KEYS.isdisjoint(keys),
            A.CACHE_RESULT in keys,
        )
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        _SHAPES[keys] = found
    return found
