"""The generated otelcol-contrib configuration, checked structurally (no otelcol binary runs here):
every pipeline names defined components, each priced model's statement carries budgetspan's own
rate, content keys are deleted, refusal traces are kept, and the first tier routes by trace id."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import yaml

from budgetspan import attributes as A
from budgetspan.accounting.pricing import default_resolver
from budgetspan.collector.otelcol import generate


def _components_defined(config: dict) -> None:  # type: ignore[type-arg]
    defined = set(config["receivers"]) | set(config["processors"]) | set(config["exporters"])
    defined |= set(config.get("connectors", {}))
    for name, pipe in config["service"]["pipelines"].items():
        for part in ("receivers", "processors", "exporters"):
            missing = set(pipe.get(part, [])) - defined
            assert not missing, (name, part, missing)
    connectors = set(config.get("connectors", {}))
    used_as_exporter = {e for p in config["service"]["pipelines"].values() for e in p["exporters"]}
    used_as_receiver = {r for p in config["service"]["pipelines"].values() for r in p["receivers"]}
    assert connectors <= used_as_exporter & used_as_receiver  # a connector joins two pipelines


def test_the_command_prints_a_valid_configuration_and_says_which_models_stay_unpriced() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "budgetspan.cli",
            "collector-config",
            "--models",
            "openai/gpt-4o-mini,acme/nope",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "No flat price known for: acme/nope" in out
    config = yaml.safe_load(out)
    _components_defined(config)
    assert "nope" not in yaml.safe_dump(config["processors"])


def test_prices_are_budgetspans_own_and_never_overwrite_a_cost() -> None:
    config = generate(["openai/gpt-4o-mini"])
    statements = config["processors"]["transform/budgetspan"]["trace_statements"][0]["statements"]
    price = [s for s in statements if s.startswith(f'set(attributes["{A.GEN_AI_USAGE_COST}"]')]
    assert len(price) == 1
    m = re.search(r"\* ([0-9.e-]+) \+ Double\(.*\) \* ([0-9.e-]+)\) where", price[0])
    assert m
    resolver = default_resolver()
    assert math.isclose(float(m.group(1)) * 1e6, resolver.cost("openai", "gpt-4o-mini", 1_000_000, 0) or -1)
    assert math.isclose(float(m.group(2)) * 1e6, resolver.cost("openai", "gpt-4o-mini", 0, 1_000_000) or -1)
    assert f'attributes["{A.GEN_AI_USAGE_COST}"] == nil' in price[0]
    assert '"gpt-4o-mini"' in price[0]
    # normalisation comes before pricing, phase tagging too; redaction after
    first_price = statements.index(price[0]) - 1
    assert any("gen_ai.usage.prompt_tokens" in s for s in statements[:first_price])
    assert any(f'set(attributes["{A.PHASE}"], "model_decision")' in s for s in statements[:first_price])
    assert 'delete_key(attributes, "gen_ai.input.messages")' in statements[first_price:]
    events = config["processors"]["transform/budgetspan"]["trace_statements"][1]
    assert events["context"] == "spanevent" and any("gen_ai.user.message" in s for s in events["statements"])


def test_metrics_carry_budgetspans_labels_and_refusal_traces_are_always_kept() -> None:
    config = generate(["openai/gpt-4o-mini"])
    sums = config["connectors"]["sum"]["spans"]
    assert sums["budgetspan.cost_usd"]["source_attribute"] == A.GEN_AI_USAGE_COST
    labels = config["processors"]["transform/budgetspan_labels"]["metric_statements"][0]["statements"]
    for label in (A.L_WORKFLOW, A.L_MODEL, A.L_PROVIDER, A.L_PHASE, A.L_SERVICE):
        assert any(s.startswith(f'set(attributes["{label}"]') for s in labels), label
    policies = config["processors"]["tail_sampling"]["policies"]
    keep = policies[0]["ottl_condition"]["span"]
    assert f'attributes["{A.WOULD_REFUSE}"] != nil' in keep
    assert f'attributes["{A.RUN_OUTCOME}"] == "budget_exhausted"' in keep
    assert policies[-1]["type"] == "probabilistic"


def test_the_first_tier_of_several_routes_by_trace_id() -> None:
    config = generate(["openai/gpt-4o-mini"], load_balance="tier2-a:4317, tier2-b:4317")
    _components_defined(config)
    lb = config["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert lb["resolver"]["static"]["hostnames"] == ["tier2-a:4317", "tier2-b:4317"]
    assert list(config["service"]["pipelines"]) == ["traces/route"]
