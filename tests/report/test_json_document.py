"""The JSON report, written piece by piece from the dataclasses (``render.json_chunks``), is the
document ``to_jsonable`` gives: the same fields, in the same order, non-finite numbers as null."""

from __future__ import annotations

import json
import math

from budgetspan.report.analysis import analyze
from budgetspan.report.jsondoc import BATCH
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


def test_runs_in_several_batches_and_a_batch_orjson_refuses_are_the_same_document() -> None:
    """Runs go ``jsondoc.BATCH`` to an orjson call; a batch orjson refuses (a lone surrogate, an
    integer past 64 bits) is written run by run, as the json module writes it."""
    spans = [s for k in range(2 * BATCH + 3) for s in parse_line(line(*a_run(f"r{k}")))]
    analysis = analyze(spans)
    analysis.runs[1].profile = "lone \ud800 surrogate"
    analysis.runs[BATCH + 2].usage["huge"] = 2.0**70
    analysis.runs[BATCH + 3].start_ns = 2**70
    text = "".join(json_chunks(analysis))
    assert text == json.dumps(to_jsonable(analysis), indent=2) + "\n"
