"""Bounded, well-formed Prometheus label values.

Every distinct label value is a new time series in Prometheus; a model id per customer or a tool
name built from user input would grow the series count without end. Two caps bound it:

- per label: each label keeps its first N distinct values, then ``other``
  (``BUDGETSPAN_METRICS_MAX_LABEL_VALUES``). Capping per label (not per metric) keeps the values
  the same across metrics, so ``cost{model=...}`` and ``model_calls{model=...}`` still join;
- per metric family: a family keeps its first N label sets (``BUDGETSPAN_METRICS_MAX_SERIES``),
  then a new label set folds its open labels (workflow, provider, model, tool, phase) into
  ``other``. Per-label caps alone let a family grow as their product: 100 workflows x 100 models
  x 100 tools made 300,000 exposition lines.

Values are cleaned before they are admitted: a label value is text any scraper must be able to
read, so lone surrogates (valid in JSON, e.g. a model name ``"gpt-\\ud800"`` echoed by a provider),
control and other non-printable characters become U+FFFD, other separators a space, and a value
is cut at ``MAX_VALUE_LENGTH`` characters. A lone surrogate used to make every later scrape fail
with ``UnicodeEncodeError``. In multiprocess mode the caps hold per process.
"""

from __future__ import annotations

import logging
import os
import threading
import unicodedata
from collections.abc import Sequence
from typing import Final

from budgetspan import attributes as A
from budgetspan.config_numbers import count_at_most

log = logging.getLogger(__name__)

DEFAULT_MAX_VALUES: Final = 100
DEFAULT_MAX_SERIES: Final = 1000
MAX_VALUE_LENGTH: Final = 120  # longer values are cut: a label is a name, not text
UNKNOWN: Final = "unknown"
REPLACEMENT: Final = "\ufffd"
# Labels whose values come from budgetspan's own vocabulary (statuses, token types, outcomes,
# limit names, error sites): kept when a family folds, so e.g. input and output tokens stay apart.
FIXED_VOCABULARY: Final = frozenset({A.L_OUTCOME, A.L_REASON, A.L_STATUS, A.L_TYPE, A.L_LIMIT})


def clean_value(raw: str) -> str:
    """``raw`` cut to ``MAX_VALUE_LENGTH`` characters, with every character a scraper could choke
    on replaced: surrogates, controls and other non-printables by U+FFFD, separators by a space."""
    value = raw[:MAX_VALUE_LENGTH]
    if value.isprintable():  # the usual model or tool name: nothing to do
        return value or UNKNOWN
    return "".join(_printable(ch) for ch in value)


def cacheable(values: tuple[object, ...]) -> bool:
    """Whether raw label values may be kept as a cache key: none longer than a label is cut to
    (2,000 model names of 100,000 characters held 200 MB in the families' caches)."""
    return all(type(v) is not str or len(v) <= MAX_VALUE_LENGTH for v in values)


def _printable(ch: str) -> str:
    if ch.isprintable():
        return ch
    return " " if unicodedata.category(ch).startswith("Z") else REPLACEMENT


class _Cap:
    """Counts what a cap turned away, and logs the first time (naming the setting to raise)."""

    __slots__ = ("overflowed",)

    def __init__(self) -> None:
        self.overflowed = 0  # values or label sets turned away (for tests and debugging)

    def _overflow(self, subject: str, reached: str, further: str, env: str) -> None:
        self.overflowed += 1
        if self.overflowed == 1:
            log.warning(
                "budgetspan: %s reached %s; further %s (raise %s to keep more)",
                subject,
                reached,
                further,
                env,
            )


class LabelCap(_Cap):
    """The first ``max_values`` distinct values of one label pass; later ones become ``other``."""

    __slots__ = ("_lock", "_seen", "label", "max_values")

    def __init__(self, label: str, max_values: int = DEFAULT_MAX_VALUES) -> None:
        super().__init__()
        self.label = label
        self.max_values = max(1, max_values)
        self._seen: dict[str, str] = {A.LABEL_OVERFLOW_VALUE: A.LABEL_OVERFLOW_VALUE}
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        key = value if isinstance(value, str) else ("" if value is None else str(value))
        hit = self._seen.get(key)
        if hit is not None:
            return hit
        return self._admit(key)

    def _admit(self, key: str) -> str:
        if len(key) > MAX_VALUE_LENGTH:  # kept as cut: the label is cut there anyway
            key = key[:MAX_VALUE_LENGTH]
            hit = self._seen.get(key)
            if hit is not None:
                return hit
        clean = clean_value(key) if key else UNKNOWN
        with self._lock:
            hit = self._seen.get(key)
            if hit is not None:
                return hit
            # "other" is pre-seeded and does not count against the cap.
            if len(self._seen) - 1 < self.max_values:
                self._seen[key] = clean
                return clean
            self._overflow(
                f"label {self.label!r}",
                f"{self.max_values} distinct values",
                f"values are reported as {A.LABEL_OVERFLOW_VALUE!r}",
                A.ENV_METRICS_MAX_LABEL_VALUES,
            )
        return A.LABEL_OVERFLOW_VALUE

    def values(self) -> list[str]:
        return [v for k, v in self._seen.items() if k != A.LABEL_OVERFLOW_VALUE]


class SeriesCap(_Cap):
    """The first ``max_series`` label sets of one metric family pass; a later one has its open
    labels folded into ``other`` (its fixed-vocabulary labels kept). The family then holds at
    most ``max_series`` series plus the folded ones (one per combination of its fixed labels).

    Called with label values already capped and cleaned, under the metrics listener's lock."""

    __slots__ = ("_fold", "_seen", "family", "max_series")

    def __init__(self, family: str, labels: Sequence[str], max_series: int = DEFAULT_MAX_SERIES) -> None:
        super().__init__()
        self.family = family
        self.max_series = max(1, max_series)
        self._fold = tuple(name not in FIXED_VOCABULARY for name in labels)
        self._seen: set[tuple[str, ...]] = set()

    def __call__(self, key: tuple[str, ...]) -> tuple[str, ...]:
        if key in self._seen:
            return key
        if len(self._seen) < self.max_series:
            self._seen.add(key)
            return key
        folded = tuple(
            A.LABEL_OVERFLOW_VALUE if fold else value for fold, value in zip(self._fold, key, strict=True)
        )
        if folded in self._seen:  # e.g. all its open labels were "other" already
            return folded
        self._overflow(
            f"metric {self.family!r}",
            f"{self.max_series} series",
            f"label sets are reported with {A.LABEL_OVERFLOW_VALUE!r} for their open labels",
            A.ENV_METRICS_MAX_SERIES,
        )
        return folded


def _positive_int_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = count_at_most(raw, 999_999_999)  # (as configure() checked it)
    if value < 1:
        log.error("budgetspan: %s=%r is not a positive integer; using %d", name, raw, default)
        return default
    return value


def max_values_from_env() -> int:
    """``BUDGETSPAN_METRICS_MAX_LABEL_VALUES`` (a positive integer), else the default."""
    return _positive_int_from_env(A.ENV_METRICS_MAX_LABEL_VALUES, DEFAULT_MAX_VALUES)


def max_series_from_env() -> int:
    """``BUDGETSPAN_METRICS_MAX_SERIES`` (a positive integer), else the default."""
    return _positive_int_from_env(A.ENV_METRICS_MAX_SERIES, DEFAULT_MAX_SERIES)


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
