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

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

SNAPSHOT_CHUNK = 256  # cells copied per hold of the listener's lock
YIELD_EVERY = 256  # samples rendered between two chances for other threads to run (~0.5 ms)


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
        self.les = (*(_le(b) for b in self.bounds), "+Inf")  # the ``le`` label of each bucket
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

    def snapshot(self, lock: threading.Lock) -> Snapshot:
        """The family's numbers, copied under ``lock`` a chunk of cells at a time.

        Each cell is copied whole (a histogram's buckets and sum together), and the lock is
        let go between chunks, so a call finishing during a scrape waits for one chunk at most
        (tens of µs), never for the whole family or for the rendering. Only flat lists of
        numbers are made: no object per cell, so no garbage collection starts under the lock."""
        with lock:
            items = list(self.children.items())
        snap = Snapshot(self, [k for k, _ in items])
        cells = [c for _, c in items]
        for start in range(0, len(cells), SNAPSHOT_CHUNK):
            chunk = cells[start : start + SNAPSHOT_CHUNK]
            if start:
                time.sleep(0)  # let a listener woken by the last release take the lock first
            if self.kind == "histogram":
                with lock:
                    snap.values += [c.sum for c in chunk]
                    snap.counts += [n for c in chunk for n in c.counts]
            else:
                with lock:
                    snap.values += [c.value for c in chunk]
        if self.kind != "gauge":
            snap.created = [c.created for c in cells]  # set once, when the cell is made
        return snap

    def to_metric(self, snap: Snapshot) -> Metric:
        """The exposition of a ``snapshot``, without any lock: its samples are made one at a time
        as the encoder reads them (see ``LazySamples``)."""
        metric = Metric(self.name, self.doc, self.kind)
        metric.samples = LazySamples(snap, _created_series())  # type: ignore[assignment]
        return metric


class Snapshot:
    """One family's numbers at a scrape, in flat lists: label values (the family's own key
    tuples), values (a histogram's sums), a histogram's per-bucket counts, creation times."""

    __slots__ = ("counts", "created", "family", "keys", "values")

    def __init__(self, family: LocalFamily, keys: list[tuple[str, ...]]) -> None:
        self.family = family
        self.keys = keys
        self.values: list[float] = []
        self.counts: list[int] = []
        self.created: list[float] = []


class LazySamples(Sequence[Sample]):
    """A family's samples, made while the encoder iterates and dropped right after.

    A family at the series cap has some 20,000 samples; made all at once (a ``Sample`` and a
    label dict each) they outlived the young garbage-collector generations and set off full
    collections that stopped every thread for up to 0.2 s. Made one at a time, each is freed
    as soon as it is written. Every ``YIELD_EVERY`` samples the rendering thread lets other
    threads run, so an application thread waits for a slice of rendering, not for all of it."""

    def __init__(self, snap: Snapshot, created: bool) -> None:
        self.snap = snap
        self.created = created

    def __len__(self) -> int:
        f, n = self.snap.family, len(self.snap.keys)
        per = (len(f.bounds) + 3 if f.kind == "histogram" else 1) + (self.created and f.kind != "gauge")
        return n * per

    def __getitem__(self, index: Any) -> Any:
        return list(self)[index]

    def __iter__(self) -> Iterator[Sample]:
        f, snap = self.snap.family, self.snap
        names = f.label_names
        per_series = len(f.bounds) + 4 if f.kind == "histogram" else 2
        budget = YIELD_EVERY
        for i, key in enumerate(snap.keys):
            budget -= per_series
            if budget <= 0:
                time.sleep(0)  # a thread waiting for the interpreter gets it now, not in 5 ms
                budget = YIELD_EVERY
            labels = dict(zip(names, key, strict=True))
            if f.kind == "histogram":
                yield from _histogram_samples(f, labels, snap, i)
            else:
                yield Sample(f.name + "_total" if f.kind == "counter" else f.name, labels, snap.values[i])
            if self.created and f.kind != "gauge":
                yield Sample(f.name + "_created", labels, snap.created[i])


def _histogram_samples(f: LocalFamily, labels: dict[str, str], snap: Snapshot, i: int) -> Iterator[Sample]:
    """One series of a histogram, as ``HistogramMetricFamily.add_metric`` lays it out."""
    width = len(f.bounds) + 1
    counts = snap.counts[i * width : (i + 1) * width]
    total = 0
    bucket = f.name + "_bucket"
    for le, n in zip(f.les, counts, strict=True):
        total += n
        yield Sample(bucket, {**labels, "le": le}, float(total))
    yield Sample(f.name + "_count", labels, float(total))
    yield Sample(f.name + "_sum", labels, snap.values[i])


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
