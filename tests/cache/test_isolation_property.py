"""The cache's promise, as a property over random callers: no value is ever returned to a caller
whose tenant, principal, permission set, tool version or data version differs from the writer's
(as the scope requires), and nothing is returned past its freshness (a controllable clock)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import budgetspan
from budgetspan.cache.backend import MemoryCache

TTL = 10.0
TENANTS = st.sampled_from([None, "acme", "globex", "initech"])
USERS = st.sampled_from([None, "ann", "bob"])
PERMS = st.frozensets(st.sampled_from(["read", "write", "admin"]), max_size=3)
ARGS = st.one_of(
    st.sampled_from(["q1", "q2"]),
    st.dictionaries(st.sampled_from(["k", "page"]), st.integers(0, 2), max_size=2),
    st.lists(st.integers(0, 1), max_size=2),
)


@st.composite
def callers(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A few callers, most of them one caller with one thing changed (tenant, user or permission
    set), so that callers who differ in one respect only often ask the same thing within the TTL."""
    base = (draw(TENANTS), draw(USERS), draw(PERMS))
    found = [base]
    for what in draw(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=2, max_size=3)):
        other = list(base)
        if what == 3:
            other = [draw(TENANTS), draw(USERS), draw(PERMS)]
        else:
            other[what] = draw((TENANTS, USERS, PERMS)[what])
        found.append(tuple(other))
    return found


CALLERS = callers()
OPS = st.lists(
    st.tuples(
        st.sampled_from(["global", "tenant", "user"]),  # scope
        st.integers(0, 3),  # caller
        st.sampled_from(["1", "2"]),  # tool version
        st.sampled_from(["idx-a", "idx-b"]),  # the caller's data version
        st.integers(0, 1),  # argument
        st.sampled_from([0.0, 0.0, 0.5, 3.0, 9.9, 10.0, 25.0]),  # clock advance before the call
    ),
    min_size=10,
    max_size=40,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(CALLERS, st.lists(ARGS, min_size=3, max_size=3), OPS)
def test_no_value_crosses_identity_version_or_freshness(
    callers: list[tuple[Any, ...]], args: list[Any], ops: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    backend = MemoryCache(clock=clock)
    data_version = ["idx-a"]
    computed: list[dict[str, Any]] = []

    def make(scope: str, version: str) -> Any:
        def answer(arg: Any) -> dict[str, Any]:
            run = budgetspan.current_run()
            assert run is not None
            value = {
                "scope": scope,
                "tenant": run.tenant,
                "user": run.user,
                "perms": sorted(run.permissions),
                "version": version,
                "data_version": data_version[0],
                "arg": arg,
                "written_at": clock.now,
                "n": len(computed),
            }
            computed.append(value)
            return value

        cache = budgetspan.Cache(
            scope,
            ttl_s=TTL,
            version=version,
            data_version=lambda: data_version[0],
            backend=backend,
            clock=clock,
        )
        return budgetspan.cached(answer, name="lookup", cache=cache)

    tools = {(s, v): make(s, v) for s in ("global", "tenant", "user") for v in ("1", "2")}
    for scope, who, version, dv, which, advance in ops:
        tenant, user, perms = callers[who % len(callers)]
        arg = args[which]
        clock.now += advance
        data_version[0] = dv
        before = len(computed)
        with budgetspan.run("prop", tenant=tenant, user=user, permissions=perms):
            got = tools[(scope, version)](arg)
        fresh = len(computed) > before
        assert got["arg"] == (list(arg) if isinstance(arg, tuple) else arg)
        assert got["scope"] == scope and got["version"] == version and got["data_version"] == dv
        assert clock.now - got["written_at"] < TTL, "returned past its freshness"
        if scope in ("tenant", "user"):
            assert got["tenant"] == tenant and got["perms"] == sorted(perms)
            if tenant is None:
                assert fresh, "a scope the run has no identity for must never be answered from the cache"
        if scope == "user":
            assert got["user"] == user
            if user is None:
                assert fresh
        if not fresh:
            assert got == computed[got["n"]], "a hit returns exactly what was written"
