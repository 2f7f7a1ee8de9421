"""Plan versus actual: per-run estimates from a TOML file, compared with what the runs did."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from budgetspan.report.numbers import number, percentile

if TYPE_CHECKING:
    from budgetspan.report.analysis import RunStat

PLAN_ITEMS = (
    "model_calls",
    "retrievals",
    "tool_calls",
    "verification_steps",
    "approval_waits",
    "cost_usd",
    "duration_s",
)
MISS_THRESHOLD = 0.25  # a plan item off by more than this share is a miss


class PlanError(ValueError):
    """A plan file that cannot be used; the message names the file and the accepted form."""


@dataclass
class PlanRow:
    workflow: str
    item: str
    estimate: float
    actual: float  # mean per run
    actual_p95: float
    miss: float  # (actual - estimate) / estimate; inf when the estimate was 0
    severity: float  # |actual - estimate| / max(actual, estimate): 0 = exact, 1 = totally off
    is_miss: bool


PLAN_FORM = (
    "a TOML file with one [workflows.NAME] table per workflow, giving per-run estimates for any of: "
    + ", ".join(PLAN_ITEMS)
)


def load_plan(path: str) -> dict[str, dict[str, float]]:
    """Read a plan file. Raises PlanError naming the file, the key and the accepted form."""
    from budgetspan.accounting.toml_file import TomlFileError, read_toml  # only with --plan

    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise PlanError(f"plan {path!r}: {e}; expected {PLAN_FORM}") from None
    if set(data) - {"workflows"} or not isinstance(data.get("workflows"), dict):
        raise PlanError(f"plan {path!r}: expected {PLAN_FORM}")
    plan: dict[str, dict[str, float]] = {}
    for wf, table in data["workflows"].items():
        if not isinstance(table, dict):
            raise PlanError(f"plan {path!r} [workflows.{wf}]: not a table; expected {PLAN_FORM}")
        items: dict[str, float] = {}
        for key, value in table.items():
            if key not in PLAN_ITEMS:
                raise PlanError(f"plan {path!r} [workflows.{wf}]: unknown item {key!r}; expected {PLAN_FORM}")
            num = number(value)
            if num is None or num < 0:
                raise PlanError(f"plan {path!r} [workflows.{wf}]: {key} = {value!r} is not a number >= 0")
            items[key] = num
        plan[str(wf)] = items
    return plan


def compare_plan(
    plan: Mapping[str, Mapping[str, float]], runs: Sequence[RunStat]
) -> tuple[list[PlanRow], list[str]]:
    """Estimate versus actual mean per run, biggest misses first."""
    rows: list[PlanRow] = []
    notes: list[str] = []
    for wf, items in plan.items():
        wf_runs = [r for r in runs if r.workflow == wf]
        if not wf_runs:
            notes.append(f"plan workflow {wf!r}: no runs in the spans")
            continue
        for item, estimate in items.items():
            values = [r.plan_actual(item) for r in wf_runs]
            actual = sum(values) / len(values)
            top = max(actual, estimate)
            severity = abs(actual - estimate) / top if top > 0 else 0.0
            miss = (actual - estimate) / estimate if estimate else (math.inf if actual else 0.0)
            rows.append(
                PlanRow(
                    wf,
                    item,
                    estimate,
                    actual,
                    percentile(values, 95),
                    miss,
                    severity,
                    severity > MISS_THRESHOLD,
                )
            )
    rows.sort(key=lambda r: -r.severity)
    return rows, notes
