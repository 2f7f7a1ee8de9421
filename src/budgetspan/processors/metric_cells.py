"""Counters, histograms and gauges kept as plain numbers, exposed through one custom collector.

Why not ``prometheus_client.Counter`` / ``Histogram`` in one process: each ``inc`` and
``observe`` there takes its own lock and makes a few checks, and a model call updates six to
eight series, so the metrics listener cost more than the rest of a call's accounting. Here the
listener takes one lock per event and each update is an addition; the collector turns the numbers
into the same exposition (``_total``, ``_bucket``/``_sum``/``_count``, ``_created``) at scrape
time. With ``PROMETHEUS_MULTIPROC_DIR`` the listener uses prometheus-client's own classes instead
(values must live in its per-process files for the server to sum them).
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

SNAPSHOT_CHUNK = 256  # cells copied per hold of the listener's lock


class CounterCell:
    """One labelled counter value (the caller guarantees a finite, non-negative amount)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:  # as prometheus-client: a counter that went down would read as a reset
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeCell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramCell:
    """Per-bucket (not cumulative) counts; the last bucket is +Inf. NaN is not observed."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        if value == value:  # not NaN
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value


class LocalFamily:
    """A labelled metric family whose children are cells; ``labels()`` mirrors prometheus-client."""

    def __init__(
        self, kind: str, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] = ()
    ) -> None:
        self.kind = kind  # "counter" | "gauge" | "histogram"
        self.name = name
        self.doc = doc
        self.label_names = tuple(labels)
        self.bounds = tuple(float(b) for b in buckets if b != math.inf)
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: Any) -> Any:
        key = tuple(str(v) for v in values)
        cell = self.children.get(key)
        if cell is None:
            if self.kind == "histogram":
                cell = HistogramCell(self.bounds)
            elif self.kind == "gauge":
                cell = GaugeCell()
            else:
                cell = CounterCell()
            self.children[key] = cell
        return cell

    def snapshot(self, lock: threading.Lock) -> list[tuple[Any, ...]]:
        """The family's numbers, copied under ``lock`` a chunk of cells at a time.

        Each cell is copied whole (a histogram's buckets and sum together), and the lock is
        let go between chunks, so a call finishing during a scrape waits for one chunk at most
        (about 0.1 ms), never for the whole family or for the rendering."""
        with lock:
            items = list(self.children.items())
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(items), SNAPSHOT_CHUNK):
            chunk = items[start : start + SNAPSHOT_CHUNK]
            if start:
                time.sleep(0)  # let a listener woken by the last release take the lock first
            with lock:
                if self.kind == "histogram":
                    rows += [(k, c.counts[:], c.sum, c.created) for k, c in chunk]
                elif self.kind == "gauge":
                    rows += [(k, c.value, 0.0) for k, c in chunk]
                else:
                    rows += [(k, c.value, c.created) for k, c in chunk]
        return rows

    def to_metric(self, rows: Sequence[tuple[Any, ...]]) -> Metric:
        """The exposition of a ``snapshot``; runs without any lock."""
        names = self.label_names
        created = _created_series()
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.doc, labels=names)
            for key, value, at in rows:
                counter.add_metric(key, value, created=at if created else None)
            return counter
        if self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.doc, labels=names)
            for key, value, _ in rows:
                gauge.add_metric(key, value)
            return gauge
        hist = HistogramMetricFamily(self.name, self.doc, labels=names)
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        for key, counts, total_sum, at in rows:
            total, cumulative = 0, []
            for le, n in zip(les, counts, strict=True):
                total += n
                cumulative.append((le, float(total)))
            hist.add_metric(key, cumulative, total_sum)
            if created:
                hist.samples.append(Sample(self.name + "_created", dict(zip(names, key, strict=True)), at))
        return hist


def _created_series() -> bool:
    """prometheus-client's switch for ``_created`` series (PROMETHEUS_DISABLE_CREATED_SERIES,
    ``disable_created_metrics()``), read at each scrape as the client's own metrics do."""
    from prometheus_client import metrics

    return bool(getattr(metrics, "_use_created", True))


def _le(bound: float) -> str:
    """The ``le`` label exactly as prometheus-client writes it (``0.5``, ``100.0``, ``1e+06``)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class LocalCollector(Collector):
    """Exposes the local families: each is copied in short chunks under the listener's lock (see
    ``LocalFamily.snapshot``) and rendered outside it, so a scrape never makes a call wait on
    rendering. Families are copied one after another, each consistent in itself; rates and
    quantiles never combine two families' samples."""

    def __init__(self, families: Sequence[LocalFamily], lock: threading.Lock) -> None:
        self.families = list(families)
        self.lock = lock

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            yield f.to_metric(f.snapshot(self.lock))

    def describe(self) -> Iterator[Metric]:
        # Names only, so that the registry refuses a second collector with the same names.
        for f in self.families:
            yield Metric(f.name, f.doc, f.kind)
