"""``budgetspan report --html DIR`` opened in a real headless Chromium (Debian ``chromium``,
driven over the DevTools protocol): no console error, no network request, every run of the demo
on the page, span text shown as text (never run as markup). Screenshots are written to
``tmp/artefacts/`` (``BUDGETSPAN_TEST_ARTEFACTS`` to change) for a human to look at."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from budgetspan.demo.data import TICKETS
from budgetspan.demo.routes import TRIAL_TICKETS
from budgetspan.report.html import embed_json
from tests.report import chromium
from tests.report.cli import report
from tests.report.synthetic import Call, SynthRun, write

pytestmark = pytest.mark.skipif(
    not chromium.available(), reason="needs Debian's chromium (scripts/test installs it)"
)
ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("BUDGETSPAN_TEST_ARTEFACTS") or ROOT / "tmp" / "artefacts")
HOSTILE = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def html_report(traces: Path, out_dir: Path, *extra: str) -> Path:
    code, _, err = report(str(traces), "--html", str(out_dir), *extra)
    assert code == 0, err
    return out_dir / "index.html"


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The demo with its routing trial, reported as HTML; and the run ids in its spans."""
    cwd = tmp_path_factory.mktemp("demo_html")
    traces = cwd / "spans.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OPENAI_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "demo", "--routes", "--traces", str(traces), "--latency-scale", "0.2"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Step draft_reply: gpt-4o-mini is cheaper per success only while" in proc.stdout
    from budgetspan.report.load import load_files

    spans, _ = load_files([str(traces)])
    run_ids = sorted({s.attrs["budgetspan.run.id"] for s in spans if s.operation == "invoke_agent"})
    return html_report(traces, cwd / "html"), run_ids


@pytest.fixture(scope="module")
def browser() -> chromium.Browser:
    with chromium.Browser() as b:
        yield b  # type: ignore[misc]


def test_demo_report_loads_offline_without_errors_and_shows_every_run(
    demo_page: tuple[Path, list[str]], browser: chromium.Browser
) -> None:
    page, run_ids = demo_page
    assert len(run_ids) == len(TICKETS) + 2 * TRIAL_TICKETS  # the tickets, and the trial's on both routes
    url = page.resolve().as_uri()
    browser.open(url)
    assert browser.eval("document.body.dataset.ready") == "1"
    text = browser.eval("document.body.innerText")
    assert "Workflow resolve_ticket" in text and "Workflow draft_routing" in text
    assert "Routing: cost per successful run by step and model" in text
    assert "gpt-4o-mini is cheaper per success only while its success rate stays above" in text
    assert browser.eval("document.querySelectorAll('svg rect').length") > 10  # the charts
    browser.screenshot(ARTEFACTS / "html-report-summary.png")
    browser.go("#runs")
    shown = browser.eval(
        "Array.from(document.querySelectorAll('a[href^=\"#run/\"]'), a => a.getAttribute('href').slice(5))"
    )
    assert sorted(shown) == run_ids
    browser.screenshot(ARTEFACTS / "html-report-runs.png")
    assert browser.errors() == []
    assert browser.requests() == [url]  # the page itself, and nothing else


def test_a_run_page_shows_its_timeline_steps_and_outcome(
    demo_page: tuple[Path, list[str]], browser: chromium.Browser
) -> None:
    page, _ = demo_page
    browser.open(page.resolve().as_uri())
    # the ticket that ran out of model calls: its explanation, its timeline by phase
    browser.go("#runs")
    stopped = browser.eval(
        "Array.from(document.querySelectorAll('tr')).find(tr => tr.innerText.includes('budget_exhausted'))"
        ".querySelector('a').getAttribute('href')"
    )
    browser.go(stopped)
    text = browser.eval("document.body.innerText")
    assert "Why it stopped: Stopped after 4 of 4 model calls" in text
    for phase in ("context_assembly", "tool_execution", "model_decision"):
        assert phase in text
    assert "Cost per step" in text and "draft_reply" in text and "Timeline by phase" in text
    browser.screenshot(ARTEFACTS / "html-report-stopped-run.png")
    # a trial run that fell back to the stronger model
    browser.go("#runs/draft_routing")
    hrefs = browser.eval(
        "Array.from(document.querySelectorAll('a[href^=\"#run/\"]'), a => a.getAttribute('href'))"
    )
    found = False
    for href in hrefs:
        browser.go(href)
        if "fallback from gpt-4o-mini" in browser.eval("document.body.innerText"):
            found = True
            browser.screenshot(ARTEFACTS / "html-report-fallback-run.png")
            break
    assert found, "no run of the trial shows its fallback"
    assert browser.errors() == []


def test_span_text_is_shown_as_text_never_run(tmp_path: Path, browser: chromium.Browser) -> None:
    runs = [
        SynthRun(
            "evil-run", HOSTILE, "budget_exhausted",
            [Call(HOSTILE, HOSTILE, 0.01, name=HOSTILE), Call("s", "t", None, op="execute_tool", name=HOSTILE, error=True)],
            explanation=HOSTILE, phases=[("verification", HOSTILE)], rework={HOSTILE: 1},
        )
    ]  # fmt: skip
    page = html_report(write(tmp_path / "evil.jsonl", runs), tmp_path / "html")
    raw = page.read_text()
    assert "</script><script>window.pwned" not in raw and "<img src=x" not in raw
    url = page.resolve().as_uri()
    browser.open(url)
    browser.go("#run/evil-run")
    assert browser.eval("typeof window.pwned") == "undefined"
    assert (
        browser.eval("document.querySelectorAll('img, script:not([id]):not([src])').length") <= 1
    )  # our one script
    assert HOSTILE in browser.eval("document.body.innerText")  # shown, as text
    browser.go("")
    assert browser.eval("typeof window.pwned") == "undefined"
    assert browser.errors() == [] and browser.requests() == [url]


def test_captured_content_is_shown_where_captured_only(tmp_path: Path, browser: chromium.Browser) -> None:
    captured = {
        "gen_ai.input.messages": '[{"role": "user", "content": "Where is my parcel? ' + HOSTILE + '"}]',
        "gen_ai.output.messages": '[{"role": "assistant", "content": "It ships today."}]',
    }
    runs = [
        SynthRun("with-content", "w", "success", [Call("draft", "gpt-4o", 0.01, extra=captured)]),
        SynthRun("no-content", "w", "success", [Call("draft", "gpt-4o", 0.01)]),
    ]
    page = html_report(write(tmp_path / "content.jsonl", runs), tmp_path / "html")
    browser.open(page.resolve().as_uri())
    browser.go("#run/with-content")
    assert browser.eval("document.querySelectorAll('details').length") == 1
    browser.eval("document.querySelector('details').open = true")
    text = browser.eval("document.body.innerText")
    assert "Where is my parcel?" in text and "It ships today." in text and HOSTILE in text
    assert browser.eval("typeof window.pwned") == "undefined"
    browser.go("#run/no-content")
    assert browser.eval("document.querySelectorAll('details').length") == 0
    assert browser.errors() == []


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = embed_json({"a": "</script><!-- \u2028 & >"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
