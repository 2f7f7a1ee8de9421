"""``BUDGETSPAN_METRICS_TENANTS=top:N`` under a pre-forking server (``PROMETHEUS_MULTIPROC_DIR``,
review 7): prometheus_client cannot remove a series there, so a tenant that left the top N kept
its series and a new one was made for the next: 61 series after 30 days of new big spenders with
``top:2``. Run in a worker process of its own (the multiprocess mode is chosen at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, warnings
warnings.simplefilter("error")  # prometheus_client's "removal not implemented" is a failure here
import budgetspan
from budgetspan.accounting.ledger import CallKind, Spend
from budgetspan.processors.metrics_endpoint import exposition_registry, get_metrics

get_metrics()
spent = 0.0
for day in range(30):  # each day, new tenants spend more than any before
    for t in range(3):
        with budgetspan.run("chat", tenant=f"t{day}-{t}") as run:
            run.commit(run.reserve(CallKind.MODEL), Spend(cost_usd=10.0 * (day + 1)))
        spent += 10.0 * (day + 1)
series = {
    s.labels["tenant"]: s.value
    for m in exposition_registry().collect() if m.name == "budgetspan_tenant_cost_usd"
    for s in m.samples if s.name.endswith("_total")
}
print(json.dumps({"series": series, "spent": spent}))
"""


def test_top_n_tenant_series_stay_bounded_in_multiprocess_mode(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "BUDGETSPAN_METRICS_TENANTS": "top:2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    done = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    series = got["series"]
    assert len(series) <= 3, sorted(series)  # two tenants and other (was 61)
    assert "other" in series
    assert abs(sum(series.values()) - got["spent"]) < 1e-6  # every dollar in one series
