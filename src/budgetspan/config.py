"""Budgets and profiles from the environment and a TOML file.

- ``BUDGETSPAN_BUDGET``: inline limits, ``max_cost_usd=0.25,max_model_calls=6``, optionally
  naming a profile: ``profile=interactive,max_cost_usd=1`` (or just ``interactive``).
- ``BUDGETSPAN_CONFIG``: a TOML file with ``[profiles.NAME]``, ``[workflows.NAME]`` (limits and an
  optional ``profile``) and ``[tools.NAME]`` (``timeout_s``, ``max_calls``, ``max_retries``).
  Budgets above the run: ``[tenants.NAME]``, ``[users.NAME]``, ``[conversations.NAME]`` (``default``
  for every name without its own table) and ``[workflows.NAME.window]``: limits, ``window`` (hour,
  day, month, rolling-day ...), ``tz`` and ``warn_at``.
- ``BUDGETSPAN_MODE``: ``enforce`` (default) or ``observe``.

A bad value is a ``ConfigError`` naming the variable and the accepted form, raised at start-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from budgetspan.accounting.budget import (
    LIMIT_NAMES,
    LOOP_ACTION_NAMES,
    LOOP_LIMIT_NAMES,
    TOOL_LIMIT_NAMES,
    Budget,
    ToolLimits,
)
from budgetspan.accounting.ledger import Mode
from budgetspan.accounting.pricing import PriceConfigError, load_price_file
from budgetspan.accounting.scopes import (
    SCOPE_FORM,
    SECTIONS,
    ScopeBudget,
    ScopeTables,
    scope_budget_from_table,
)
from budgetspan.accounting.toml_file import TomlFileError, read_toml
from budgetspan.attributes import (
    ENV_BUDGET,
    ENV_CAPTURE_CONTENT,
    ENV_CONFIG,
    ENV_ENFORCE_FOREIGN,
    ENV_LITELLM_COST,
    ENV_METRICS_ADDR,
    ENV_METRICS_MAX_LABEL_VALUES,
    ENV_METRICS_MAX_SERIES,
    ENV_METRICS_PORT,
    ENV_METRICS_TENANTS,
    ENV_MODE,
    ENV_OPENAI_STREAM_USAGE,
    ENV_PRICES,
    ENV_PROMETHEUS_MULTIPROC_DIR,
    ENV_PROPAGATE_THREADS,
    ENV_TRACES_FILE,
    ENV_UNPRICED,
    ENV_WORKFLOW,
)
from budgetspan.config_numbers import ConfigError as ConfigError  # (defined with the number grammar)
from budgetspan.config_numbers import amount_text, count_at_most, limit_value

UNPRICED_POLICIES = ("warn", "refuse")
#: What a budget may say besides its limits: loop limits and their actions (``stop`` | ``warn``),
#: and ``reserve_for_final`` (a table in TOML; ``reserve_for_final.NAME=VALUE`` inline).
BUDGET_KEYS = (*LIMIT_NAMES, *LOOP_LIMIT_NAMES, *LOOP_ACTION_NAMES)
RESERVE_KEY = "reserve_for_final"


INLINE_FORM = (
    "comma-separated name=value pairs, e.g. 'max_cost_usd=0.25,max_model_calls=6', "
    f"with names from: profile, {', '.join(BUDGET_KEYS)}, {RESERVE_KEY}.LIMIT"
)
MODE_FORM = "'enforce' or 'observe'"
CONFIG_FORM = (
    "a TOML file with [profiles.NAME] and [workflows.NAME] tables of limits "
    f"({', '.join(BUDGET_KEYS)}, a {RESERVE_KEY} table; workflows may name a 'profile') and [tools.NAME] tables "
    f"({', '.join(TOOL_LIMIT_NAMES)}); scope budgets in [tenants.NAME], [users.NAME], "
    "[conversations.NAME] and [workflows.NAME.window] tables"
)

# Built-in profiles: sensible starting points, overridable from the config file. A row below gives
# these limits, in this order.
_PROFILE_LIMITS = tuple(
    f"max_{n}" for n in ("model_calls", "tool_calls", "total_tokens", "cost_usd", "wall_clock_s", "retries")
)
BUILTIN_PROFILES: dict[str, Budget] = {
    profile: Budget().merged(None, profile=profile, **dict(zip(_PROFILE_LIMITS, limits, strict=True)))
    for profile, *limits in (
        ("interactive", 8, 12, 60_000, 0.25, 60, 3),
        ("background", 40, 80, 400_000, 2.0, 900, 10),
        ("high_value", 100, 200, 2_000_000, 10.0, 3600, 20),
    )
}


def _limits_table(
    source: str, table: Mapping[str, Any], allowed: tuple[str, ...], form: str
) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: expected a table, got {table!r}; expected {form}")
    out: dict[str, Any] = {}
    for k, v in table.items():
        if k == RESERVE_KEY and RESERVE_KEY in allowed:
            out[k] = _limits_table(f"{source} {RESERVE_KEY}", v, LIMIT_NAMES, form)
            continue
        if k not in allowed:
            raise ConfigError(f"{source}: unknown key {k!r}; expected {form}")
        out[k] = limit_value(source, k, v, form) if k != "profile" else v
    return out


def parse_inline_budget(
    text: str, profiles: Mapping[str, Budget] | None = None, source: str = ENV_BUDGET
) -> Budget:
    """Parse ``max_cost_usd=0.25,max_model_calls=6`` (or a profile name) into a Budget."""
    profiles = profiles if profiles is not None else BUILTIN_PROFILES
    text = text.strip()
    if not text:
        return Budget()
    if "=" not in text:
        if text in profiles:
            return profiles[text]
        raise ConfigError(
            f"{source}={text!r}: not a known profile ({', '.join(sorted(profiles))}) nor {INLINE_FORM}"
        )
    values: dict[str, Any] = {}
    base = Budget()
    seen: set[str] = set()
    for part in text.split(","):
        if not part.strip():  # "3,," or a trailing comma: a limit lost in editing?
            raise ConfigError(f"{source}={text!r}: an empty item between commas; expected {INLINE_FORM}")
        if "=" not in part:
            raise ConfigError(f"{source}: {part.strip()!r} has no '='; expected {INLINE_FORM}")
        name, raw = (s.strip() for s in part.split("=", 1))
        if name in seen:  # the last one would silently win
            raise ConfigError(f"{source}: {name} is given twice; expected {INLINE_FORM}")
        seen.add(name)
        if name == "profile":
            if raw not in profiles:
                raise ConfigError(f"{source}: unknown profile {raw!r}; known: {', '.join(sorted(profiles))}")
            base = profiles[raw]
            continue
        if name.startswith(RESERVE_KEY + "."):
            kept = name.removeprefix(RESERVE_KEY + ".")
            if kept not in LIMIT_NAMES:
                raise ConfigError(f"{source}: unknown limit {kept!r} to reserve; expected {INLINE_FORM}")
            reserve = values.setdefault(RESERVE_KEY, {})
            reserve[kept] = limit_value(source, kept, raw, INLINE_FORM)
            continue
        if name not in BUDGET_KEYS:
            raise ConfigError(f"{source}: unknown limit {name!r}; expected {INLINE_FORM}")
        values[name] = limit_value(source, name, raw, INLINE_FORM)
    return base.merged(**values)


def parse_mode(text: str | None, source: str = ENV_MODE) -> Mode:
    if text is None or not text.strip():
        return Mode.ENFORCE
    try:
        return Mode(text.strip().lower())
    except ValueError:
        raise ConfigError(f"{source}={text!r}: expected {MODE_FORM}") from None


@dataclass(frozen=True)
class Config:
    """Everything budgetspan reads from its environment, resolved once."""

    default_budget: Budget = field(default_factory=Budget)
    mode: Mode = Mode.ENFORCE
    profiles: Mapping[str, Budget] = field(default_factory=lambda: dict(BUILTIN_PROFILES))
    workflows: Mapping[str, Budget] = field(default_factory=dict)
    tools: Mapping[str, ToolLimits] = field(default_factory=dict)
    #: An unpriced model call in a run with a dollar limit: "warn" (counted, said) or "refuse".
    unpriced: str = "warn"
    #: Scope budgets from the config file (tenants, users, conversations, workflow windows).
    scopes: ScopeTables = field(default_factory=ScopeTables)
    #: BUDGETSPAN_WORKFLOW (implicit runs' workflow; "" for the script's name), read with the rest
    #: so that an implicit run per trace reads no environment (issue 15).
    workflow: str = field(default_factory=lambda: os.environ.get(ENV_WORKFLOW, "").strip())

    def budget_for(
        self, workflow: str | None, budget: Budget | str | Mapping[str, Any] | None = None, **limits: Any
    ) -> Budget:
        """Resolve a run's budget: default, then the workflow's entry, then what the code passed."""
        result = self.default_budget
        if workflow and workflow in self.workflows:
            result = result.merged(self.workflows[workflow])
        if isinstance(budget, str):
            if budget not in self.profiles:
                raise ConfigError(
                    f"unknown budget profile {budget!r}; known: {', '.join(sorted(self.profiles))}"
                )
            result = result.merged(self.profiles[budget])
        elif isinstance(budget, Budget):
            result = result.merged(budget)
        elif isinstance(budget, Mapping):
            result = result.merged(Budget(**budget))
        elif budget is not None:
            raise TypeError(
                f"budget must be a Budget, a profile name or a mapping, got {type(budget).__name__}"
            )
        if limits:
            result = result.merged(**limits)
        if self.tools:
            merged_tools = dict(self.tools)
            for name, tl in result.tools.items():
                merged_tools[name] = merged_tools[name].merged(tl) if name in merged_tools else tl
            result = dataclasses.replace(result, tools=merged_tools)
        return result


def _read_toml(path: str, source: str) -> dict[str, Any]:
    where = f"{source}={path!r}"
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise ConfigError(f"{where}: {e}; expected {CONFIG_FORM}") from None
    unknown = set(data) - {"profiles", "workflows", "tools", *SECTIONS}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; expected {CONFIG_FORM}")
    for section in ("profiles", "workflows", "tools", *SECTIONS):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{where}: {section!r} must be a table of tables; expected {CONFIG_FORM}")
    return data


def parse_config_file(
    path: str, source: str = ENV_CONFIG
) -> tuple[dict[str, Budget], dict[str, Budget], dict[str, ToolLimits]]:
    """Read a TOML config file into (profiles, workflows, tools)."""
    return _parse_config(_read_toml(path, source), f"{source}={path!r}")


def _scope_budget(where: str, table: Mapping[str, Any]) -> ScopeBudget:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of limits")
    if isinstance(table.get("window"), Mapping):
        raise ConfigError(
            f'{where}: window is a value here (window = "day"); a table [workflows.NAME.window] is a '
            f"workflow's budget over a window; expected {SCOPE_FORM}"
        )
    warn = table.get("warn_at")
    if warn is not None and (isinstance(warn, bool) or not isinstance(warn, (int, float, str))):
        raise ConfigError(f"{where}: warn_at={warn!r} is not a number; expected {SCOPE_FORM}")
    if isinstance(warn, str):
        try:
            amount_text(warn.strip())
        except ValueError:
            raise ConfigError(
                f"{where}: warn_at={warn[:40]!r} is not a number; expected {SCOPE_FORM}"
            ) from None
    elif isinstance(warn, int) and warn > 10**30:  # (TOML's 10**400 would overflow float())
        raise ConfigError(
            f"{where}: warn_at must be a share in (0, 1], got an integer of {warn.bit_length()} bits; "
            f"expected {SCOPE_FORM}"
        )
    try:
        return scope_budget_from_table(where, table, lambda w, t, a: _limits_table(w, t, a, SCOPE_FORM))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_scope_tables(data: Mapping[str, Any], where: str) -> ScopeTables:
    """The scope sections, validated, kept as raw tables (built when a run uses them). Tables with
    the same content are validated and kept once: 100,000 tenants on a few plans are a few tables."""
    tables: dict[str, dict[str, Mapping[str, Any]]] = {}
    shared: dict[Any, Mapping[str, Any]] = {}

    def checked(label: str, table: Any) -> Mapping[str, Any]:
        try:
            key = tuple(sorted(table.items())) if isinstance(table, Mapping) else None
            known = shared.get(key) if key is not None else None
        except TypeError:  # a value that is no number or text: validation says what is wrong
            key = known = None
        if known is None:
            _scope_budget(f"{where} [{label}]", table)
            known = table
            if key is not None:
                shared[key] = table
        return known

    for section, kind in SECTIONS.items():
        if "" in (data.get(section) or {}):
            raise ConfigError(
                f'{where} [{section}.""]: an empty name names no scope (a run with {kind}="" has none)'
            )
        if data.get(section):
            tables[kind] = {name: checked(f"{section}.{name}", t) for name, t in data[section].items()}
    windows = {
        name: checked(f"workflows.{name}.window", table["window"])
        for name, table in (data.get("workflows") or {}).items()
        if isinstance(table, Mapping) and isinstance(table.get("window"), Mapping)
    }
    if windows:
        tables["workflow"] = windows
    return ScopeTables(tables, _scope_budget)


def _parse_config(
    data: Mapping[str, Any], where: str
) -> tuple[dict[str, Budget], dict[str, Budget], dict[str, ToolLimits]]:
    profiles = dict(BUILTIN_PROFILES)
    for name, table in (data.get("profiles") or {}).items():
        values = _limits_table(f"{where} [profiles.{name}]", table, (*BUDGET_KEYS, RESERVE_KEY), CONFIG_FORM)
        profiles[name] = Budget(**values, profile=name)
    workflows: dict[str, Budget] = {}
    for name, table in (data.get("workflows") or {}).items():
        if isinstance(table, Mapping) and isinstance(table.get("window"), Mapping):
            table = {k: v for k, v in table.items() if k != "window"}  # the workflow's scope budget
        values = _limits_table(
            f"{where} [workflows.{name}]", table, (*BUDGET_KEYS, RESERVE_KEY, "profile"), CONFIG_FORM
        )
        base = Budget()
        prof = values.pop("profile", None)
        if prof is not None:
            if not isinstance(prof, str) or prof not in profiles:
                raise ConfigError(
                    f"{where} [workflows.{name}]: unknown profile {prof!r}; known: {', '.join(sorted(profiles))}"
                )
            base = profiles[prof]
        workflows[name] = base.merged(**values)
    tools: dict[str, ToolLimits] = {}
    for name, table in (data.get("tools") or {}).items():
        values = _limits_table(f"{where} [tools.{name}]", table, TOOL_LIMIT_NAMES, CONFIG_FORM)
        tools[name] = ToolLimits(**values)
    return profiles, workflows, tools


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Read BUDGETSPAN_CONFIG, BUDGETSPAN_BUDGET and BUDGETSPAN_MODE. Raises ConfigError."""
    env = os.environ if environ is None else environ
    profiles: dict[str, Budget] = dict(BUILTIN_PROFILES)
    workflows: dict[str, Budget] = {}
    tools: dict[str, ToolLimits] = {}
    scopes = ScopeTables()
    path = env.get(ENV_CONFIG, "").strip()
    if path:
        data = _read_toml(path, ENV_CONFIG)
        profiles, workflows, tools = _parse_config(data, f"{ENV_CONFIG}={path!r}")
        scopes = parse_scope_tables(data, f"{ENV_CONFIG}={path!r}")
    default = parse_inline_budget(env.get(ENV_BUDGET, ""), profiles)
    unpriced = env.get(ENV_UNPRICED, "").strip().lower() or "warn"
    if unpriced not in UNPRICED_POLICIES:
        raise ConfigError(f"{ENV_UNPRICED}={unpriced!r}: expected one of {', '.join(UNPRICED_POLICIES)}")
    check_switches(env)
    prices = env.get(ENV_PRICES, "").strip()
    if prices:
        try:
            load_price_file(prices)
        except PriceConfigError as e:
            raise ConfigError(str(e)) from None
    workflow = env.get(ENV_WORKFLOW, "").strip()
    if not workflow.isprintable():  # bytes not UTF-8 (lone surrogates) left it off every span
        raise ConfigError(f"{ENV_WORKFLOW}={workflow!r}: expected a name in printable text")
    return Config(
        default, parse_mode(env.get(ENV_MODE)), profiles, workflows, tools, unpriced, scopes, workflow
    )


