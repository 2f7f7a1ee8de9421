"""One grammar for every limit read from text or TOML (issue 15, harden8).

Counts (calls, tokens, retries, loop limits, the collector's run cap): ASCII decimal digits, at
most 2**53 (a float carries it exactly: Redis's Lua counts in doubles). Dollars and seconds: a
plain decimal or exponent number (``0.25``, ``.5``, ``2e-3``), finite and not negative. No sign,
no ``_``, no digits of other scripts, no empty list items. Before, ``int()``/``float()`` took
``١٢`` as 12, ``+3``, ``1_000``, ``3,,`` and a count of ``1e23`` or 10**23.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from budgetspan import Budget, ConfigError, ToolLimits
from budgetspan.config import load_config, parse_inline_budget

BIG = str(10**23)


@pytest.mark.parametrize(
    "text",
    [
        "max_model_calls=١٢",  # Arabic-Indic digits: int() read 12
        "max_model_calls=+3",
        "max_model_calls=1_000",
        "max_model_calls=3,,",  # an empty item
        "max_model_calls=3,",
        ",max_model_calls=3",
        "max_model_calls=1e23",  # a count is whole digits
        "max_model_calls=3.0",
        f"max_total_tokens={BIG}",  # past 2**53
        f"max_model_calls={2**53 + 1}",
        "max_retries=0x10",
        "max_repeated_calls=１２",  # fullwidth digits
        "reserve_for_final.max_model_calls=+1",
        "max_cost_usd=1_0",
        "max_cost_usd=١",
        "max_cost_usd=+1",
        "max_cost_usd=-0.5",
        "max_cost_usd=inf",
        "max_cost_usd=nan",
        "max_cost_usd=1e400",  # overflows to inf
        "max_wall_clock_s=infinity",
        "max_wall_clock_s=1.5.2",
        "max_cost_usd=0x1p-2",
    ],
)
def test_a_limit_outside_the_grammar_is_a_config_error_naming_variable_and_value(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"BUDGETSPAN_BUDGET": text})
    message = str(info.value)
    assert message.startswith("BUDGETSPAN_BUDGET"), message
    if ",," in text or text.startswith(",") or text.endswith(","):
        assert "empty item" in message and repr(text) in message, message
    else:
        name, _, value = text.partition("=")
        assert f"{name.removeprefix('reserve_for_final.')}={value!r}" in message, message


def test_the_grammar_keeps_every_plain_form() -> None:
    b = parse_inline_budget(
        "max_model_calls=007, max_total_tokens=9007199254740992, max_cost_usd=.5, max_wall_clock_s=2e-3, "
        "max_retries=0, max_tool_calls=off, max_steps=none, reserve_for_final.max_cost_usd=5."
    )
    assert b.max_model_calls == 7 and b.max_total_tokens == 2**53 and b.max_retries == 0
    assert b.max_cost_usd == 0.5 and b.max_wall_clock_s == 0.002 and b.max_tool_calls is None
    assert dict(b.reserve_for_final) == {"max_cost_usd": 5.0}
    assert parse_inline_budget("max_cost_usd=1E3").max_cost_usd == 1000.0
    assert parse_inline_budget("max_cost_usd=1e23").max_cost_usd == 1e23  # dollars: any finite amount


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"BUDGETSPAN_BUDGET": "max_cost_usd=" + "1" * 3000 + "x"})
    assert "BUDGETSPAN_BUDGET" in str(info.value) and len(str(info.value)) < 600


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[profiles.p]\nmax_model_calls = 3.0", "max_model_calls"),  # a float for a count
        ("[profiles.p]\nmax_model_calls = true", "max_model_calls"),
        ("[profiles.p]\nmax_model_calls = -1", "max_model_calls"),
        (f"[profiles.p]\nmax_model_calls = {BIG}", "max_model_calls"),
        ("[profiles.p]\nmax_model_calls = 1e23", "max_model_calls"),
        ("[profiles.p]\nmax_model_calls = '١٢'", "max_model_calls"),
        ("[profiles.p]\nmax_cost_usd = inf", "max_cost_usd"),
        ("[profiles.p]\nmax_cost_usd = 1" + "0" * 400, "max_cost_usd"),  # was OverflowError (int to float)
        ("[profiles.p]\nmax_cost_usd = nan", "max_cost_usd"),
        ("[profiles.p]\nmax_cost_usd = -0.1", "max_cost_usd"),
        ("[profiles.p]\nmax_cost_usd = '1_0'", "max_cost_usd"),
        ("[profiles.p]\nmax_cost_usd = true", "max_cost_usd"),
        ("[workflows.w]\nmax_tool_calls = 2.0", "max_tool_calls"),
        ("[profiles.p.reserve_for_final]\nmax_model_calls = 1.0", "max_model_calls"),
        ("[tools.t]\nmax_calls = 0.5", "max_calls"),
        (f"[tools.t]\nmax_retries = {BIG}", "max_retries"),
        ("[tools.t]\ntimeout_s = inf", "timeout_s"),
        ("[tenants.acme]\nmax_model_calls = 2.5", "max_model_calls"),
        (f"[tenants.default]\nmax_total_tokens = {BIG}\nwindow = 'day'", "max_total_tokens"),
        ("[users.u]\nmax_cost_usd = nan", "max_cost_usd"),
        ("[tenants.acme]\nmax_cost_usd = 5\nwarn_at = '١'", "warn_at"),
        ("[tenants.acme]\nmax_cost_usd = 5\nwarn_at = '0_5'", "warn_at"),
        ("[tenants.acme]\nmax_cost_usd = 5\nwarn_at = nan", "warn_at"),
        ("[tenants.acme]\nmax_cost_usd = 5\nwarn_at = 1" + "0" * 400, "warn_at"),  # was OverflowError
    ],
)
def test_toml_limits_take_the_same_bounds(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError) as info:
        load_config({"BUDGETSPAN_CONFIG": str(path)})
    message = str(info.value)
    assert message.startswith("BUDGETSPAN_CONFIG=") and str(path) in message and needle in message, message


def test_toml_keeps_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        f"[profiles.p]\nmax_model_calls = {2**53}\nmax_cost_usd = 2\nmax_wall_clock_s = 1e3\n"
        "max_tool_calls = '4'\n[tools.t]\ntimeout_s = 1\nmax_calls = 3\n"
        "[tenants.acme]\nmax_cost_usd = 5.5\nwarn_at = '0.8'\nwindow = 'day'\n"
    )
    cfg = load_config({"BUDGETSPAN_CONFIG": str(path)})
    p = cfg.profiles["p"]
    assert p.max_model_calls == 2**53 and p.max_cost_usd == 2.0 and p.max_wall_clock_s == 1000.0
    assert p.max_tool_calls == 4 and cfg.tools["t"] == ToolLimits(timeout_s=1.0, max_calls=3)


def test_a_count_past_two_to_the_53_is_refused_from_code_too() -> None:
    with pytest.raises(ValueError, match="max_model_calls"):
        Budget(max_model_calls=2**53 + 1)
    with pytest.raises(ValueError, match="max_calls"):
        ToolLimits(max_calls=10**23)
    with pytest.raises(ValueError, match="max_cost_usd must be finite"):
        Budget(max_cost_usd=10**400)  # was OverflowError
    assert Budget(max_model_calls=2**53).max_model_calls == 2**53


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUDGETSPAN_COLLECTOR_MAX_RUNS", "0.5"),  # was int(0.5): a cap of 0 (or 1) runs, silently
        ("BUDGETSPAN_COLLECTOR_MAX_RUNS", "١٢"),
        ("BUDGETSPAN_COLLECTOR_MAX_RUNS", "1e23"),
        ("BUDGETSPAN_COLLECTOR_MAX_RUNS", "0"),
        ("BUDGETSPAN_COLLECTOR_MAX_RUNS", BIG),
        ("BUDGETSPAN_COLLECTOR_WINDOW_S", "1_0"),
        ("BUDGETSPAN_COLLECTOR_WINDOW_S", "١"),
        ("BUDGETSPAN_COLLECTOR_WINDOW_S", "+5"),
        ("BUDGETSPAN_COLLECTOR_WINDOW_S", "0"),
        ("BUDGETSPAN_COLLECTOR_WINDOW_S", "inf"),
    ],
)
def test_the_collector_variables_take_the_same_grammar(name: str, value: str) -> None:
    from budgetspan.collector.core import TierOptions

    with pytest.raises(ConfigError) as info:
        TierOptions.from_env({name: value})
    assert str(info.value).startswith(f"{name}={value!r}"), str(info.value)


def test_the_collector_variables_keep_plain_values() -> None:
    from budgetspan.collector.core import TierOptions

    options = TierOptions.from_env(
        {"BUDGETSPAN_COLLECTOR_MAX_RUNS": "500", "BUDGETSPAN_COLLECTOR_WINDOW_S": "2.5"}
    )
    assert options.max_runs == 500 and options.window_s == 2.5


def test_the_metrics_readers_take_the_same_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read again where they are used (configure() checked them first): the same answer there."""
    from budgetspan.processors import labels, metrics_endpoint

    monkeypatch.setenv("BUDGETSPAN_METRICS_PORT", "٩٠٩٠")
    assert metrics_endpoint.port_from_env() is None
    monkeypatch.setenv("BUDGETSPAN_METRICS_PORT", "9090")
    assert metrics_endpoint.port_from_env() == 9090
    monkeypatch.setenv("BUDGETSPAN_METRICS_MAX_LABEL_VALUES", "1_0")
    assert labels.max_values_from_env() == labels.DEFAULT_MAX_VALUES
    monkeypatch.setenv("BUDGETSPAN_METRICS_MAX_LABEL_VALUES", "12")
    assert labels.max_values_from_env() == 12


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUDGETSPAN_BUDGET", "max_model_calls=١٢"),
        ("BUDGETSPAN_BUDGET", "max_model_calls=3,,"),
        ("BUDGETSPAN_CONFIG", f"[profiles.p]\nmax_model_calls = {BIG}\n"),
        ("BUDGETSPAN_CONFIG", "[workflows.w]\nmax_tool_calls = 2.5e0\n"),
    ],
)
def test_under_opentelemetry_instrument_a_bad_limit_stops_the_program_with_status_2(
    tmp_path: Path, name: str, value: str
) -> None:
    script = tmp_path / "app.py"
    script.write_text("print('the program ran')\n")
    if name == "BUDGETSPAN_CONFIG":
        (tmp_path / "budgets.toml").write_text(value)
        value = str(tmp_path / "budgets.toml")
    env = {**os.environ, name: value, "OTEL_TRACES_EXPORTER": "none",
           "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}  # fmt: skip
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    proc = subprocess.run(
        [str(instrument), sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "the program ran" not in proc.stdout, proc.stderr[-2000:]
    assert len(errors) == 1 and name in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "argv",
    [
        ["collector", "--max-runs", "0.5"],  # was int: refused by argparse anyway, but "١٢" became 12
        ["collector", "--max-runs", "١٢"],
        ["collector", "--window-s", "nan"],  # was passed on to the collector process
        ["collector", "--metrics-port", "70000"],
        ["collector", "--ready-timeout", "-1"],
        ["collector-config", "--sample-percent", "inf"],
        ["demo", "--metrics-port", "+9464"],
        ["demo", "--every", "1_0"],
    ],
)
def test_every_numeric_command_line_option_takes_the_grammar(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from budgetspan import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {argv[1]}: {argv[2]!r}" in err, err
