"""`budgetspan report --html` for 10,000 runs: the page's size, and its render time in a real
headless Chromium (Debian ``chromium``).

    .venv/bin/python bench/bench_html_report.py                 # 10,000 runs
    .venv/bin/python bench/bench_html_report.py --runs 1000 10000 50000

The runs are synthetic (``tests/report/synthetic.py``): a support workflow with a draft step on two
routes (a cheap model with retries, fallbacks and failures; a strong one), a review step and two
tools, 7 spans per run, as the demo's routing trial has. Measured per size:

- ``report``: ``budgetspan report FILE --by step,model --html DIR`` wall clock (one process);
- ``size``: ``DIR/index.html`` in bytes (timelines kept for the first 2,000 runs, the default);
- ``load``: from ``Page.navigate`` to the load event, and ``rendered``: the page's own
  ``performance.now()`` when its script has drawn the summary (median of 5 loads);
- ``#runs``: drawing the runs table (one page of 100), and ``#run``: one run's page with its
  timeline, each as the page's script measures it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.report import chromium  # noqa: E402
from tests.report.synthetic import Call, SynthRun, write  # noqa: E402


def runs(n: int, seed: int = 10) -> list[SynthRun]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cheap = i % 2 == 0
        calls = [
            Call("lookup", "check_order_status", None, op="execute_tool", phase="tool_execution", dur_s=0.1)
        ]
        ok = rng.random() < (0.82 if cheap else 0.96)
        if cheap:
            calls.append(Call("draft_reply", "gpt-4o-mini", 0.0003, retries=int(rng.random() < 0.3)))
            if rng.random() < 0.15:
                calls.append(Call("draft_reply", "gpt-4o", 0.002, fallback_from="gpt-4o-mini"))
        else:
            calls.append(Call("draft_reply", "gpt-4o", 0.002))
        calls.append(Call("review_draft", "gpt-4o-mini", 0.0001, phase="verification"))
        calls.append(Call("send", "send_reply", None, op="execute_tool", phase="final_response", dur_s=0.05))
        out.append(SynthRun(f"{i:032x}", "resolve_ticket", "success" if ok else "failure", calls,
                            phases=[("model_decision", "Preparing draft")]))  # fmt: skip
    return out


def measure(n: int, directory: Path, browser: chromium.Browser) -> dict[str, float]:
    traces = write(directory / f"runs-{n}.jsonl", runs(n))
    out = directory / f"html-{n}"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "report", str(traces), "--by", "step,model", "--html", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    report_s = time.perf_counter() - t0
    page = out / "index.html"
    loads, rendered = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        browser.open(page.resolve().as_uri())
        loads.append(time.perf_counter() - t0)
        rendered.append(browser.eval("window.budgetspanRenderedMs") / 1000)
    assert browser.errors() == [], browser.errors()
    browser.go("#runs")
    runs_page = browser.eval("window.budgetspanViewMs") / 1000
    browser.go(f"#run/{0:032x}")
    run_page = browser.eval("window.budgetspanViewMs") / 1000
    return {
        "runs": n,
        "report_s": report_s,
        "size_mb": page.stat().st_size / 1e6,
        "load_s": statistics.median(loads),
        "rendered_s": statistics.median(rendered),
        "runs_page_s": runs_page,
        "run_page_s": run_page,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[10_000])
    args = ap.parse_args()
    print(f"{'runs':>7}  {'report':>8}  {'size':>8}  {'load':>7}  {'rendered':>8}  {'#runs':>7}  {'#run':>7}")
    with tempfile.TemporaryDirectory() as tmp, chromium.Browser() as browser:
        for n in args.runs:
            m = measure(n, Path(tmp), browser)
            print(
                f"{n:>7,}  {m['report_s']:>7.2f}s  {m['size_mb']:>6.2f}MB  {m['load_s']:>6.2f}s  "
                f"{m['rendered_s']:>7.2f}s  {m['runs_page_s']:>6.3f}s  {m['run_page_s']:>6.3f}s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
