"""Review 9: inputs on which the compiled report (``report.native``) and the pure one could part.

mypyc divides two small ints (under 2**62) as two doubles, where Python rounds the exact quotient
once: past 2**53 ns (104 days) the two can differ in the last bit, and so did the report's bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from budgetspan import attributes as A
from budgetspan.report import native
from tests.report.cli import report
from tests.report.test_hostile_input import line, span

SRC = Path(native.__file__).resolve().parent.parent.parent  # .../src


@pytest.fixture(scope="module")
def built() -> None:
    if native.compiled() is None:
        if os.environ.get("BUDGETSPAN_TEST_NATIVE") == "1":
            pytest.fail("the compiled report is not built (python -m budgetspan.report.native_build)")
        pytest.skip("the compiled report is not built (python -m budgetspan.report.native_build)")


def _at(d: dict[str, Any], start_ns: int, end_ns: int) -> dict[str, Any]:
    return {**d, "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(end_ns)}


def test_overlapping_phases_of_a_very_long_run_split_alike_both_ways(built: None, tmp_path: Path) -> None:
    """Three phases over the whole of a 2**60 ns run share it three ways: the same figure
    compiled and pure (``report`` compares the bytes)."""
    end = 2**60 + 12345
    base = {"budgetspan__run__id": "r1", "budgetspan__workflow": "wf"}
    phases = [
        _at(span(f"p{i}", f"phase ph{i}", 0, 0, "root", budgetspan__phase=f"ph{i}", **base), 0, end)
        for i in range(3)
    ]
    run = _at(
        span("root", "invoke_agent wf", 0, 0, gen_ai__operation__name=A.OP_INVOKE_AGENT, **base), 0, end
    )
    path = tmp_path / "long.jsonl"
    path.write_text(line(*phases, run) + "\n")
    for fmt in ("json", "table"):
        code, out, _ = report(str(path), "--format", fmt)
        assert code == 0 and "ph2" in out


def test_runs_finished_together_come_out_in_the_same_order_in_every_process(tmp_path: Path) -> None:
    """Six implicit runs of one trace, finished together a window after the trace's root: the same
    bytes whatever the process's string hashing (the runs were taken from a set: ties on their start
    came out in another order per process, so the compiled and pure commands could not be compared)."""
    calls = [
        span(f"c{i}", "chat m", 1, 2, "root", gen_ai__operation__name="chat", budgetspan__run__id=f"run{i}")
        for i in range(6)
    ]
    filler = [{**span(f"z{i}", "other", 0, 1), "traceId": f"other{i}"} for i in range(5)]
    path = tmp_path / "implicit.jsonl"
    path.write_text(line(*calls) + "\n" + line(span("root", "request", 0, 3)) + "\n" + line(*filler) + "\n")
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": seed}
        argv = [sys.executable, "-m", "budgetspan.cli", "report", str(path), "--format", "json"]
        run = subprocess.run([*argv, "--max-spans-in-flight", "10"], env=env, capture_output=True, check=True)
        outputs.add(run.stdout)
    assert len(outputs) == 1
