"""``budgetspan report`` keeps the cyclic collector off until its analysis is freed.

Span records and run figures hold no reference cycles, so the report turns the collector off.
Turned back on while the analysis was still held (its output), the collector's first pass
scanned every object the analysis holds: at 1M spans 56 passes, 1.4 s of 25 s CPU time.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

from tests.report.cli import report
from tests.report.test_streaming import run_spans, write_lines


def _write(path: Path, runs: int) -> None:
    write_lines(path, [run_spans(k) for k in range(1, runs + 1)])


def test_no_collection_scans_the_analysis_and_the_collector_is_back_on_after(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    _write(path, 1000)  # the analysis holds ~10k tracked objects (run figures, phases, lists)
    scanned: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":  # the objects this pass is about to scan
            scanned.append(sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1)))

    assert gc.isenabled()
    gc.collect()
    gc.callbacks.append(seen)
    try:
        code, out, _ = report(str(path), "--format", "json")
    finally:
        gc.callbacks.remove(seen)
    assert code == 0 and len(json.loads(out)["runs"]) == 1000
    # At most one small pass, once the analysis is freed (before: a first pass over ~10k objects).
    assert all(n < 2_000 for n in scanned), scanned
    assert gc.isenabled()
