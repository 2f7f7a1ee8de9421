"""Bounded Prometheus label values: each label keeps its first N distinct values, then ``other``.

Every distinct label value is a new time series in Prometheus; a model id per customer or a tool
name built from user input would grow the series count without end. Capping per label (not per
metric) keeps the numbers the same across metrics, so ``cost{model=...}`` and
``model_calls{model=...}`` still join. In multiprocess mode the cap holds per process.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Final

from budgetspan import attributes as A

log = logging.getLogger(__name__)

DEFAULT_MAX_VALUES: Final = 100
MAX_VALUE_LENGTH: Final = 120  # longer values are cut: a label is a name, not text
UNKNOWN: Final = "unknown"


class LabelCap:
    """The first ``max_values`` distinct values of one label pass; later ones become ``other``."""

    __slots__ = ("_lock", "_seen", "label", "max_values", "overflowed")

    def __init__(self, label: str, max_values: int = DEFAULT_MAX_VALUES) -> None:
        self.label = label
        self.max_values = max(1, max_values)
        self._seen: dict[str, str] = {A.LABEL_OVERFLOW_VALUE: A.LABEL_OVERFLOW_VALUE}
        self._lock = threading.Lock()
        self.overflowed = 0  # values mapped to "other" (for tests and debugging)

    def __call__(self, value: object) -> str:
        key = value if isinstance(value, str) else ("" if value is None else str(value))
        hit = self._seen.get(key)
        if hit is not None:
            return hit
        return self._admit(key)

    def _admit(self, key: str) -> str:
        clean = key[:MAX_VALUE_LENGTH] if key else UNKNOWN
        with self._lock:
            hit = self._seen.get(key)
            if hit is not None:
                return hit
            # "other" is pre-seeded and does not count against the cap.
            if len(self._seen) - 1 < self.max_values:
                self._seen[key] = clean
                return clean
            self.overflowed += 1
            if self.overflowed == 1:
                log.warning(
                    "budgetspan: label %r reached %d distinct values; further values are "
                    "reported as %r (raise %s to keep more)",
                    self.label,
                    self.max_values,
                    A.LABEL_OVERFLOW_VALUE,
                    A.ENV_METRICS_MAX_LABEL_VALUES,
                )
        return A.LABEL_OVERFLOW_VALUE

    def values(self) -> list[str]:
        return [v for k, v in self._seen.items() if k != A.LABEL_OVERFLOW_VALUE]


def max_values_from_env() -> int:
    """``BUDGETSPAN_METRICS_MAX_LABEL_VALUES`` (a positive integer), else the default."""
    raw = os.environ.get(A.ENV_METRICS_MAX_LABEL_VALUES, "").strip()
    if not raw:
        return DEFAULT_MAX_VALUES
    try:
        value = int(raw)
        if value < 1:
            raise ValueError
    except ValueError:
        log.error(
            "budgetspan: %s=%r is not a positive integer; using %d",
            A.ENV_METRICS_MAX_LABEL_VALUES,
            raw,
            DEFAULT_MAX_VALUES,
        )
        return DEFAULT_MAX_VALUES
    return value


class LabelCaps:
    """One ``LabelCap`` per label name, created on first use."""

    def __init__(self, max_values: int | None = None) -> None:
        self.max_values = max_values if max_values is not None else max_values_from_env()
        self._caps: dict[str, LabelCap] = {}
        self._lock = threading.Lock()

    def __getitem__(self, label: str) -> LabelCap:
        cap = self._caps.get(label)
        if cap is None:
            with self._lock:
                cap = self._caps.setdefault(label, LabelCap(label, self.max_values))
        return cap
