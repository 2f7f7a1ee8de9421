"""Bad input, property-based: configuration, price files, prices and provider usage.

Every malformed value gives either a clear error (``ConfigError`` / ``PriceConfigError``, both
``ValueError`` subclasses, naming the variable) or a marked unknown (``None``: unpriced or
unreported), never another exception type, and never a negative or NaN cost or token count.
Usage parsers are fed malformed bodies directly and through the real SDKs on a mock transport.
"""

from __future__ import annotations

import json
import math
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.budget import LIMIT_NAMES, TOOL_LIMIT_NAMES, Budget
from budgetspan.accounting.ledger import Mode, Spend
from budgetspan.accounting.pricing import (
    PriceConfigError,
    PriceResolver,
    TokenPrice,
    load_price_file,
    parse_price_overrides,
)
from budgetspan.config import ConfigError, load_config, parse_config_file, parse_inline_budget
from budgetspan.instrumentation import usage as _usage
from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
from tests.reliability._support import MODEL, chat_body, messages, openai_instrumented
from tests.reliability.conftest import Lean

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- strategies ---------------------------------------------------------------------------------

weird_numbers = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=10**15, max_value=10**400),
    st.integers(max_value=-(10**15)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324]),
)
weird_text_numbers = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e400",
            "-1",
            "-0",
            "0x10",
            "1_000",
            "1.5",
            "½",
            "١٢",
            "none",
            "off",
            "unlimited",
            "9" * 5000,
            "1e-400",
            "0.1.2",
            "=",
            ",",
            "True",
        ]
    ),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(max_size=12),
)
limit_names = st.one_of(st.sampled_from((*LIMIT_NAMES, "profile", *TOOL_LIMIT_NAMES)), st.text(max_size=10))
json_leaf = st.one_of(weird_numbers, st.text(max_size=8))
json_like = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

USAGE_KEYS = (
    "prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens",
    "cache_read_input_tokens", "cache_creation_input_tokens",
)  # fmt: skip
usage_dicts = st.dictionaries(
    st.sampled_from(USAGE_KEYS), weird_numbers | st.text(max_size=5), max_size=6
) | st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": weird_numbers,
        "completion_tokens": weird_numbers,
        "prompt_tokens_details": st.none() | st.dictionaries(st.just("cached_tokens"), weird_numbers),
        "completion_tokens_details": st.none() | st.dictionaries(st.just("reasoning_tokens"), weird_numbers),
        "input_tokens_details": json_like,
    },
)
malformed_usage = st.one_of(usage_dicts, json_like)


def _ok_number(x: Any) -> bool:
    return x is None or (
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
    )


def _small_count(x: Any) -> bool:
    """A plain token count (an int, not a bool, in a sane range)."""
    return type(x) is int and 0 <= x <= 10**9


def _check_spend(spend: Spend | None) -> None:
    if spend is None:
        return
    assert isinstance(spend, Spend)
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ):
        value = getattr(spend, name)
        assert value is None or (type(value) is int and value >= 0), (name, value)
    assert _ok_number(spend.cost_usd)


def _check_budget(b: Budget) -> None:
    for name in LIMIT_NAMES:
        assert _ok_number(getattr(b, name)), (name, getattr(b, name))


# --- configuration ------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(limit_names, weird_text_numbers), max_size=5), st.text(max_size=20))
def test_inline_budget_gives_a_budget_or_a_config_error_naming_the_variable(
    pairs: list[tuple[str, str]], junk: str
) -> None:
    # positive controls: good text is read exactly, bad text is refused (not silently defaulted)
    good = parse_inline_budget("max_model_calls=3,max_cost_usd=0.5")
    assert (good.max_model_calls, good.max_cost_usd) == (3, 0.5)
    with pytest.raises(ConfigError, match="BUDGETSPAN_BUDGET"):
        parse_inline_budget("max_model_calls=-1")
    for text in (",".join(f"{k}={v}" for k, v in pairs), junk):
        try:
            budget = parse_inline_budget(text)
        except ConfigError as e:
            assert "BUDGETSPAN_BUDGET" in str(e)
        else:
            _check_budget(budget)


