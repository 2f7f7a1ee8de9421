"""Budgets, the explanation sentence, and configuration from the environment and TOML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from budgetspan import Budget, BudgetExhausted, ConfigError, ToolLimits, Usage
from budgetspan.accounting.budget import explain
from budgetspan.accounting.ledger import Mode
from budgetspan.config import load_config, parse_inline_budget, parse_mode


def test_budget_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_model_calls"):
        Budget(max_model_calls=-1)
    with pytest.raises(ValueError, match="whole number"):
        Budget(max_tool_calls=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        Budget(max_cost_usd=float("nan"))
    with pytest.raises(ValueError, match="unknown budget limit"):
        Budget().merged(max_dollars=3)


def test_budget_is_immutable_and_merges() -> None:
    base = Budget(max_model_calls=6, max_cost_usd=0.25, tools={"s": ToolLimits(timeout_s=2)})
    with pytest.raises(AttributeError):
        base.max_model_calls = 3  # type: ignore[misc]
    merged = base.merged(Budget(max_cost_usd=1.0, tools={"s": ToolLimits(max_calls=3)}), max_retries=2)
    assert merged.limits() == {"max_model_calls": 6, "max_cost_usd": 1.0, "max_retries": 2}
    assert merged.tool_limits("s") == ToolLimits(timeout_s=2, max_calls=3)
    assert base.max_cost_usd == 0.25


def test_explanation_sentence_matches_the_design() -> None:
    u = Usage(model_calls=6, tool_calls=3, tools_finished=2, cost_usd=0.21)
    assert explain("max_model_calls", 6, u) == (
        "Stopped after 6 of 6 model calls; 2 of 3 tools finished; $0.21 spent."
    )
    assert explain("max_cost_usd", 0.25, u) == (
        "Stopped at the cost limit; 2 of 3 tools finished; 6 model calls made; $0.21 of $0.25 spent."
    )
    exc = BudgetExhausted("max_model_calls", 6, u, {"tool_results": []})
    assert str(exc) == exc.explanation and exc.reason == "max_model_calls" and exc.limit == 6


def test_inline_budget_and_profiles() -> None:
    b = parse_inline_budget("max_cost_usd=0.25, max_model_calls=6")
    assert b.limits() == {"max_cost_usd": 0.25, "max_model_calls": 6}
    assert parse_inline_budget("interactive").profile == "interactive"
    p = parse_inline_budget("profile=background,max_cost_usd=1")
    assert p.max_cost_usd == 1.0 and p.max_model_calls == 40


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_cost_usd=abc", "not a number"),
        ("max_calls=3", "unknown limit 'max_calls'"),
        ("max_model_calls=-2", ">= 0"),
        ("max_model_calls", "not a known profile"),
        ("profile=turbo", "unknown profile 'turbo'"),
    ],
)
def test_bad_inline_budget_names_the_variable_and_form(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"BUDGETSPAN_BUDGET": text})
    assert "BUDGETSPAN_BUDGET" in str(info.value) and needle in str(info.value)


def test_bad_mode() -> None:
    assert parse_mode("OBSERVE") is Mode.OBSERVE
    with pytest.raises(ConfigError, match="BUDGETSPAN_MODE.*'enforce' or 'observe'"):
        load_config({"BUDGETSPAN_MODE": "strict"})


def test_toml_config_profiles_workflows_tools(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        """
[profiles.tight]
max_model_calls = 2
max_cost_usd = 0.05

[workflows.resolve_ticket]
profile = "tight"
max_tool_calls = 4