_BOOLEAN = ("1", "0", "true", "false", "yes", "no", "on", "off")
# Variables read where they are used; checked here too, so that a bad value stops configure()
# (and ``opentelemetry-instrument``, with status 2) instead of being ignored with a warning.
_CHOICES: dict[str, tuple[str, ...]] = {
    ENV_ENFORCE_FOREIGN: _BOOLEAN,
    ENV_PROPAGATE_THREADS: _BOOLEAN,
    ENV_OPENAI_STREAM_USAGE: ("auto", "always", "never"),
    ENV_LITELLM_COST: ("budgetspan", "litellm"),
}


def check_switches(env: Mapping[str, str]) -> None:
    """The metrics port, address and multiprocess directory, the label caps, the tenant labels,
    the traces file (one spans can be appended to), the on/off and choice switches."""
    port = env.get(ENV_METRICS_PORT, "").strip()
    if port and count_at_most(port, 65535) < 0:
        raise ConfigError(
            f"{ENV_METRICS_PORT}={port[:40]!r}: expected a port number, 0 to 65535 (0: any free port)"
        )
    for name in (ENV_METRICS_MAX_LABEL_VALUES, ENV_METRICS_MAX_SERIES):
        raw = env.get(name, "").strip()
        if raw and count_at_most(raw, 999_999_999) < 1:
            raise ConfigError(f"{name}={raw[:40]!r}: expected a positive integer")
    tenants = env.get(ENV_METRICS_TENANTS, "").strip()
    if tenants.lower().startswith("top:") and count_at_most(tenants[4:], 999_999_999) < 1:
        raise ConfigError(
            f"{ENV_METRICS_TENANTS}={tenants[:40]!r}: expected tenant names (acme,globex) or top:N, "
            "N a positive integer"
        )
    traces = env.get(ENV_TRACES_FILE, "").strip()
    problem = _unwritable(traces) if traces else None
    if problem:
        raise ConfigError(f"{ENV_TRACES_FILE}={traces[:80]!r} {problem}; expected a file to append spans to")
    multiproc = env.get(ENV_PROMETHEUS_MULTIPROC_DIR, "")  # (as prometheus-client reads it)
    if multiproc and not (os.path.isdir(multiproc) and os.access(multiproc, os.W_OK)):
        raise ConfigError(f"{ENV_PROMETHEUS_MULTIPROC_DIR}={multiproc!r}: expected a writable directory")
    addr = env.get(ENV_METRICS_ADDR, "").strip()
    if addr and not is_host(addr):
        raise ConfigError(
            f"{ENV_METRICS_ADDR}={addr[:40]!r}: expected an IP address (127.0.0.1, 0.0.0.0, ::) or a host name"
        )
    for name, choices in _CHOICES.items():
        raw = env.get(name, "").strip()
        if raw and raw.lower() not in choices:
            raise ConfigError(f"{name}={raw[:40]!r}: expected one of {', '.join(choices)}")


