"""The JSON report, written piece by piece from the dataclasses (``render.json_chunks``), is the
document ``to_jsonable`` gives: the same fields, in the same order, non-finite numbers as null."""

from __future__ import annotations

import json
import math

from budgetspan.report.analysis import analyze
from budgetspan.report.otlp import parse_line
from budgetspan.report.render import json_chunks
from budgetspan.report.run_stats import PhaseStat
from budgetspan.report.textfmt import to_jsonable
from tests.report.test_hostile_input import a_run, line


def test_the_json_report_is_to_jsonable_of_the_analysis() -> None:
    spans = [s for rid in ("r1", "r2") for s in parse_line(line(*a_run(rid)))]
    analysis = analyze(spans)
    analysis.runs[0].phases["extra"] = PhaseStat(time_s=math.nan, cost_usd=math.inf, model_calls=2)
    analysis.runs[0].limits["max_cost_usd"] = 0.5
    text = "".join(json_chunks(analysis))
    expected = to_jsonable(analysis)
    assert json.loads(text) == expected
    assert text == json.dumps(expected, indent=2) + "\n"  # same bytes as the plain json writer
    assert expected["runs"][0]["phases"]["extra"] == {
        "time_s": None,
        "cost_usd": None,
        "model_calls": 2,
        "tool_calls": 0,
        "retrievals": 0,
    }
    assert list(expected["runs"][0])[-1] == "wall_s"
