"""The README's examples, taken from README.md itself and run: a user copies them as they are, so
an edit that breaks one (a renamed key, a changed default, a limit read differently) fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import budgetspan
from budgetspan import config as bs_config
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Spend
from budgetspan.report.plan import load_plan

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block(lang: str, marker: str) -> str:
    """The one ```lang block of the README that contains ``marker``."""
    found = [b for b in re.findall(rf"```{lang}\n(.*?)```", README, re.S) if marker in b]
    assert len(found) == 1, f"{len(found)} ```{lang} blocks contain {marker!r}"
    return found[0]


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    monkeypatch.setenv("BUDGETSPAN_CONFIG", str(path))
    bs_config.set_config(None)


def _scopes(run: Any) -> dict[str, tuple[str, dict[str, float], str, str, float | None]]:
    return {
        s.kind: (
            s.name,
            s.limits.budget.limits(),
            s.limits.window.adjective,
            s.limits.window.tz,
            s.limits.warn_at,
        )
        for s in run.scopes
    }


def test_the_scope_config_file_example_gives_the_budgets_it_says(
    scope_clock: list[float], tracing: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, monkeypatch, block("toml", "[tenants.acme]"))
    with budgetspan.run("triage", tenant="acme", user="ann", conversation_id="s-1") as run:
        assert run.budget.max_model_calls == 8  # [workflows.triage]: the per-run budget
        assert _scopes(run) == {
            "tenant": ("acme", {"max_cost_usd": 200}, "daily", "Europe/Paris", 0.8),
            "user": ("ann", {"max_total_tokens": 2_000_000}, "monthly", "UTC", None),  # [users.default]
            "workflow": ("triage", {"max_cost_usd": 50}, "hourly", "UTC", None),  # [workflows.triage.window]
        }
    with budgetspan.run("chat", tenant="globex") as run:  # [tenants.default]
        assert _scopes(run) == {"tenant": ("globex", {"max_cost_usd": 5}, "daily", "UTC", None)}
        assert run.remaining_text() == "tenant globex: $5.00 of $5.00 left of its daily budget"


class _Plans:
    def budget_for(self, name: str) -> Budget | None:
        return Budget(max_model_calls=3) if name == "globex" else None


def test_the_scope_code_example_runs_and_spend_answers(scope_clock: list[float], tracing: object) -> None:
    namespace: dict[str, Any] = {"plans": _Plans(), "yesterday_ts": scope_clock[0] - 86_400}
    exec(block("python", 'set_scope_budget("tenant", "acme"'), namespace)  # the README's own code
    with budgetspan.run("chat", tenant="acme", user="ann", conversation_id="s-1") as run:
        assert {s.kind for s in run.scopes} == {"tenant", "conversation"}  # ann: no user budget
        run.commit(run.reserve(CallKind.MODEL), Spend(input_tokens=900, output_tokens=100, cost_usd=0.5))
        assert run.remaining_text() == (
            "conversation s-1: 1,999,000 of 2,000,000 tokens left of its total budget; "
            "tenant acme: $199.50 of $200.00 left of its daily budget"
        )
    assert budgetspan.spend(tenant="acme", window="day").cost_usd == pytest.approx(0.5)
    with pytest.raises(ValueError, match="user ann has no budget"):  # (nothing kept: not 0)
        budgetspan.spend(user="ann")
    with budgetspan.run("chat", tenant="globex") as run:  # from the lookup
        assert _scopes(run) == {"tenant": ("globex", {"max_model_calls": 3}, "total", "UTC", None)}


def test_the_tool_limits_and_the_plan_examples_load(
    tracing: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, monkeypatch, block("toml", "[tools.lookup_order]"))
    with budgetspan.run("any") as run:
        limits = run.budget.tools["lookup_order"]
        assert (limits.max_calls, limits.timeout_s, limits.max_retries) == (3, 2, 1)
    plan = tmp_path / "plan.toml"
    plan.write_text(block("toml", "[workflows.resolve_ticket]"))
    assert load_plan(str(plan))["resolve_ticket"]["model_calls"] == 2


def test_the_at_a_limit_example_runs(tracing: object) -> None:
    namespace: dict[str, Any] = {"budgetspan": budgetspan, "SYSTEM": "You resolve tickets."}
    namespace["approved_by_a_person"] = lambda run_id: True
    exec(block("python", "def supervisor("), namespace)  # the README's own code
    assert namespace["prompt"] == "You resolve tickets.\n6 of 6 model calls and $0.25 of $0.25 left"
    assert namespace["run"].outcome == "success"
