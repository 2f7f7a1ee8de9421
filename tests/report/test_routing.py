"""The routing evaluation (``budgetspan report --by step,model``) on synthetic traces whose
answers are known: success rates, cost per success, bootstrap intervals, the break-even."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from budgetspan.report.assemble import RunAssembler
from budgetspan.report.load import load_files
from budgetspan.report.otlp import parse_line
from budgetspan.report.routing import RouteStat, bootstrap_ci, break_even, delta_ci, evaluate, wilson
from budgetspan.report.routing_cli import evaluate_spans
from budgetspan.report.runs_detail import DetailCollector, RunDetail
from tests.report.cli import report
from tests.report.synthetic import T0, Call, SynthRun, line, random_runs, route_runs, run_spans, write


def two_routes() -> list[SynthRun]:
    """The issue's example: gpt-4o-mini at $0.0071 a run, 64 of 100 succeed; gpt-4o at $0.0095,
    95 of 100. Break-even for gpt-4o-mini: 95% x 0.0071 / 0.0095 = 71%."""
    runs = list(route_runs("support", "draft", "gpt-4o-mini", 100, 64, 0.0071, "a"))
    runs += route_runs("support", "draft", "gpt-4o", 100, 95, 0.0095, "b")
    return runs


def test_success_rates_costs_and_break_even_of_known_routes(tmp_path: Path) -> None:
    spans, errors = load_files([str(write(tmp_path / "t.jsonl", two_routes()))])
    assert errors == []
    routing = evaluate_spans(spans)
    mini, strong = sorted(routing.routes, key=lambda r: r.model != "gpt-4o-mini")
    assert (mini.model, mini.runs, mini.successes, mini.success_rate) == ("gpt-4o-mini", 100, 64, 0.64)
    assert (strong.model, strong.runs, strong.successes, strong.success_rate) == ("gpt-4o", 100, 95, 0.95)
    assert mini.cost_per_success == pytest.approx(0.0071 * 100 / 64)
    assert strong.cost_per_success == pytest.approx(0.0095 * 100 / 95)
    assert mini.cost_per_call == pytest.approx(0.0071) and mini.run_cost_per_run == pytest.approx(0.0071)
    (b,) = routing.break_evens
    assert b.cheaper == "gpt-4o-mini" and b.other == "gpt-4o"
    assert b.break_even_rate == pytest.approx(0.95 * 0.0071 / 0.0095)  # = 0.71
    assert b.winner == "gpt-4o"  # 0.0111 per success against 0.0100
    lo, hi = wilson(64, 100)
    assert b.measured_half_width == pytest.approx((hi - lo) / 2)
    assert b.verdict.startswith(
        "gpt-4o-mini is cheaper per success only while its success rate stays above 71%; measured 64% ± 9%."
    )
    assert "Cheaper per successful run as measured: gpt-4o" in b.verdict


def test_break_even_the_other_way_round_and_when_too_close() -> None:
    runs = list(route_runs("w", "s", "cheap", 200, 180, 0.001, "a")) + list(
        route_runs("w", "s", "dear", 200, 190, 0.01, "b")
    )
    routing = evaluate(_details(runs))
    (b,) = routing.break_evens
    assert b.cheaper == "cheap" and b.winner == "cheap"
    assert b.break_even_rate == pytest.approx(0.95 * 0.1)
    assert "too close" not in b.verdict
    # a break-even inside the cheap route's interval is said to be too close to call
    close = list(route_runs("w", "s", "cheap", 50, 36, 0.0071, "c")) + list(
        route_runs("w", "s", "dear", 50, 48, 0.0095, "d")
    )
    (c,) = evaluate(_details(close)).break_evens
    assert c.measured_rate == 0.72 and c.break_even_rate == pytest.approx(0.96 * 0.0071 / 0.0095)
    assert "too close to call" in c.verdict
    assert (
        break_even(c_route(close, "dear"), c_route(close, "cheap")).cheaper == "cheap"
    )  # order does not matter


def c_route(runs: list[SynthRun], model: str) -> RouteStat:
    return next(r for r in evaluate(_details(runs)).routes if r.model == model)


def _details(runs: list[SynthRun]) -> list[RunDetail]:
    """The runs as the report sees them, through the OTLP parser and the run assembler."""
    spans = [
        s
        for i, r in enumerate(runs)
        for s in parse_line(line(run_spans(r, i, T0 + i * 10**9)).encode(), None)
    ]
    details = DetailCollector(max_timelines=0)
    assembler = RunAssembler(details.add_runs, window=None, max_in_flight=None)
    assembler.add_all(spans)
    assembler.close()
    return details.finish()


def test_retries_fallbacks_and_the_first_model_as_the_route() -> None:
    """A cheap-then-strong chain counts for the cheap route (its first model), with both costs."""
    runs = [
        SynthRun("x1", "w", "success", [Call("draft", "mini", 0.001, retries=2), Call("draft", "big", 0.01, fallback_from="mini"), Call("review", "mini", 0.0005)]),
        SynthRun("x2", "w", "failure", [Call("draft", "mini", 0.001)]),
        SynthRun("x3", "w", "success", [Call("draft", "big", 0.01)]),
    ]  # fmt: skip
    routing = evaluate(_details(runs))
    by = {(r.step, r.model): r for r in routing.routes}
    assert set(by) == {("draft", "mini"), ("draft", "big"), ("review", "mini")}
    mini = by[("draft", "mini")]
    assert (mini.runs, mini.successes, mini.retries, mini.fallbacks, mini.model_calls) == (2, 1, 2, 1, 3)
    assert mini.step_cost_per_success == pytest.approx(0.012)
    assert mini.cost_per_success == pytest.approx(0.0125)  # the whole run's cost, the failed run's included
    assert mini.cost_per_call == pytest.approx(0.012 / 3)


def test_unpriced_calls_are_not_counted_as_free() -> None:
    runs = [
        SynthRun("u1", "w", "success", [Call("s", "local", None)]),
        SynthRun("u2", "w", "success", [Call("s", "local", 0.002)]),
    ]
    (route,) = evaluate(_details(runs)).routes
    assert route.unpriced_calls == 1 and route.cost_per_call == pytest.approx(0.002)


def test_bootstrap_interval_covers_the_true_value_in_at_least_90_percent_of_repetitions() -> None:
    p, mean_cost, n = 0.7, 0.01, 150
    truth = mean_cost * 1.3 / p
    covered = 0
    reps = 100
    for seed in range(reps):
        runs = random_runs(random.Random(seed), n, p, mean_cost)
        costs = [sum(c.cost or 0 for c in r.calls) for r in runs]
        ok = [1 if r.outcome == "success" else 0 for r in runs]
        ci = bootstrap_ci(costs, ok, seed=1000 + seed)
        assert ci is not None and ci[0] <= sum(costs) / sum(ok) <= ci[1]
        covered += ci[0] <= truth <= ci[1]
    assert covered / reps >= 0.90, covered


def test_normal_interval_of_large_routes_covers_the_true_value_too() -> None:
    p, mean_cost, n = 0.6, 0.02, 400
    truth = mean_cost * 1.3 / p
    covered = 0
    for seed in range(60):
        runs = random_runs(random.Random(seed), n, p, mean_cost)
        costs = [sum(c.cost or 0 for c in r.calls) for r in runs]
        ok = [1 if r.outcome == "success" else 0 for r in runs]
        ci = bootstrap_ci(costs, ok, max_bootstrap_n=100)  # n above it: the delta method
        assert ci is not None and ci == delta_ci(costs, ok)
        covered += ci[0] <= truth <= ci[1]
    assert covered / 60 >= 0.90, covered


def test_bootstrap_is_seeded_and_says_when_there_is_no_success() -> None:
    costs, ok = [1.0, 2.0, 3.0, 4.0] * 10, [1, 0, 1, 0] * 10
    assert bootstrap_ci(costs, ok, seed=5) == bootstrap_ci(costs, ok, seed=5)
    assert bootstrap_ci(costs, [0] * 40) is None
    lo, hi = bootstrap_ci([1.0, 1.0], [1, 0], reps=400) or (0, 0)
    assert lo == 1.0 and hi == float("inf")  # some resamples hold no success at all


def test_wilson_interval_is_sound_at_the_edges() -> None:
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] > 0.65
    assert wilson(0, 0) == (0.0, 1.0)


def test_outcomes_recorded_after_the_run_are_joined(tmp_path: Path) -> None:
    runs = list(route_runs("w", "s", "m", 4, 4, 0.01, "z"))
    late = [
        ("z00000", {"budgetspan.run.outcome": "failure", "budgetspan.run.rework": 1}),
        ("z00001", {"budgetspan.run.score": 0.5}),
    ]
    spans, _ = load_files([str(write(tmp_path / "t.jsonl", runs, late))])
    routing = evaluate_spans(spans)
    (route,) = routing.routes
    assert route.successes == 3 and route.runs_with_rework == 1 and route.mean_score == 0.5
    assert routing.late_outcomes == 2


def test_command_line_table_markdown_and_json(tmp_path: Path) -> None:
    path = str(write(tmp_path / "t.jsonl", two_routes()))
    code, out, err = report(path, "--by", "step,model")
    assert code == 0, err
    assert "Routing: cost per successful run by step and model" in out
    assert "Step draft: gpt-4o-mini is cheaper per success only while its success rate stays above 71%" in out
    assert "Time and cost by phase" in out  # the usual report comes first
    code, out, _ = report(path, "--by", "step,model", "--format", "markdown")
    assert code == 0 and "| draft | gpt-4o-mini | 100 |" in out
    code, out, _ = report(path, "--by", "step,model", "--format", "json")
    doc = json.loads(out)
    assert {r["model"] for r in doc["routes"]} == {"gpt-4o", "gpt-4o-mini"}
    assert doc["break_evens"][0]["break_even_rate"] == pytest.approx(0.71)
    code, _, err = report(path, "--by", "tool")
    assert code == 2 and "one of step,model, tenant, user" in err
