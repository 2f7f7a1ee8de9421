"""Who a run serves: tenant, user, permissions and conversation, on the run and its span."""

from __future__ import annotations

import pytest

import budgetspan
from budgetspan import attributes as A
from tests.conftest import Tracing


def test_identity_is_on_the_run_and_its_span(tracing: Tracing) -> None:
    with budgetspan.run(
        "w", tenant="acme", user="u1", permissions=["perm-alpha", "perm-beta"], conversation_id="c9"
    ) as r:
        assert (r.tenant, r.user, r.permissions, r.conversation_id) == (
            "acme",
            "u1",
            frozenset({"perm-alpha", "perm-beta"}),
            "c9",
        )
    (span,) = tracing.spans("invoke_agent w")
    assert span.attributes[A.TENANT_ID] == "acme"
    assert span.attributes[A.USER_ID] == "u1"
    assert "perm-alpha" not in str(dict(span.attributes))  # permissions are not exported


def test_nested_run_inherits_identity_unless_it_overrides(tracing: Tracing) -> None:
    with budgetspan.run("outer", tenant="acme", user="u1", permissions={"p"}, conversation_id="c"):
        with budgetspan.run("inner") as inner:
            assert (inner.tenant, inner.user, inner.permissions, inner.conversation_id) == (
                "acme",
                "u1",
                frozenset({"p"}),
                "c",
            )
        with budgetspan.run("other", tenant="globex") as other:
            assert (other.tenant, other.user) == ("globex", "u1")


def test_permissions_as_one_string_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="permissions"):
        budgetspan.run("w", permissions="admin")
