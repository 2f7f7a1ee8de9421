"""Scale-out: the tier as two collectors (rotel, each with budgetspan's processor) behind a front
that routes spans by trace id (``router.py``: rotel has no load-balancing exporter, so a small
OTLP router stands in for the OpenTelemetry Collector's ``loadbalancing`` exporter). One run's
spans meet in one processor, so the two collectors together account exactly what one collector
accounts for the same spans: the same runs, marks, costs and metric series.

One service sends the same spans to the front and to a single reference collector."""

from __future__ import annotations

import contextlib
import math
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client.parser import text_string_to_metric_families

from budgetspan import attributes as A
from tests.prometheus_server import wait_for

from .router import TraceRouter
from .stack import Receiver, Tier, running_receiver, running_tier
from .test_rotel_python_service import round_of_runs

ROUNDS = 6
RUNS_PER_ROUND = 6  # round_of_runs: three support runs, a stream, two in-process runs
WINDOW_S = 5  # launch() runs the tier with --window-s 5


@dataclass
class Stacks:
    single: Tier
    single_rx: Receiver
    pair: tuple[Tier, Tier]
    pair_rx: Receiver
    router: TraceRouter


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    pytest.importorskip("rotel")
    tmp = tmp_path_factory.mktemp("scale-out")
    with contextlib.ExitStack() as stack:
        single_rx, pair_rx = stack.enter_context(running_receiver()), stack.enter_context(running_receiver())
        single = stack.enter_context(running_tier(tmp / "single", single_rx.endpoint))
        pair = tuple(stack.enter_context(running_tier(tmp / n, pair_rx.endpoint)) for n in ("a", "b"))
        router = TraceRouter([t.otlp_http for t in pair])
        stack.callback(router.close)
        yield Stacks(single, single_rx, (pair[0], pair[1]), pair_rx, router)


def series(tier: Tier) -> Counter[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every budgetspan sample the collector exposes, by name and labels."""
    with urllib.request.urlopen(tier.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    out: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("budgetspan_") and not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return out


def runs_ended(*tiers: Tier) -> float:
    return sum(v for t in tiers for (name, _), v in series(t).items() if name == "budgetspan_runs_total")


def test_one_runs_spans_meet_in_one_processor_and_two_collectors_account_as_one(stacks: Stacks) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "support-api"}))
    for endpoint in (stacks.router.url, stacks.single.otlp_http):
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces")))
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai")
    for n in range(ROUNDS):
        round_of_runs(tracer, n)
    provider.shutdown()  # flushes both copies
    sent = ROUNDS * RUNS_PER_ROUND
    wait_for(
        lambda: runs_ended(stacks.single) == sent and runs_ended(*stacks.pair) == sent, 30, "every run ended"
    )
    # A run whose spans were split between the collectors would also be open in the other one,
    # and end there as "unknown" once idle for the window: wait it out before comparing.
    time.sleep(WINDOW_S + 2)
    assert all(n > 0 for n in stacks.router.sent), stacks.router.sent  # both collectors had a share
    single = series(stacks.single)
    pair = series(stacks.pair[0]) + series(stacks.pair[1])
    pair.update({k: 0.0 for k in single.keys() - pair.keys()})  # Counter addition drops zero values
    single.update({k: 0.0 for k in pair.keys() - single.keys()})
    assert single.keys() == pair.keys()
    differ = {k: (single[k], pair[k]) for k in single if not math.isclose(single[k], pair[k], abs_tol=1e-12)}
    assert not differ, differ
    assert (
        single[
            (
                "budgetspan_runs_total",
                (("outcome", "success"), ("service", "support-api"), ("workflow", "support")),
            )
        ]
        == 4 * ROUNDS
    )  # all but the in-process run (its outcome: budget_exhausted)
    single_marks, pair_marks = (
        {s.span_id: s.attributes.get(A.WOULD_REFUSE) for s in rx.snapshot()}
        for rx in (stacks.single_rx, stacks.pair_rx)
    )
    assert single_marks == pair_marks
    assert Counter(pair_marks.values())["max_model_calls"] == ROUNDS
