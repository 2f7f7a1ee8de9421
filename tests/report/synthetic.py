"""Synthetic trace files with known answers, in OTLP JSON lines as budgetspan writes them: runs
whose steps, models, costs, retries and outcomes are chosen by the test (and by the HTML
benchmark, for 10,000 runs)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetspan import attributes as A

T0 = 1_760_000_000_000_000_000  # ns


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        v: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        v = {"intValue": str(value)}
    elif isinstance(value, float):
        v = {"doubleValue": value}
    elif isinstance(value, (list, tuple)):
        v = {"arrayValue": {"values": [{"stringValue": x} for x in value]}}
    else:
        v = {"stringValue": str(value)}
    return {"key": key, "value": v}


@dataclass
class Call:
    step: str
    model: str
    cost: float | None
    retries: int = 0
    fallback_from: str | None = None
    phase: str = "model_decision"
    dur_s: float = 0.2
    op: str = A.OP_CHAT
    name: str | None = None  # span name (default: "chat MODEL")
    error: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more span attributes


@dataclass
class SynthRun:
    run_id: str
    workflow: str
    outcome: str
    calls: list[Call]
    score: float | None = None
    rework: dict[str, int] = field(default_factory=dict)
    explanation: str | None = None
    phases: list[tuple[str, str]] = field(default_factory=list)  # (phase, label) blocks


def _span(trace: str, sid: str, parent: str | None, name: str, start: int, end: int, attrs: dict[str, Any],
          error: bool = False) -> dict[str, Any]:  # fmt: skip
    s: dict[str, Any] = {
        "traceId": trace,
        "spanId": sid,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": [attr(k, v) for k, v in attrs.items()],
        "status": {"code": 2} if error else {},
    }
    if parent:
        s["parentSpanId"] = parent
    return s


def run_spans(r: SynthRun, index: int, start: int) -> list[dict[str, Any]]:
    trace = f"{index + 1:032x}"
    root = f"{(index + 1) * 1000:016x}"
    spans, t = [], start
    base = {A.RUN_ID: r.run_id, A.WORKFLOW: r.workflow}
    for j, (phase, label) in enumerate(r.phases):
        sid = f"{(index + 1) * 1000 + 500 + j:016x}"
        spans.append(
            _span(
                trace,
                sid,
                root,
                f"phase {phase}",
                t,
                t + 1000,
                {**base, A.PHASE: phase, A.PHASE_LABEL: label},
            )
        )
    for j, c in enumerate(r.calls):
        end = t + int(c.dur_s * 1e9)
        attrs = {**base, A.GEN_AI_OPERATION_NAME: c.op, A.PHASE: c.phase, A.STEP: c.step}
        if c.op in A.MODEL_OPERATIONS:
            attrs[A.GEN_AI_REQUEST_MODEL] = c.model
            attrs[A.GEN_AI_PROVIDER_NAME] = "openai"
            if c.cost is None:
                attrs[A.COST_UNPRICED] = True
            else:
                attrs[A.GEN_AI_USAGE_COST] = c.cost
        else:
            attrs[A.GEN_AI_TOOL_NAME] = c.name or c.model
        attrs.update(c.extra)
        if c.retries:
            attrs[A.RETRIES] = c.retries
        if c.fallback_from:
            attrs[A.FALLBACK_FROM] = c.fallback_from
            attrs[A.FALLBACK_REASON] = "rejected"
        name = c.name or f"{c.op} {c.model}"
        spans.append(_span(trace, f"{(index + 1) * 1000 + j + 1:016x}", root, name, t, end, attrs, c.error))
        t = end
    run_attrs: dict[str, Any] = {
        **base,
        A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
        A.RUN_OUTCOME: r.outcome,
        A.USAGE_PREFIX + "cost_usd": sum(c.cost or 0.0 for c in r.calls),
    }
    if r.score is not None:
        run_attrs[A.RUN_SCORE] = r.score
    if r.rework:
        run_attrs[A.RUN_REWORK] = sum(r.rework.values())
        run_attrs[A.RUN_REWORK_KINDS] = [f"{k}={n}" for k, n in r.rework.items()]
    if r.explanation:
        run_attrs[A.EXHAUSTED_REASON] = "max_cost_usd"
        run_attrs[A.EXHAUSTED_EXPLANATION] = r.explanation
    spans.append(_span(trace, root, None, f"invoke_agent {r.workflow}", start, t + 1000, run_attrs))
    return spans


def outcome_span(run_id: str, index: int, at: int, **attrs: Any) -> dict[str, Any]:
    """A ``budgetspan.record_outcome`` span, written after the run ended."""
    return _span(f"{index + 10**6:032x}", f"{index + 10**6:016x}", None, "record_outcome run", at, at + 1000,
                 {A.OUTCOME_RUN_ID: run_id, **attrs})  # fmt: skip


def line(spans: Sequence[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": []},
                    "scopeSpans": [{"scope": {"name": "budgetspan"}, "spans": list(spans)}],
                }
            ]
        }
    )


def write(path: Path, runs: Sequence[SynthRun], late: Sequence[tuple[str, dict[str, Any]]] = ()) -> Path:
    """One line per run (its spans), then one per late outcome."""
    with path.open("w") as f:
        for i, r in enumerate(runs):
            f.write(line(run_spans(r, i, T0 + i * 10**9)) + "\n")
        for j, (run_id, attrs) in enumerate(late):
            f.write(line([outcome_span(run_id, j, T0 + (len(runs) + j) * 10**9, **attrs)]) + "\n")
    return path


def route_runs(
    workflow: str, step: str, model: str, n: int, successes: int, cost: float, prefix: str
) -> Iterator[SynthRun]:
    """``n`` runs on one route, exactly ``successes`` of them successful, each costing ``cost``."""
    for i in range(n):
        yield SynthRun(
            f"{prefix}{i:05d}", workflow, "success" if i < successes else "failure", [Call(step, model, cost)]
        )


def random_runs(rng: random.Random, n: int, p: float, mean_cost: float, model: str = "m") -> list[SynthRun]:
    """Runs with success probability ``p`` and cost uniform in [0.5, 1.5] x ``mean_cost``, plus a
    retry (doubling the call's cost) with probability 0.3. True cost per success:
    mean_cost x 1.3 / p."""
    out = []
    for i in range(n):
        retry = rng.random() < 0.3
        cost = mean_cost * rng.uniform(0.5, 1.5) * (2 if retry else 1)
        outcome = "success" if rng.random() < p else "failure"
        out.append(SynthRun(f"r{i:06d}", "wf", outcome, [Call("s", model, cost, retries=int(retry))]))
    return out
