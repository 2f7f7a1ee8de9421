"""`budgetspan demo` end to end: a real subprocess, the real openai SDK, the loopback model server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from budgetspan import attributes as A
from budgetspan.demo.data import TICKETS
from budgetspan.demo.server import Latency, ModelServer, count_tokens
from budgetspan.report.load import load_files
from tests.conftest import PHASES
from tests.demo.cli import demo_env, run_demo

TICKET_LINE = re.compile(r"^(T-\d{4})  (interactive|background)")
OUTCOME_LINE = re.compile(r"^  -> (\w+) in ")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the demo once, as a user would (full latency), from an empty directory."""
    cwd = tmp_path_factory.mktemp("demo")
    proc = run_demo(cwd, timeout=120)
    traces = cwd / "budgetspan-demo.jsonl"  # the default file, in the current directory
    return {"proc": proc, "out": proc.stdout, "traces": traces}


def _sections(out: str) -> dict[str, list[str]]:
    """Lines printed under each ticket header, up to the next header or the tables."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        m = TICKET_LINE.match(line)
        if m:
            current = sections.setdefault(m.group(1), [])
        elif line.startswith("Per run"):
            current = None
        elif current is not None and line.strip():
            current.append(line)
    return sections


def _outcomes(out: str) -> dict[str, str]:
    result = {}
    for ticket, lines in _sections(out).items():
        outcome = [OUTCOME_LINE.match(ln) for ln in lines]
        result[ticket] = next(m.group(1) for m in outcome if m)
    return result


def test_demo_runs_every_ticket_to_its_outcome(demo: dict[str, Any]) -> None:
    assert demo["proc"].returncode == 0, demo["proc"].stderr
    assert _outcomes(demo["out"]) == {
        "T-1001": "success",
        "T-1002": "success",
        "T-1003": "escalated",
        "T-1004": "budget_exhausted",
        "T-1005": "success",
        "T-1006": "failure",
        "T-1007": "success",
        "T-1008": "budget_exhausted",
        "T-1009": "success",
    }
    assert {t.profile for t in TICKETS} == {"interactive", "background"}


def test_exhausted_ticket_ends_with_partial_result_and_explanation(demo: dict[str, Any]) -> None:
    lines = _sections(demo["out"])["T-1004"]
    text = "\n".join(lines)
    assert "budget max_model_calls reached" in text
    assert (
        "Stopped after 3 of 4 model calls; 1 model call kept for the final answer; 6 of 6 tools finished;"
        in text
    )
    assert "Partial result kept: answers for 3 of 5 orders (A-2001, A-2002, A-2003)" in text
    # the exhausted ticket still writes its final answer, from the model call kept for it
    assert "Writing the answer from what is known" in text
    assert "Final answer written from the budget kept for it, and sent." in text


def test_a_ticket_stopped_as_a_loop_says_which_call_repeated(demo: dict[str, Any]) -> None:
    text = "\n".join(_sections(demo["out"])["T-1008"])
    assert "budget no_progress reached" in text
    assert "Stopped: track_parcel called 3 times with the same arguments and the same result;" in text
    assert "Final answer written from the budget kept for it, and sent." in text


def test_a_ticket_extended_after_a_supervisors_approval(demo: dict[str, Any]) -> None:
    text = "\n".join(_sections(demo["out"])["T-1009"])
    assert "-> success in" in text
    assert "note: Extended once by 1 model call after a supervisor's approval." in text


def test_progress_milestones_are_readable(demo: dict[str, Any]) -> None:
    sections = _sections(demo["out"])
    milestones = [
        re.sub(r"^\s+\d+\.\d\d s  ", "", ln)
        for ln in sections["T-1001"]
        if re.match(r"^\s+\d+\.\d\d s  ", ln)
    ]
    assert milestones == [
        "Searching policy",
        "Checking order status",
        "Checking customer history",
        "Preparing draft",
        "Checking the draft",
        "Waiting for approval",
        "Sending the reply",
    ]
    everything = "\n".join(ln for lines in sections.values() for ln in lines)
    assert not re.search(r"(?i)calling model|chat gpt|execute_tool|invoke_agent", everything)


def test_tables_per_run_and_per_phase_and_cost_per_success(demo: dict[str, Any]) -> None:
    out = demo["out"]
    runs = out.split("Per run", 1)[1].split("Per phase", 1)[0]
    header = next(ln for ln in runs.splitlines() if ln.startswith("run "))
    for column in ("outcome", "time", "cost", "model", "tools", "budget used"):
        assert column in header
    rows = {ln.split()[0]: ln for ln in runs.splitlines() if ln.startswith("T-")}
    assert set(rows) == {t.id for t in TICKETS}
    assert "100% of max_model_calls" in rows["T-1004"]  # the final answer used the reserve
    assert "budget_exhausted" in rows["T-1004"]
    phases = out.split("Per phase", 1)[1]
    for phase in (*PHASES, "total"):
        assert re.search(rf"^{phase}\s", phases, re.M), phase
    m = re.search(
        r"Cost per successful ticket: \$(\d+\.\d+)  \(\$(\d+\.\d+) over 9 tickets, 5 succeeded", out
    )
    assert m, out
    assert float(m.group(1)) == pytest.approx(float(m.group(2)) / 5, abs=1e-4)
    assert "Next: budgetspan report budgetspan-demo.jsonl" in out


def test_spans_file_holds_priced_model_calls_and_no_refused_one(demo: dict[str, Any]) -> None:
    spans, errors = load_files([str(demo["traces"])])
    assert errors == []
    runs = {s.attrs[A.RUN_ID]: s for s in spans if s.operation == A.OP_INVOKE_AGENT}
    assert len(runs) == len(TICKETS)
    chats: dict[str, list[Any]] = defaultdict(list)
    for s in spans:
        if s.operation == A.OP_CHAT:
            chats[s.attrs[A.RUN_ID]].append(s)
    assert chats, "no model spans: is the openai instrumentation active?"
    for run_id, calls in chats.items():
        for c in calls:
            assert c.attrs[A.GEN_AI_REQUEST_MODEL] in ("gpt-4o", "gpt-4o-mini")
            assert c.attrs[A.GEN_AI_RESPONSE_MODEL].startswith(c.attrs[A.GEN_AI_REQUEST_MODEL] + "-2024-")
            assert c.attrs[A.GEN_AI_USAGE_INPUT_TOKENS] > 100
            assert c.attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] > 5
            assert c.attrs[A.GEN_AI_USAGE_COST] > 0
        # the ledger (run span) and the spans agree on calls and dollars
        run = runs[run_id]
        assert run.attrs[A.USAGE_PREFIX + "model_calls"] == len(calls)
        assert run.attrs[A.USAGE_PREFIX + "cost_usd"] == pytest.approx(
            sum(c.attrs[A.GEN_AI_USAGE_COST] for c in calls), rel=1e-9
        )
    exhausted = {
        r.attrs[A.EXHAUSTED_REASON]: r for r in runs.values() if r.attrs[A.RUN_OUTCOME] == "budget_exhausted"
    }
    assert set(exhausted) == {"max_model_calls", "no_progress"}
    run = exhausted["max_model_calls"]
    # 3 sections, then the 4th was refused (it would have eaten into the reserve): no span, no
    # request; the final answer used the model call kept for it
    assert run.attrs[A.EXHAUSTED_EXPLANATION].startswith(
        "Stopped after 4 of 4 model calls; 1 model call kept for the final answer"
    )
    phases = [c.attrs[A.PHASE] for c in sorted(chats[run.attrs[A.RUN_ID]], key=lambda c: c.start_ns)]
    assert phases == ["model_decision"] * 3 + ["final_response"]
    loop = exhausted["no_progress"]
    assert "track_parcel called 3 times" in loop.attrs[A.EXHAUSTED_EXPLANATION]
    streamed = [c for calls in chats.values() for c in calls if c.attrs.get(A.STREAM)]
    assert streamed and all(c.attrs[A.TIME_TO_FIRST_TOKEN_S] > 0 for c in streamed)


def test_unknown_ticket_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--ticket", "T-0000")
    assert proc.returncode == 2
    assert "no such ticket" in proc.stderr and "T-1001" in proc.stderr


# --- the loopback model server on its own -------------------------------------------------------


def test_server_speaks_openai_plain_and_streamed_with_consistent_usage() -> None:
    messages = [
        {"role": "system", "content": "You write replies."},
        {
            "role": "user",
            "content": "Customer: Dana Ruiz (C-101)\nRequest: the delivery.\nFacts:\n- order A-1 shipped",
        },
    ]
    with ModelServer(Latency(scale=0.01)) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        text = plain.choices[0].message.content or ""
        assert text.startswith("Hi Dana,") and "Order A-1 shipped." in text
        assert plain.model == "gpt-4o-mini-2024-07-18"
        assert plain.usage is not None
        assert plain.usage.completion_tokens == count_tokens(text)
        assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(parts) == text  # deterministic
        assert usage is not None and usage.model_dump() == plain.usage.model_dump()

        cut = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5)  # type: ignore[arg-type]
        assert cut.choices[0].finish_reason == "length"
        assert cut.usage is not None and cut.usage.completion_tokens == 5
        assert server.requests == 3


def test_server_reviews_return_a_json_verdict() -> None:
    with ModelServer(Latency(scale=0.01)) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)

        def review(draft: str) -> dict[str, Any]:
            r = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "You review a support reply."},
                    {
                        "role": "user",
                        "content": f"- order A-2001 is delivered\n- order A-2002 is lost\n\nDraft:\n{draft}",
                    },
                ],
            )
            return json.loads(r.choices[0].message.content or "")  # type: ignore[no-any-return]

        assert review("A-2001 and A-2002 are covered")["verdict"] == "approve"
        verdict = review("only A-2001")
        assert verdict["verdict"] == "revise" and "A-2002" in verdict["issues"][0]


def test_with_an_api_key_the_demo_uses_the_configured_provider(tmp_path: Path) -> None:
    """The real-provider path (OPENAI_API_KEY set), pointed at a loopback server, not the network."""
    with ModelServer(Latency(scale=0.05)) as server:
        env = demo_env()
        env["OPENAI_API_KEY"] = "sk-test-not-a-real-key"
        env["OPENAI_BASE_URL"] = server.base_url
        proc = run_demo(tmp_path, "--ticket", "T-1001", "--traces", "t.jsonl", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"Model: a real provider at {server.base_url}" in proc.stdout
        assert _outcomes(proc.stdout) == {"T-1001": "success"}
        assert server.requests == 2  # the draft and the review went to the configured provider


def test_user_budgets_replace_the_bundled_ones(tmp_path: Path) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(
        "[profiles.interactive]\nmax_model_calls = 1\n\n[profiles.background]\nmax_tool_calls = 20\n"
    )
    env = demo_env()
    env["BUDGETSPAN_CONFIG"] = str(config)
    tickets = ("--ticket", "T-1001", "--ticket", "T-1005")
    proc = run_demo(tmp_path, *tickets, "--latency-scale", "0.1", "--traces", "t.jsonl", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"Budgets ({config})" in proc.stdout
    assert _outcomes(proc.stdout) == {"T-1001": "budget_exhausted", "T-1005": "success"}
    assert "Stopped after 1 of 1 model calls" in proc.stdout
    assert "Partial result kept: the last draft" in proc.stdout


def test_without_openai_the_demo_stops_at_once_with_the_install_command(tmp_path: Path) -> None:
    """A plain ``pip install budgetspan`` has no openai: exit 2, the exact command, no trace file."""
    code = (
        "import sys; sys.modules['openai'] = None; from budgetspan.cli import main; sys.exit(main(['demo']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=demo_env()
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "budgetspan demo needs the openai package: pip install 'budgetspan[demo]'"
    assert list(tmp_path.iterdir()) == []  # no empty trace file left behind


def test_policy_search_is_cached_per_tenant_and_the_savings_shown(demo: dict[str, Any]) -> None:
    """Each ticket searches the policy twice (drafting, then review): the second search is a hit
    of the shop's (the tenant's) cache, and the demo says what that saved."""
    m = re.search(r"Cache \(search_policy, per tenant\): (\d+) of (\d+) answered from the cache", demo["out"])
    assert m, demo["out"]
    hits, asked = int(m.group(1)), int(m.group(2))
    spans, _ = load_files([str(demo["traces"])])
    cached = [s for s in spans if s.attrs.get(A.CACHE_NAME) == "search_policy"]
    assert len(cached) == asked and sum(s.attrs[A.CACHE_RESULT] == "hit" for s in cached) == hits > 0
    assert {s.attrs[A.CACHE_SCOPE] for s in cached} == {"tenant"}
    # a hit made no retrieval: one retrieval span per miss
    misses = sum(s.attrs[A.CACHE_RESULT] == "miss" for s in cached)
    assert sum(1 for s in spans if s.operation == A.OP_RETRIEVAL) == misses