@SETTINGS
@given(
    budget=st.none() | weird_text_numbers.map(lambda v: f"max_cost_usd={v}") | st.text(max_size=15),
    mode=st.none()
    | st.sampled_from(["enforce", "observe", "OBSERVE ", "", "block", "1"])
    | st.text(max_size=6),
)
def test_load_config_from_environment_names_the_bad_variable(budget: str | None, mode: str | None) -> None:
    good = load_config({"BUDGETSPAN_BUDGET": "max_cost_usd=0.5", "BUDGETSPAN_MODE": "observe"})
    assert good.default_budget.max_cost_usd == 0.5 and good.mode is Mode.OBSERVE  # positive control
    with pytest.raises(ConfigError, match="BUDGETSPAN_MODE"):
        load_config({"BUDGETSPAN_MODE": "block"})
    env = {k: v for k, v in (("BUDGETSPAN_BUDGET", budget), ("BUDGETSPAN_MODE", mode)) if v is not None}
    try:
        cfg = load_config(env)
    except ConfigError as e:
        named = [k for k in env if k in str(e)]
        assert named, str(e)
    else:
        _check_budget(cfg.default_budget)


toml_values = st.sampled_from(
    ["1", "0", "-1", "1.5", "nan", "inf", "-inf", "1e400", '"3"', '"x"', '"nan"', '""', "true",
     "[1, 2]", "{ a = 1 }", "1979-05-27", "99999999999999999999", '"interactive"', "[]", "{}"]
)  # fmt: skip
toml_keys = st.sampled_from((*LIMIT_NAMES, *TOOL_LIMIT_NAMES, "profile", "bogus", '"a.b"'))
section = st.sampled_from(["profiles", "workflows", "tools", "other"])
table_name = st.sampled_from(["a", "interactive", '"x y"', "1"])


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:  # a top-level section that is not a table of tables
            lines.append(f"{draw(section)} = {draw(toml_values)}")
        elif kind == 1:  # [section] with a plain key
            lines += [f"[{draw(section)}]", f"{draw(table_name)} = {draw(toml_values)}"]
        else:
            lines.append(f"[{draw(section)}.{draw(table_name)}]")
            for _ in range(draw(st.integers(0, 3))):
                lines.append(f"{draw(toml_keys)} = {draw(toml_values)}")
    if draw(st.integers(0, 9)) == 0:  # now and then, a line that is not TOML at all
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=10)))
    return "\n".join(lines) + "\n"


