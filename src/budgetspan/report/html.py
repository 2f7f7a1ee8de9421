"""``budgetspan report --html DIR``: one self-contained, offline HTML file (``DIR/index.html``).

No external asset: the CSS, the script and the data are inline, the charts are SVG drawn by the
script, and a Content-Security-Policy forbids the page any network request. Span text is never
written as markup: the data travels as JSON in a ``<script type="application/json">`` block (with
``<``, ``>``, ``&`` and the JavaScript line separators escaped, so no span text can close the
block), and the script puts it on the page with ``textContent`` only.

Size: strings (workflows, steps, models, span names) are sent once, in a table, and runs refer to
them by index; timelines are kept for the first ``--html-max-timelines`` runs (2,000 by default),
so 10,000 runs stay well under 5 MB. The script renders one page of the runs table at a time.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any

from budgetspan.attributes import VERSION
from budgetspan.report.analysis import Analysis
from budgetspan.report.routing import Routing
from budgetspan.report.runs_detail import RunDetail

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class Strings:
    """A string table: each distinct string once, referred to by its index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.values: list[str] = []

    def __call__(self, s: str | None) -> int:
        if s is None:
            return -1
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.values)
            self.values.append(s)
        return i


def _r(x: float | None, digits: int = 6) -> float | None:
    """A compact number: finite, rounded (``digits`` significant for costs)."""
    if x is None or not math.isfinite(x):
        return None
    if x == 0:
        return 0
    return float(f"{x:.{digits}g}")


def _ms(x: float) -> float:
    return round(x, 1)


def _workflows(a: Analysis, runs: Sequence[RunDetail]) -> list[dict[str, Any]]:
    """Per workflow: outcomes and cost per success from the runs (outcomes recorded after a run
    ended included), phases and retries from the analysis."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    costs: dict[str, float] = defaultdict(float)
    for d in runs:
        outcomes[d.workflow][d.outcome] += 1
        costs[d.workflow] += d.cost
    per_success = {wf: costs[wf] / o["success"] if o["success"] else None for wf, o in outcomes.items()}
    return [
        {
            "name": wf.workflow,
            "runs": wf.runs,
            "outcomes": dict(outcomes[wf.workflow]) or wf.outcomes,
            "cost": _r(wf.total_cost_usd),
            "time_s": _r(wf.total_time_s, 4),
            "cost_per_success": _r(per_success.get(wf.workflow, wf.cost_per_success)),
            "retries": wf.retries,
            "phases": [
                [p.phase, _r(p.time_s, 4), _r(p.cost_usd), p.calls, _r(p.p95_s, 4)] for p in wf.phases
            ],
        }
        for wf in a.workflows
    ]


def _routing(routing: Routing) -> dict[str, Any]:
    routes = [
        [
            r.workflow, r.step, r.model, r.runs, _r(r.success_rate, 4), _r(r.success_ci[0], 4),
            _r(r.success_ci[1], 4), _r(r.retries_per_run, 4), r.fallbacks, _r(r.rework_per_run, 4),
            _r(r.cost_per_call), _r(r.cost_per_success),
            _r(r.cost_per_success_ci[0]) if r.cost_per_success_ci else None,
            _r(r.cost_per_success_ci[1]) if r.cost_per_success_ci else None,
            _r(r.p50_s, 4), _r(r.p95_s, 4), _r(r.mean_score, 4),
        ]
        for r in routing.routes
    ]  # fmt: skip
    verdicts = [[b.workflow, b.step, b.verdict] for b in routing.break_evens]
    return {"routes": routes, "verdicts": verdicts}


def _run(d: RunDetail, s: Strings, t0: int) -> list[Any]:
    steps = [
        [s(step), s(u.model), _r(u.cost), u.calls, u.retries, u.fallbacks] for step, u in d.steps.items()
    ]
    timeline = None
    if d.timeline is not None:
        timeline = [
            [
                s(i.kind), s(i.name), s(i.phase), s(i.step), _ms(i.start_ms), _ms(i.dur_ms), _r(i.cost),
                1 if i.error else 0, s(i.model), i.retries, s(i.fallback), s(i.detail),
                *((i.input, i.output) if i.input or i.output else ()),
            ]
            for i in d.timeline
        ]  # fmt: skip
    return [
        d.run_id, s(d.workflow), s(d.outcome), _ms((d.start_ns - t0) / 1e6), _r(d.wall_s, 4), _r(d.cost),
        _r(d.score, 4), d.rework, s(", ".join(d.rework_kinds)) if d.rework_kinds else -1,
        s(d.reason), d.explanation, s(d.profile), 1 if d.late_outcome else 0, steps, timeline,
    ]  # fmt: skip


def build_data(a: Analysis, routing: Routing, runs: Sequence[RunDetail], dropped: int = 0) -> dict[str, Any]:
    strings = Strings()
    t0 = min((d.start_ns for d in runs), default=0)
    return {
        "version": VERSION,
        "start_ns": str(t0),
        "spans": a.spans,
        "workflows": _workflows(a, runs),
        "routing": _routing(routing),
        "runs": [_run(d, strings, t0) for d in runs],
        "dropped_runs": dropped,
        "strings": strings.values,
    }


def embed_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element whatever strings it carries."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for raw, escaped in _ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def _asset(name: str) -> str:
    return resources.files("budgetspan.report").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(data: dict[str, Any], title: str = "budgetspan report") -> str:
    css, js = _asset("report.css"), _asset("report.js")
    if "</" in css or "</script" in js.lower():
        raise ValueError("report assets must not contain '</'")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n"
        '<header><h1>budgetspan report</h1><nav><a href="#">Summary</a> · <a href="#runs">Runs</a></nav></header>\n'
        '<main id="app"><p>Loading…</p><noscript>This report draws its tables and charts with '
        "JavaScript.</noscript></main>\n"
        f'<script id="report-data" type="application/json">{embed_json(data)}</script>\n'
        f"<script>{js}</script>\n</body>\n</html>\n"
    )


def write_html(
    directory: str, a: Analysis, routing: Routing, runs: Sequence[RunDetail], *, dropped: int = 0
) -> str:
    """Write ``directory/index.html``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "index.html")
    page = render_page(build_data(a, routing, runs, dropped))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path
