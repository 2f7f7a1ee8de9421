"""Counters, histograms and gauges kept as plain numbers, exposed through one custom collector.

Why not ``prometheus_client.Counter`` / ``Histogram`` in one process: each ``inc`` and
``observe`` there takes its own lock and makes a few checks, and a model call updates six to
eight series, so the metrics listener cost more than the rest of a call's accounting. Here the
listener takes one lock per event and each update is an addition; the collector turns the numbers
into the same exposition (``_total``, ``_bucket``/``_sum``/``_count``, ``_created``) at scrape
time. With ``PROMETHEUS_MULTIPROC_DIR`` the listener uses prometheus-client's own classes instead
(values must live in its per-process files for the server to sum them).

A scrape never makes an application thread wait: the numbers are copied without the listener's
lock (see ``LocalFamily.snapshot``), and the rendering hands the interpreter to waiting threads
every ``SLICE_S`` (see ``LazySamples``). Histogram buckets keep the last trace id observed in
them as an exemplar, written in the OpenMetrics exposition.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from budgetspan.attributes import EXEMPLAR_TRACE_LABEL

SLICE_S = 0.0002  # rendering time between two hand-overs of the interpreter to waiting threads
HAND_OVER_S = 0.00002  # how long the rendering thread sleeps to hand over (a sleep(0) does not)
CHECK_EVERY = 16  # samples rendered between two looks at the clock


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


Exemplar = tuple[int, float, float]  # trace id, the observed value, when (Unix seconds)


class HistogramCell:
    """Per-bucket (not cumulative) counts; the last bucket is +Inf. NaN is not observed.

    ``exemplars`` holds, per bucket, the last observation made with a trace id (None until one is).
    """

    __slots__ = ("bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()
        self.exemplars: list[Exemplar | None] | None = None

    def observe(self, value: float, trace_id: int | None = None) -> None:
        if value == value:  # not NaN
            i = bisect_left(self.bounds, value)
            self.counts[i] += 1
            self.sum += value
            if trace_id:
                ex = self.exemplars
                if ex is None:
                    ex = self.exemplars = [None] * len(self.counts)
                ex[i] = (trace_id, value, time.time())


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

    def snapshot(self) -> Snapshot:
        """The family's numbers, copied without the listener's lock.

        No lock is needed, and taking one made calls wait whenever the scraping thread was
        descheduled while holding it: under the GIL each number is read whole, a counter only
        grows (a scrape never sees one fall) and a series appears in ``children`` at once. A
        histogram's ``_sum`` may miss an observation its buckets already hold (or the reverse)
        when a call ends during the copy; prometheus-client reads them apart as well. Only flat
        lists of numbers are made: no object per cell, so the copy sets off no garbage collection."""
        items = list(self.children.items())
        snap = Snapshot(self, [k for k, _ in items])
        cells = [c for _, c in items]
        if self.kind == "histogram":
            snap.values = [c.sum for c in cells]
            snap.counts = [n for c in cells for n in c.counts]
            snap.exemplars = [None if c.exemplars is None else list(c.exemplars) for c in cells]
        else:
            snap.values = [c.value for c in cells]
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

    __slots__ = ("counts", "created", "exemplars", "family", "keys", "values")

    def __init__(self, family: LocalFamily, keys: list[tuple[str, ...]]) -> None:
        self.family = family
        self.keys = keys
        self.values: list[float] = []
        self.counts: list[int] = []
        self.created: list[float] = []
        self.exemplars: list[list[Exemplar | None] | None] = []


class LazySamples(Sequence[Sample]):
    """A family's samples, made while the encoder iterates and dropped right after.

    A family at the series cap has some 20,000 samples; made all at once (a ``Sample`` and a
    label dict each) they outlived the young garbage-collector generations and set off full
    collections that stopped every thread for up to 0.2 s. Made one at a time, each is freed
    as soon as it is written.

    Rendering is pure Python and holds the interpreter: an application thread that wakes (a
    response arrived) waits for it. Every ``SLICE_S`` of rendering this thread sleeps
    ``HAND_OVER_S``, so a waiting thread runs within about 0.2 ms. A ``sleep(0)`` is not enough:
    it lets the interpreter go and takes it straight back before the woken thread is scheduled,
    and the waiting thread got in only at the 5 ms switch interval."""

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
        clock = time.perf_counter
        slice_end = clock() + SLICE_S
        budget = CHECK_EVERY
        for i, key in enumerate(snap.keys):
            budget -= per_series
            if budget <= 0:
                budget = CHECK_EVERY
                if clock() >= slice_end:
                    time.sleep(HAND_OVER_S)
                    slice_end = clock() + SLICE_S
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
    exemplars = snap.exemplars[i]
    for j, (le, n) in enumerate(zip(f.les, counts, strict=True)):
        total += n
        ex = exemplars[j] if exemplars is not None else None
        if ex is None:
            yield Sample(bucket, {**labels, "le": le}, float(total))
        else:
            yield Sample(bucket, {**labels, "le": le}, float(total), None, _exemplar(ex))
    yield Sample(f.name + "_count", labels, float(total))
    yield Sample(f.name + "_sum", labels, snap.values[i])


def _exemplar(ex: Exemplar) -> PromExemplar:
    """An exemplar as OpenMetrics writes it: ``# {trace_id="<32 hex>"} value timestamp``; the
    label name is the one Grafana's and Prometheus' trace links look for by default."""
    trace_id, value, when = ex
    return PromExemplar({EXEMPLAR_TRACE_LABEL: format(trace_id, "032x")}, value, when)


def _created_series() -> bool:
    """prometheus-client's switch for ``_created`` series (PROMETHEUS_DISABLE_CREATED_SERIES,
    ``disable_created_metrics()``), read at each scrape as the client's own metrics do."""
    from prometheus_client import metrics

    return bool(getattr(metrics, "_use_created", True))


def _le(bound: float) -> str:
    """The ``le`` label exactly as prometheus-client writes it (``0.5``, ``100.0``, ``1e+06``)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class LocalCollector(Collector):
    """Exposes the local families: each is copied (see ``LocalFamily.snapshot``) and rendered
    without the listener's lock, so a scrape never makes a call wait on it. Families are copied
    one after another; rates and quantiles never combine two families' samples."""

    def __init__(self, families: Sequence[LocalFamily]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            yield f.to_metric(f.snapshot())

    def describe(self) -> Iterator[Metric]:
        # Names only, so that the registry refuses a second collector with the same names.
        for f in self.families:
            yield Metric(f.name, f.doc, f.kind)
