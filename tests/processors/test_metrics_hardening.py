"""Label values cleaned, series capped per metric family, and a scrape that never holds the
listener's lock while it renders (processors/labels.py, metrics.py, metric_cells.py)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.events import CallRecord
from budgetspan.processors import metric_cells
from budgetspan.processors import metrics as M
from budgetspan.processors.labels import LabelCap, SeriesCap, clean_value, max_series_from_env
from tests.conftest import events_to
from tests.processors.test_metrics import model_call


def model_record(workflow: str, model: str, status: str = "ok") -> CallRecord:
    return CallRecord(
        "model",
        workflow,
        "model_decision",
        0.2,
        provider="acme",
        model=model,
        status=status,
        spend=Spend(100, 20, None, None, None, 0.001),
    )


def tool_record(workflow: str, tool: str) -> CallRecord:
    return CallRecord("tool", workflow, "tool_execution", 0.01, tool=tool)


def series_by_family(registry: CollectorRegistry) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Distinct label sets of each family (histogram buckets folded into their series)."""
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for fam in registry.collect():
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            out.setdefault(fam.name, set()).add(labels)
    return out


# --- label values -------------------------------------------------------------------------------


def test_clean_value_replaces_what_a_scraper_cannot_read() -> None:
    assert clean_value("gpt-4o-mini") == "gpt-4o-mini"
    assert clean_value("gpt-\ud800") == "gpt-\ufffd"  # a lone surrogate: not encodable as UTF-8
    assert clean_value("a\nb\tc\x00d\x7f") == "a\ufffdb\ufffdc\ufffdd\ufffd"
    assert clean_value("a\u00a0b\u2028c") == "a b c"  # separators: a space
    assert clean_value("\u200b") == "\ufffd"  # zero-width (format) characters
    assert clean_value("模型-🙂") == "模型-🙂"  # printable non-ASCII is kept
    assert clean_value("m" * 500) == "m" * 120
    for raw in ("gpt-\ud800", "\udfff" * 300, "x\x1b[31m"):
        clean_value(raw).encode("utf-8")  # never raises


def test_a_surrogate_model_label_is_cleaned_and_the_exposition_renders() -> None:
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry)
    metrics.on_call_end(model_record("wf\x00", "gpt-\ud800"))
    text = generate_latest(registry).decode()  # raised UnicodeEncodeError before
    assert 'model="gpt-\ufffd"' in text and 'workflow="wf\ufffd"' in text
    cap = LabelCap("model", 2)
    assert cap("\ud800") == "\ufffd" and cap("\ud800") == "\ufffd"  # cached, counted once
    assert cap.values() == ["\ufffd"]


# --- series per family --------------------------------------------------------------------------


def test_series_cap_unit_folds_open_labels_and_keeps_fixed_ones() -> None:
    cap = SeriesCap("budgetspan_tokens", ("workflow", "provider", "model", "type"), 2)
    assert cap(("a", "p", "m1", "input")) == ("a", "p", "m1", "input")
    assert cap(("a", "p", "m2", "input")) == ("a", "p", "m2", "input")
    assert cap(("b", "p", "m3", "output")) == ("other", "other", "other", "output")
    assert cap(("a", "p", "m1", "input")) == ("a", "p", "m1", "input")  # admitted stays itself
    assert cap.overflowed == 1


def test_series_cap_bounds_the_exposition_of_a_cardinality_explosion() -> None:
    """30 workflows x 30 models x 30 tools: every family stays within its cap (plus one folded
    series per fixed label value), and no call is lost: the folded ``other`` series carry them."""
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry, max_series=40)
    calls = 0
    for w in range(30):
        for m in range(30):
            metrics.on_call_end(model_record(f"wf{w}", f"model-{m}"))
            metrics.on_call_end(tool_record(f"wf{w}", f"tool-{m}"))
            calls += 1
    families = series_by_family(registry)
    statuses, token_types = 1, 2  # fixed-vocabulary labels seen: status "ok"; input and output
    assert len(families["budgetspan_model_calls"]) == 40 + statuses
    assert len(families["budgetspan_tokens"]) == 40 + token_types
    assert len(families["budgetspan_tool_duration_seconds"]) == 40 + 1
    for name, sets in families.items():
        assert len(sets) <= 40 + token_types, name
    assert ("model", "other") in {kv for labels in families["budgetspan_cost_usd"] for kv in labels}
    total = sum(
        s.value for fam in registry.collect() for s in fam.samples if s.name == "budgetspan_model_calls_total"
    )
    assert total == calls  # every call counted, in its own series or in "other"
    lines = len(generate_latest(registry).splitlines())
    uncapped = CollectorRegistry()
    big = M.BudgetspanMetrics(uncapped, max_series=100_000)
    for w in range(30):
        for m in range(30):
            big.on_call_end(model_record(f"wf{w}", f"model-{m}"))
            big.on_call_end(tool_record(f"wf{w}", f"tool-{m}"))
    assert lines * 10 < len(generate_latest(uncapped).splitlines())
    print(
        f"\n[series cap 40] exposition {lines} lines (uncapped: {len(generate_latest(uncapped).splitlines())})"
    )


