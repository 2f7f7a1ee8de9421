"""Scope metrics: no tenant label unless asked for; an allow-list or the top N by spend, then other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import budgetspan
from budgetspan import events
from budgetspan.accounting import windows
from budgetspan.accounting.ledger import CallKind, Spend
from budgetspan.accounting.scopes import REGISTRY
from budgetspan.processors.scope_metrics import ScopeMetrics, TenantLabels


def test_no_tenant_label_by_default_then_an_allow_list() -> None:
    assert TenantLabels(None)("acme", 5.0) == "other"
    labels = TenantLabels("acme, globex")
    assert [labels(t) for t in ("acme", "globex", "initech", None)] == ["acme", "globex", "other", "other"]


def test_top_n_keeps_the_biggest_spenders() -> None:
    labels = TenantLabels("top:2")
    dropped: list[str] = []
    labels.on_evict = dropped.append
    assert [labels(t, 0.01) for t in ("a", "b", "c")] == ["a", "b", "other"]
    for i in range(100):
        labels(f"small-{i}", 0.01)
    assert labels("big", 5.0) == "big" and dropped == ["a"]  # a big spender takes a small one's place
    assert labels("bigger", 9.0) == "bigger" and dropped == ["a", "b"]
    assert labels("big", 0.0) == "big" and labels("small-5", 0.01) == "other"
    assert len(labels._sketch) <= 2 * 10  # memory bounded by N, not by the tenants seen


@pytest.fixture
def scoped(tracing: object) -> Iterator[tuple[CollectorRegistry, ScopeMetrics]]:
    registry = CollectorRegistry()
    metrics = ScopeMetrics(registry, tenants="acme")
    events.add_listener(metrics)
    windows.set_clock(lambda: 1_764_900_000.0)
    try:
        yield registry, metrics
    finally:
        events.remove_listener(metrics)
        windows.set_clock(None)
        REGISTRY.clear()


def _value(registry: CollectorRegistry, name: str, **labels: str) -> Any:
    return registry.get_sample_value(name, labels)


def test_warnings_exhaustions_and_tenant_spend(scoped: tuple[CollectorRegistry, ScopeMetrics]) -> None:
    registry, _ = scoped
    for tenant in ("acme", "globex"):
        budgetspan.set_scope_budget(
            "tenant", tenant, budgetspan.Budget(max_model_calls=2), window="day", warn_at=0.5
        )
        with pytest.raises(budgetspan.BudgetExhausted):
            with budgetspan.run("chat", tenant=tenant) as run:
                for _ in range(3):
                    run.commit(run.reserve(CallKind.MODEL), Spend(cost_usd=0.25))
    assert _value(registry, "budgetspan_scope_warnings_total", scope="tenant") == 2
    assert _value(registry, "budgetspan_scope_exhaustions_total", scope="tenant", tenant="acme") == 1
    assert _value(registry, "budgetspan_scope_exhaustions_total", scope="tenant", tenant="other") == 1
    assert _value(registry, "budgetspan_tenant_cost_usd_total", tenant="acme") == 0.5
    assert _value(registry, "budgetspan_tenant_cost_usd_total", tenant="other") == 0.5


@pytest.mark.parametrize("setting", ["top:3", "acme-\ud800\x1b[2J, " + "t" * 5000])
def test_a_hostile_tenant_name_is_cleaned_before_it_is_a_label(setting: str) -> None:
    """review11: tenant names (a request's header, a JSON body) were label values as given under
    ``top:N`` or an allow-list: a lone surrogate made every later scrape fail
    (``UnicodeEncodeError``, as the model name of issue 15), an escape sequence reached the
    exposition raw, a 5,000-character name was a 5,000-character label."""
    registry = CollectorRegistry()
    metrics = ScopeMetrics(registry, tenants=setting)
    for tenant in ("acme-\ud800\x1b[2J", "t" * 5000):
        metrics.cost.labels(metrics.tenant(tenant, 1.0)).inc(1.0)
    exposition = generate_latest(registry).decode()  # raised UnicodeEncodeError
    assert "\x1b" not in exposition and "t" * 121 not in exposition
    assert 'tenant="acme-\ufffd\ufffd[2J"' in exposition and f'tenant="{"t" * 120}"' in exposition