def _unwritable(path: str) -> str | None:
    """Why spans cannot be appended to ``path`` (None: they can; missing directories are made)."""
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else "cannot be written"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # the exporter makes the missing directories
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be made ({parent!r} is not a directory)"
    return None if os.access(parent, os.W_OK) else f"cannot be made ({parent!r} cannot be written)"


_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_host(addr: str) -> bool:
    """An IP address, or a host name's syntax (not all digits: ``999.1.1.1`` is no address)."""
    with contextlib.suppress(ValueError):
        return bool(ipaddress.ip_address(addr))
    labels = addr.removesuffix(".").split(".")
    return len(addr) <= 253 and all(_LABEL.fullmatch(x) for x in labels) and not labels[-1].isdigit()


_current: Config | None = None


def get_config() -> Config:
    """The process configuration (read from the environment on first use)."""
    global _current
    if _current is None:
        _current = load_config()
    return _current


def set_config(config: Config | None) -> None:
    """Replace the process configuration (None: re-read the environment on next use)."""
    global _current
    _current = config


_capture_content = False


def refresh_capture_content(environ: Mapping[str, str] | None = None) -> bool:
    """Read the standard GenAI content switch; instrumentors call this when they instrument."""
    global _capture_content
    env = os.environ if environ is None else environ
    _capture_content = env.get(ENV_CAPTURE_CONTENT, "").strip().lower() in ("true", "1", "yes")
    return _capture_content


def capture_content() -> bool:
    """Whether prompts, completions and error messages may be recorded (off unless switched on)."""
    return _capture_content


refresh_capture_content()