@SETTINGS
@given(toml_documents())
def test_config_file_gives_budgets_or_a_config_error_naming_the_variable(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "budgetspan.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            profiles, workflows, tools = parse_config_file(str(path))
        except ConfigError as e:
            assert "BUDGETSPAN_CONFIG" in str(e)
            return
        for b in (*profiles.values(), *workflows.values()):
            _check_budget(b)
        for t in tools.values():
            assert all(_ok_number(getattr(t, n)) for n in TOOL_LIMIT_NAMES)
        try:
            load_config({"BUDGETSPAN_CONFIG": str(path), "BUDGETSPAN_BUDGET": "profile=a"})
        except ConfigError as e:
            assert "BUDGETSPAN_" in str(e)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BUDGETSPAN_CONFIG"):
        load_config({"BUDGETSPAN_CONFIG": str(tmp_path / "nope.toml")})


# --- price files and prices ---------------------------------------------------------------------

price_entries = st.dictionaries(
    st.sampled_from(["input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "other"]),
    weird_numbers | st.text(max_size=4) | st.lists(st.integers(), max_size=2),
    max_size=5,
)
price_tables = st.dictionaries(
    st.sampled_from(["openai/my-model", "*/x", "noslash", "", "/", "a/b/c"]) | st.text(max_size=8),
    price_entries | json_like,
    max_size=4,
)


@SETTINGS
@given(price_tables)
def test_price_overrides_give_prices_or_a_price_config_error(data: dict[str, Any]) -> None:
    try:
        prices = parse_price_overrides(data)
    except PriceConfigError as e:
        assert "BUDGETSPAN_PRICES" in str(e)
        return
    for price in prices.values():
        assert isinstance(price, TokenPrice)
        for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"):
            assert _ok_number(getattr(price, name))


@SETTINGS
@given(st.text(max_size=60))
def test_price_file_that_is_not_toml_is_a_price_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prices.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            tomllib.loads(path.read_bytes().decode("utf-8"))
            parses = True
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            parses = False
        try:
            load_price_file(str(path))
        except PriceConfigError as e:
            assert "BUDGETSPAN_PRICES" in str(e)
        else:
            assert parses, "a file that is not TOML was accepted as a price file"


RESOLVER = PriceResolver({("openai", "flat-model"): TokenPrice(0.15, 0.6, 0.075, None)})
models = st.sampled_from(
    ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20241022", "flat-model",
     "no-such-model-xyz", "", "gpt-4o\x00", "🙂"]
) | st.none()  # fmt: skip
providers = st.sampled_from(["openai", "anthropic", "azure.ai.openai", "", "nonsense"])


@SETTINGS
@given(providers, models, weird_numbers, weird_numbers, weird_numbers, weird_numbers)
def test_price_resolver_cost_is_none_or_a_finite_non_negative_number(
    provider: str, model: str | None, inp: Any, out: Any, cr: Any, cw: Any
) -> None:
    cost = RESOLVER.cost(provider, model, inp, out, cr, cw)
    assert cost is None or (type(cost) is float and math.isfinite(cost) and cost >= 0), cost
    if provider == "openai" and model == "flat-model" and _small_count(inp) and _small_count(out):
        # positive control: plain figures for a known price are priced, not given up on
        assert cost is not None and cost >= (out * 0.6) / 1e6 - 1e-12, cost
    assert RESOLVER.cost("openai", "flat-model", 1_000_000, 1_000_000) == pytest.approx(0.75)


# --- provider usage ------------------------------------------------------------------------------


@SETTINGS
@given(malformed_usage)
def test_usage_parsers_give_a_spend_or_none_never_an_exception(usage: Any) -> None:
    for parse in (_usage.openai_usage, _usage.openai_embeddings_usage, _usage.anthropic_usage):
        _check_spend(parse(usage))
    if isinstance(usage, dict) and _small_count(usage.get("prompt_tokens")):
        # positive control: a valid count among garbage is still read, exactly
        spend = _usage.openai_usage(usage)
        assert spend is not None and spend.input_tokens == usage["prompt_tokens"], spend
    for parse in (_usage.openai_usage, _usage.anthropic_usage):
        built = openai.types.CompletionUsage.model_construct(**usage) if isinstance(usage, dict) else usage
        _check_spend(parse(built))


@SETTINGS
@given(
    st.lists(
        st.tuples(st.sampled_from(["message_start", "message_delta", "ping", None]), malformed_usage),
        max_size=5,
    )
)
def test_anthropic_stream_usage_survives_malformed_events(events: list[tuple[str | None, Any]]) -> None:
    acc = _usage.AnthropicStreamUsage()
    for kind, usage in events:
        event = {"type": kind, "usage": usage, "message": {"usage": usage}}
        carried = acc.on_event(event)
        assert carried in (True, False)
        if kind not in ("message_start", "message_delta") or usage is None:
            assert carried is False  # nothing there to take
    _check_spend(acc.spend())
    # positive control: garbage earlier does not stop well-formed events from being read
    assert acc.on_event({"type": "message_start", "message": {"usage": {
        "input_tokens": 7, "output_tokens": 1,
        "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}}) is True  # fmt: skip
    assert acc.on_event({"type": "message_delta", "usage": {"output_tokens": 9}}) is True
    assert acc.spend() == Spend(7, 9, 0, 0)


def _assert_span_numbers(exporter: InMemorySpanExporter) -> None:
    for span in exporter.get_finished_spans():
        attrs = span.attributes or {}
        cost = attrs.get(A.GEN_AI_USAGE_COST)
        assert cost is None or (math.isfinite(cost) and cost >= 0), cost
        for key in (A.GEN_AI_USAGE_INPUT_TOKENS, A.GEN_AI_USAGE_OUTPUT_TOKENS):
            value = attrs.get(key)
            assert value is None or (type(value) is int and value >= 0), (key, value)
        for key, value in attrs.items():
            if key.startswith(A.USAGE_PREFIX) and isinstance(value, float):
                assert math.isfinite(value) and value >= 0, (key, value)


def _json_response(body: dict[str, Any]) -> httpx2.Response:
    """The body as a server might send it: NaN / Infinity literals and 400-digit ints included."""
    content = json.dumps(body).encode()
    return httpx2.Response(200, content=content, headers={"content-type": "application/json"})


@pytest.fixture
def recorded(lean: Lean) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    lean.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@SETTINGS
@given(usage=malformed_usage)
def test_openai_sdk_with_malformed_usage_never_breaks_the_call(
    recorded: InMemorySpanExporter, usage: Any
) -> None:
    body = chat_body()
    body["usage"] = usage
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="https://api.openai.com/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(lambda r: _json_response(body))),
    )
    recorded.clear()
    with openai_instrumented(), budgetspan.run("bad-usage", max_cost_usd=1.0) as run:
        answer = client.chat.completions.create(model=MODEL, messages=messages())
    assert answer.id == body["id"]
    u = run.usage
    assert math.isfinite(u.cost_usd) and u.cost_usd >= 0
    assert u.input_tokens >= 0 and u.output_tokens >= 0
    _assert_span_numbers(recorded)


@SETTINGS
@given(usage=malformed_usage)
def test_anthropic_sdk_with_malformed_usage_never_breaks_the_call(
    recorded: InMemorySpanExporter, usage: Any
) -> None:
    body = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": usage,
    }  # fmt: skip
    client = anthropic.Anthropic(
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(lambda r: _json_response(body))),
    )
    recorded.clear()
    inst = AnthropicInstrumentor()
    already = inst.is_instrumented_by_opentelemetry
    if not already:
        inst.instrument()
    try:
        with budgetspan.run("bad-usage", max_cost_usd=1.0) as run:
            answer = client.messages.create(
                model="claude-3-5-haiku-20241022", max_tokens=50, messages=[{"role": "user", "content": "x"}]
            )
    finally:
        if not already:
            inst.uninstrument()
    assert answer.id == "msg_1"
    assert math.isfinite(run.usage.cost_usd) and run.usage.cost_usd >= 0
    _assert_span_numbers(recorded)


token_counts = st.none() | st.integers(min_value=-(10**6), max_value=10**6) | st.integers()


@SETTINGS
@given(st.builds(Spend, token_counts, token_counts, token_counts, token_counts, token_counts))
def test_ledger_and_spans_stay_sane_whatever_usage_a_wrapper_reports(
    recorded: InMemorySpanExporter, spend: Spend
) -> None:
    from budgetspan.calls.call import Call

    recorded.clear()
    with budgetspan.run("bad-usage") as run:
        call = Call(A.OP_CHAT, "chat gpt-4o-mini", provider="openai", model="gpt-4o-mini").start()
        call.set_usage(spend)
        call.end()
    u = run.usage
    assert math.isfinite(u.cost_usd) and u.cost_usd >= 0
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert getattr(u, name) >= 0
    for name in ("input_tokens", "output_tokens"):  # positive control: sane figures are kept
        if _small_count(getattr(spend, name)):
            assert getattr(u, name) == getattr(spend, name), (name, spend, u)
    _assert_span_numbers(recorded)


foreign_numbers = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=2**63, max_value=10**400),
    st.text(max_size=4),
)


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            A.GEN_AI_USAGE_INPUT_TOKENS: foreign_numbers,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: foreign_numbers,
            A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: foreign_numbers,
            A.GEN_AI_USAGE_PROMPT_TOKENS_LEGACY: foreign_numbers,
            A.GEN_AI_USAGE_COST: foreign_numbers,
            A.GEN_AI_REQUEST_MODEL: st.sampled_from(["gpt-4o-mini", "unknown-x", ""]),
        },
    )
)
def test_foreign_spans_with_malformed_usage_never_break_the_app_or_the_ledger(
    lean: Lean, attrs: dict[str, Any]
) -> None:
    """Another instrumentation's chat span, whatever it says, is accounted without harm."""
    app = lean.provider.get_tracer("other-instrumentation")
    attrs = {k: v for k, v in attrs.items() if v is not None}
    with budgetspan.run("foreign", max_cost_usd=1.0) as run:
        with app.start_as_current_span(
            "chat", attributes={A.GEN_AI_OPERATION_NAME: A.OP_CHAT, A.GEN_AI_PROVIDER_NAME: "openai", **attrs}
        ):
            pass
    u = run.usage
    assert u.model_calls == 1
    assert math.isfinite(u.cost_usd) and u.cost_usd >= 0
    assert u.input_tokens >= 0 and u.output_tokens >= 0


@pytest.mark.parametrize(
    "attrs",
    [
        {A.GEN_AI_USAGE_COST: float("inf"), A.GEN_AI_USAGE_INPUT_TOKENS: 5},
        {A.GEN_AI_USAGE_INPUT_TOKENS: float("inf"), A.GEN_AI_USAGE_OUTPUT_TOKENS: 1},
    ],
)
def test_foreign_span_with_infinite_usage_is_marked_unknown(lean: Lean, attrs: dict[str, Any]) -> None:
    app = lean.provider.get_tracer("other-instrumentation")
    with budgetspan.run("foreign") as run:
        span_attrs = {A.GEN_AI_OPERATION_NAME: A.OP_CHAT, A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", **attrs}
        with app.start_as_current_span("chat", attributes=span_attrs):
            pass
    u = run.usage  # the infinite figure is ignored (unreported), the rest is accounted
    assert math.isfinite(u.cost_usd) and u.cost_usd >= 0
    assert u.model_calls == 1 and u.input_tokens + u.output_tokens in (1, 5)