def test_series_cap_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(A.ENV_METRICS_MAX_SERIES, "7")
    assert max_series_from_env() == 7
    assert M.BudgetspanMetrics(CollectorRegistry()).runs.series_cap.max_series == 7
    monkeypatch.setenv(A.ENV_METRICS_MAX_SERIES, "0")
    assert max_series_from_env() == 1000  # not a positive integer: the default, logged


# --- a scrape never holds the lock while it renders ----------------------------------------------


@pytest.fixture
def listening(tracing: Any) -> Iterator[tuple[CollectorRegistry, M.BudgetspanMetrics]]:
    registry = CollectorRegistry()
    with events_to(M.BudgetspanMetrics(registry)) as metrics:
        yield registry, metrics


def test_a_call_completes_its_metrics_update_while_a_scrape_is_paused_mid_render(
    listening: tuple[CollectorRegistry, M.BudgetspanMetrics], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scrape stops inside the step that turns the numbers into the exposition (which used to
    run under the listener's lock); a model call ends on another thread and must finish its
    update before the scrape is let go."""
    registry, metrics = listening
    with budgetspan.run("before"):
        model_call()
    rendering, release = threading.Event(), threading.Event()
    lock_free_during_render: list[bool] = []
    to_metric = metric_cells.LocalFamily.to_metric

    def paused(self: metric_cells.LocalFamily, snap: Any) -> Any:
        if self.name == A.M_MODEL_CALLS and not rendering.is_set():
            free = metrics._lock.acquire(blocking=False)
            if free:
                metrics._lock.release()
            lock_free_during_render.append(free)
            rendering.set()
            release.wait(30)
        return to_metric(self, snap)

    monkeypatch.setattr(metric_cells.LocalFamily, "to_metric", paused)
    scraped: list[bytes] = []
    scraper = threading.Thread(target=lambda: scraped.append(generate_latest(registry)))
    updated = threading.Event()

    def app_call() -> None:
        with budgetspan.run("during"):
            model_call()
        updated.set()

    try:
        scraper.start()
        assert rendering.wait(10)
        app = threading.Thread(target=app_call)
        app.start()
        assert updated.wait(10), "the call waited for the scrape's rendering"
        assert not scraped  # the scrape is still paused: the update did not wait for it
    finally:
        release.set()
        scraper.join(10)
    assert lock_free_during_render == [True]
    app.join(10)
    assert scraped and b'workflow="before"' in scraped[0]
    assert b'budgetspan_runs_total{outcome="success",workflow="during"} 1.0' in generate_latest(registry)


def test_snapshot_of_a_big_family_loses_nothing() -> None:
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry, max_label_values=2000, max_series=5000)
    for i in range(3 * 256 + 5):
        metrics.on_call_end(tool_record("wf", f"tool-{i}"))
    counts = Counter(
        s.name for fam in registry.collect() for s in fam.samples if s.name.startswith("budgetspan_tool")
    )
    assert counts["budgetspan_tool_calls_total"] == 3 * 256 + 5
    assert counts["budgetspan_tool_duration_seconds_count"] == 3 * 256 + 5


def test_a_scrape_completes_while_the_listeners_lock_is_held_elsewhere() -> None:
    """The copy of the numbers takes no lock the application's calls take: a scrape finishes
    while a (stuck) call holds the listener's lock."""
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry)
    metrics.on_call_end(model_record("wf", "m"))
    scraped: list[bytes] = []
    with metrics._lock:
        scraper = threading.Thread(target=lambda: scraped.append(generate_latest(registry)), daemon=True)
        scraper.start()
        scraper.join(10)
    assert scraped, "the scrape waited for the listener's lock"
    assert (
        b'budgetspan_model_calls_total{model="m",provider="acme",status="ok",workflow="wf"} 1.0' in scraped[0]
    )


def test_rendering_hands_the_interpreter_over_with_a_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slice of rendering ends in a sleep longer than zero (a ``sleep(0)`` takes the
    interpreter straight back, and a waiting thread got in only at the 5 ms switch interval)."""
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry, max_label_values=2000, max_series=5000)
    for i in range(300):
        metrics.on_call_end(tool_record("wf", f"tool-{i}"))
    sleeps: list[float] = []
    real_sleep = metric_cells.time.sleep
    monkeypatch.setattr(metric_cells, "SLICE_S", 0.0)  # hand over at every look at the clock
    monkeypatch.setattr(metric_cells.time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    text = generate_latest(registry)
    assert text.count(b"budgetspan_tool_calls_total{") == 300
    assert len(sleeps) >= 300 * 2 // metric_cells.CHECK_EVERY
    assert min(sleeps) > 0


def test_huge_distinct_label_values_are_not_held_whole() -> None:
    """review11: a label is cut at 120 characters, but the caps and the families' child caches
    kept the raw values as keys: 2,000 model names of 100,000 characters (a proxy passing a
    caller's ``model`` through) held 202 MB in the metrics listener. Held now: the cut values."""
    import gc
    import tracemalloc

    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry)
    metrics.on_call_end(model_record("wf", "warm-up"))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            metrics.on_call_end(model_record("wf", f"{i:05d}" + "m" * 100_000))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20_000_000, f"{held / 1e6:.0f} MB held"
    exposition = generate_latest(registry).decode()
    assert "m" * 121 not in exposition and 'model="00001' in exposition
