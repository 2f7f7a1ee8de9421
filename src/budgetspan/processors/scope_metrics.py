"""Metrics of budgets above the run, without a series per tenant or user.

- ``budgetspan_scope_warnings_total{scope}``: a scope window reached its warning threshold.
- ``budgetspan_scope_exhaustions_total{scope, tenant}``: a run stopped at a scope's limit.
- ``budgetspan_tenant_cost_usd_total{tenant}``: what runs spent, by tenant (at run end; a call's
  dollars after its run ended, as they come).

``tenant`` is ``other`` unless ``BUDGETSPAN_METRICS_TENANTS`` names the tenant (``acme,globex``)
or says ``top:N``: then the N tenants that spent most in this process, as a bounded Space-Saving
sketch (``SKETCH_PER_SLOT`` × N entries) estimates it, have their own series; a tenant that drops
out of the N has its series removed and counts in ``other`` from then on (in prometheus_client's
multiprocess mode, where a series cannot be removed, the first N to reach the top keep theirs). Unset: ``tenant`` is always ``other``, and the
per-tenant figures are for ``budgetspan.spend(tenant=...)`` and ``budgetspan report --by tenant``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from budgetspan import attributes as A
from budgetspan.accounting.scopes import SCOPE_KINDS
from budgetspan.config_numbers import count_at_most
from budgetspan.processors.labels import clean_value
from budgetspan.processors.metrics import multiprocess_mode

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

OTHER = "other"
#: Sketch entries per tenant series the ``top:N`` setting allows.
SKETCH_PER_SLOT = 10


class TenantLabels:
    """Which tenants are a label value: an allow-list, or the top N by spend (see the module)."""

    def __init__(self, setting: str | None, evicts: bool = True) -> None:
        raw = (setting or "").strip()
        #: False where a series cannot be removed (prometheus_client's multiprocess mode): the
        #: first N tenants to reach the top keep their series, every other one is ``other``
        #: (evicting there left each former top tenant's series behind: 61 with ``top:2``).
        self.evicts = evicts
        self.allowed: set[str] = set()
        self.top = 0
        if raw.lower().startswith("top:"):
            self.top = max(0, count_at_most(raw[4:], 999_999_999))  # as configure() checked it
        elif raw:
            self.allowed = {clean_value(name.strip()) for name in raw.split(",") if name.strip()}
        self._sketch: dict[str, tuple[float, float]] = {}
        self._top: dict[str, None] = {}  # (in the order admitted: of equals, the oldest goes first)
        self._lock = threading.Lock()
        #: Called with a tenant that left the top N (its series is to go).
        self.on_evict: Callable[[str], None] = lambda tenant: None

    def __call__(self, tenant: str | None, cost: float = 0.0) -> str:
        if not tenant:
            return OTHER
        # A name from a request is cleaned as any label value (a lone surrogate failed every scrape).
        tenant = clean_value(tenant)
        if tenant in self.allowed:
            return tenant
        if self.top <= 0:
            return OTHER
        with self._lock:
            return self._rank(tenant, cost)

    def _rank(self, tenant: str, cost: float) -> str:
        """Space-Saving: count ``cost`` against the tenant (replacing the smallest entry when the
        sketch is full). The N largest have a series: a tenant that passes the smallest of them
        takes its place, and the one it passes goes to ``other`` (its series is removed)."""
        sketch = self._sketch  # tenant -> (estimate, the most of it that may be another's)
        if tenant in sketch or len(sketch) < self.top * SKETCH_PER_SLOT:
            estimate, error = sketch.get(tenant, (0.0, 0.0))
            sketch[tenant] = (estimate + cost, error)
        else:
            # (the tenants with a series keep their entry: it is what they are ranked by)
            smallest = min((t for t in sketch if t not in self._top), key=lambda t: sketch[t][0])
            floor = sketch.pop(smallest)[0]
            sketch[tenant] = (floor + cost, floor)
        if tenant in self._top:
            return tenant
        if len(self._top) >= self.top:

            def surely(t: str) -> float:  # what the tenant spent at least
                estimate, error = sketch.get(t, (0.0, 0.0))
                return estimate - error

            weakest = min(self._top, key=surely)
            if not self.evicts or surely(tenant) <= surely(weakest) + 1e-9:  # (not by a rounding)
                return OTHER
            del self._top[weakest]
            self.on_evict(weakest)
        self._top[tenant] = None
        return tenant


class ScopeMetrics:
    """The ``budgetspan.events`` listener for scope warnings, scope exhaustions and tenant spend."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, tenants: str | None = None) -> None:
        setting = os.environ.get(A.ENV_METRICS_TENANTS) if tenants is None else tenants
        self.tenant = TenantLabels(setting, evicts=not multiprocess_mode())
        self.warnings = Counter(
            A.M_SCOPE_WARNINGS,
            "Scope windows that reached their warning threshold.",
            (A.L_SCOPE,),
            registry=registry,
        )
        self.exhaustions = Counter(
            A.M_SCOPE_EXHAUSTIONS,
            "Runs stopped at a scope's limit (tenant: allow-listed or top N, else other).",
            (A.L_SCOPE, A.L_TENANT),
            registry=registry,
        )
        self.tenant.on_evict = self._drop
        self.cost = Counter(
            A.M_TENANT_COST,
            "Dollar cost of runs by tenant (allow-listed or top N, else other).",
            (A.L_TENANT,),
            registry=registry,
        )

    def _drop(self, tenant: str) -> None:
        """A tenant left the top N: its series go (no series per tenant that ever spent)."""
        for family, labels in [(self.cost, (tenant,))] + [
            (self.exhaustions, (k, tenant)) for k in SCOPE_KINDS
        ]:
            try:
                family.remove(*labels)
            except KeyError:
                pass

    def on_scope_warning(self, warning: Any) -> None:
        self.warnings.labels(warning.kind).inc()

    def on_exhausted(self, run: Run, reason: str, observe: bool) -> None:
        ref = getattr(run.exhausted, "scope_ref", None)
        if ref is not None and not observe:
            self.exhaustions.labels(ref.kind, self.tenant(run.tenant)).inc()

    def on_late_spend(self, run: Run, cost: float) -> None:
        """A call's dollars after its run ended (a stream read after the block): not in the run's
        figure at its end; an open enclosing run of the same tenant has it in its own."""
        if any(outer.tenant == run.tenant and not outer.ended for outer in run.ancestors()):
            return
        if run.tenant and 0 < cost < float("inf"):
            self.cost.labels(self.tenant(run.tenant, cost)).inc(cost)

    def on_run_end(self, run: Run) -> None:
        cost = run.usage.cost_usd
        if any(outer.tenant == run.tenant for outer in run.ancestors()):
            return  # a nested run of the same tenant: its cost is in the enclosing run's too
        if run.tenant and 0 < cost < float("inf"):
            self.cost.labels(self.tenant(run.tenant, cost)).inc(cost)