[tools.search_orders]
timeout_s = 2
max_calls = 3
max_retries = 1
"""
    )
    cfg = load_config({"BUDGETSPAN_CONFIG": str(path), "BUDGETSPAN_BUDGET": "max_retries=5"})
    b = cfg.budget_for("resolve_ticket")
    assert b.limits() == {"max_model_calls": 2, "max_tool_calls": 4, "max_cost_usd": 0.05, "max_retries": 5}
    assert b.tool_limits("search_orders") == ToolLimits(timeout_s=2, max_calls=3, max_retries=1)
    # code overrides configuration; a profile name from code works too
    assert cfg.budget_for("resolve_ticket", max_model_calls=9).max_model_calls == 9
    assert cfg.budget_for("other", "tight").max_model_calls == 2
    with pytest.raises(ConfigError, match="unknown budget profile"):
        cfg.budget_for("other", "nope")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[profiles.x]\nmax_model_calls = 'many'", "not a number"),
        ("[profiles.x]\nmax_tokens = 3", "unknown key 'max_tokens'"),
        ("[workflows.w]\nprofile = 'ghost'", "unknown profile 'ghost'"),
        ("[tools.t]\ntimeout_s = -1", ">= 0"),
        ("[budgets]\nx = 1", "unknown section"),
        ("this is not toml =", "not valid TOML"),
    ],
)
def test_bad_toml_config(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config({"BUDGETSPAN_CONFIG": str(path)})
    assert "BUDGETSPAN_CONFIG" in str(info.value) and needle in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="BUDGETSPAN_CONFIG.*cannot read"):
        load_config({"BUDGETSPAN_CONFIG": "/nonexistent/budgets.toml"})


@pytest.mark.parametrize(
    "content",
    [
        "[profiles.p]\nmax_model_calls = " + "9" * 5000 + "\n",  # a number past int conversion limits
        "x = " + "[" * 2000 + "]" * 2000 + "\n",  # nesting past the recursion limit
    ],
)
def test_a_hostile_config_file_is_a_config_error(tmp_path: Any, content: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="BUDGETSPAN_CONFIG"):
        load_config({"BUDGETSPAN_CONFIG": str(path)})


def test_a_limit_given_twice_or_a_bad_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        load_config({"BUDGETSPAN_BUDGET": "max_cost_usd=1,max_cost_usd=2"})
    with pytest.raises(ConfigError, match="BUDGETSPAN_METRICS_PORT"):
        load_config({"BUDGETSPAN_METRICS_PORT": "abc"})


@pytest.mark.parametrize(
    "text",
    [
        "profile=interactive,profile=background",
        "reserve_for_final.max_model_calls=1,reserve_for_final.max_model_calls=2",
    ],
)
def test_a_profile_or_a_reserve_given_twice_is_a_config_error(text: str) -> None:
    """The last one silently won (issue 15: a duplicated key in BUDGETSPAN_BUDGET)."""
    with pytest.raises(ConfigError, match="BUDGETSPAN_BUDGET: .* is given twice"):
        load_config({"BUDGETSPAN_BUDGET": text})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUDGETSPAN_METRICS_PORT", "9" * 5000),
        ("BUDGETSPAN_METRICS_PORT", "١٢"),  # digits, but not ASCII ones
        ("BUDGETSPAN_METRICS_MAX_LABEL_VALUES", "0"),
        ("BUDGETSPAN_METRICS_MAX_SERIES", "lots"),
        ("BUDGETSPAN_ENFORCE_FOREIGN_SPANS", "ture"),
        ("BUDGETSPAN_THREADS", "maybe"),
        ("BUDGETSPAN_OPENAI_STREAM_USAGE", "sometimes"),
        ("BUDGETSPAN_LITELLM_COST", "openai"),
        ("BUDGETSPAN_METRICS_TENANTS", "top:x"),  # was a ValueError traceback, metrics off, exit 0
        ("BUDGETSPAN_METRICS_TENANTS", "top:-1"),  # was silently no tenant label at all
        ("BUDGETSPAN_METRICS_TENANTS", "top:" + "9" * 5000),
        ("BUDGETSPAN_TRACES_FILE", "/"),  # a directory: was a warning with a traceback, no spans written
        # review11: these three ran the program with a warning (and a traceback), exit 0
        ("BUDGETSPAN_TRACES_FILE", "/etc/passwd/spans.jsonl"),  # under a file: no spans written
        ("BUDGETSPAN_METRICS_ADDR", "not an address"),  # metrics endpoint off
        ("BUDGETSPAN_METRICS_ADDR", "999.1.1.1"),
        # review11: every run logged two errors (the metrics listener's FileNotFoundError), exit 0
        ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/multiproc"),
        ("PROMETHEUS_MULTIPROC_DIR", "/etc/passwd"),
        # review11: bytes not UTF-8 (os.environ holds them as lone surrogates): the workflow
        # attribute was dropped from every span, with an encoder traceback per span
        ("BUDGETSPAN_WORKFLOW", "shop\udcff"),
        ("BUDGETSPAN_WORKFLOW", "shop\x1b[2J"),
    ],
)
def test_every_switch_with_a_bad_value_is_a_config_error_naming_it(name: str, value: str) -> None:
    """Issue 15: every configuration error is a ConfigError naming the variable (before, these
    were ignored with a log line, or a 5,000-digit port raised ValueError)."""
    with pytest.raises(ConfigError) as info:
        load_config({name: value})
    assert str(info.value).startswith(name + "=") and len(str(info.value)) < 200


def test_good_switch_values_pass() -> None:
    env = {
        "BUDGETSPAN_METRICS_PORT": "0",
        "BUDGETSPAN_METRICS_MAX_LABEL_VALUES": "50",
        "BUDGETSPAN_METRICS_MAX_SERIES": "2000",
        "BUDGETSPAN_ENFORCE_FOREIGN_SPANS": "True",
        "BUDGETSPAN_THREADS": "off",
        "BUDGETSPAN_OPENAI_STREAM_USAGE": "never",
        "BUDGETSPAN_LITELLM_COST": "litellm",
    }
    assert load_config(env).mode.value == "enforce"
    for addr in ("0.0.0.0", "::1", "localhost", "metrics.internal.example"):
        load_config({"BUDGETSPAN_METRICS_ADDR": addr})
    load_config({"PROMETHEUS_MULTIPROC_DIR": "/tmp"})


def test_a_traces_file_in_a_directory_still_to_be_made_passes(tmp_path: Any) -> None:
    """The exporter makes the missing directories: only a path that cannot be made is refused."""
    load_config({"BUDGETSPAN_TRACES_FILE": str(tmp_path / "new" / "dirs" / "spans.jsonl")})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUDGETSPAN_BUDGET", "max_cost=1"),
        ("BUDGETSPAN_BUDGET", "max_cost_usd=1,max_cost_usd=2"),
        ("BUDGETSPAN_METRICS_PORT", "abc"),
        ("BUDGETSPAN_CONFIG", "nested"),
        ("BUDGETSPAN_THREADS", "maybe"),
        ("BUDGETSPAN_METRICS_TENANTS", "top:x"),
        ("BUDGETSPAN_TRACES_FILE", "/"),
        ("BUDGETSPAN_TRACES_FILE", "/etc/passwd/spans.jsonl"),  # review11: ran, a traceback, exit 0
        ("BUDGETSPAN_METRICS_ADDR", "not an address"),  # review11: ran, metrics off, exit 0
        ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/multiproc"),  # review11: two errors logged per run
    ],
)
def test_a_config_error_under_opentelemetry_instrument_is_one_line_and_status_2(
    tmp_path: Any, name: str, value: str
) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "app.py"
    script.write_text("print('the program ran')\n")
    if value == "nested":
        value = str(tmp_path / "budgets.toml")
        Path(value).write_text("x = " + "[" * 2000 + "]" * 2000 + "\n")
    env = {**os.environ, name: value, "OTEL_TRACES_EXPORTER": "none",
           "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}  # fmt: skip
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    proc = subprocess.run(
        [str(instrument), sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2 and "the program ran" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and name in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# --- loop limits and the reserve for the final answer (issue 18) ---------------------------------


def test_loop_limits_actions_and_reserve_inline() -> None:
    b = parse_inline_budget(
        "max_model_calls=6,max_repeated_calls=3,no_progress_action=warn,max_steps_without_progress=5,"
        "reserve_for_final.max_model_calls=1,reserve_for_final.max_cost_usd=0.02"
    )
    assert b.max_repeated_calls == 3 and b.max_steps_without_progress == 5
    assert b.no_progress_action == "warn" and b.repeated_calls_action is None
    assert dict(b.reserve_for_final) == {"max_model_calls": 1, "max_cost_usd": 0.02}
    for bad, needle in (
        ("no_progress_action=explode", "stop, warn"),
        ("reserve_for_final.max_turns=1", "max_turns"),
        ("max_repeated_calls=2.5", "whole number"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_inline_budget(bad)


def test_loop_limits_and_reserve_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        "[profiles.careful]\nmax_model_calls = 6\nmax_repeated_calls = 3\nrepeated_calls_action = 'warn'\n"
        "reserve_for_final = { max_model_calls = 1 }\n"
        "[workflows.support]\nprofile = 'careful'\n[workflows.support.reserve_for_final]\nmax_cost_usd = 0.02\n"
    )
    cfg = load_config({"BUDGETSPAN_CONFIG": str(path)})
    b = cfg.budget_for("support")
    assert b.max_repeated_calls == 3 and b.repeated_calls_action == "warn"
    assert dict(b.reserve_for_final) == {"max_model_calls": 1, "max_cost_usd": 0.02}
    # what the code passes merges over it
    b2 = cfg.budget_for("support", reserve_for_final={"max_model_calls": 2}, max_repeated_calls=4)
    assert dict(b2.reserve_for_final) == {"max_model_calls": 2, "max_cost_usd": 0.02}
    assert b2.max_repeated_calls == 4


def test_budget_extended_and_merged_keep_loop_options() -> None:
    b = Budget(max_cost_usd=0.25, max_repeated_calls=3, reserve_for_final={"max_cost_usd": 0.05})
    e = b.extended({"max_cost_usd": 0.1, "max_model_calls": 2})
    assert e.max_cost_usd == pytest.approx(0.35) and e.max_model_calls is None
    assert e.max_repeated_calls == 3 and dict(e.reserve_for_final) == {"max_cost_usd": 0.05}
    assert Budget().merged(b).max_repeated_calls == 3
    with pytest.raises(ValueError, match="reserve_for_final"):
        Budget(reserve_for_final={"tool.max_calls": 1})


@pytest.mark.parametrize("name", ["BUDGETSPAN_CONFIG", "BUDGETSPAN_PRICES"])
def test_a_config_file_that_is_no_regular_file_is_a_config_error_not_a_hang(tmp_path: Any, name: str) -> None:
    """review11: a FIFO blocked the program's start for ever (under opentelemetry-instrument, in
    ``sitecustomize``), ``/dev/zero`` was read until the kernel killed the process (status 137)."""
    import os
    import threading

    fifo = tmp_path / "budgets.toml"
    os.mkfifo(fifo)
    found: list[BaseException] = []

    def load(value: str) -> None:
        try:
            load_config({name: value})
        except BaseException as e:
            found.append(e)

    for value in (str(fifo), "/dev/zero"):
        reader = threading.Thread(target=load, args=(value,), daemon=True)
        reader.start()
        reader.join(timeout=20)
        if reader.is_alive():  # blocked in open(): let it go before failing
            with open(fifo, "wb"):
                pass
            reader.join(timeout=5)
            pytest.fail(f"{name}={value} blocked")
        assert (
            isinstance(found[-1], ConfigError) and name in str(found[-1]) and "regular file" in str(found[-1])
        )


def test_a_huge_config_file_is_refused_before_it_is_read(tmp_path: Any) -> None:
    path = tmp_path / "budgets.toml"
    with open(path, "wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(ConfigError, match="BUDGETSPAN_CONFIG.*larger than"):
        load_config({"BUDGETSPAN_CONFIG": str(path)})


@pytest.mark.parametrize(
    "env",
    [
        {"BUDGETSPAN_BUDGET": "max_model_calls=" + "9" * 5000},
        {"BUDGETSPAN_BUDGET": "x" * 100_000 + "=1"},
        {"BUDGETSPAN_MODE": "y" * 100_000},
        {"BUDGETSPAN_UNPRICED": "z" * 100_000},
        {"BUDGETSPAN_CONFIG": "/nonexistent/" + "d" * 3000},
    ],
    ids=["budget-value", "budget-name", "mode", "unpriced", "config-path"],
)
def test_a_huge_value_makes_a_short_message(env: dict[str, str]) -> None:
    """review11: the one message quoted the value whole (a 100,000-character BUDGETSPAN_MODE
    gave a 100,051-character line on stderr); a long value is cut, its length said."""
    with pytest.raises(ConfigError) as info:
        load_config(env)
    text = str(info.value)
    assert next(iter(env)) in text and len(text) < 1000, len(text)
    assert "characters)" in text
