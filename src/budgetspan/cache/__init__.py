"""budgetspan's cache: results shared only between callers who may see them, and what they saved.

Layer: over ``runs`` (the identity of a cache key, tenant, principal and permission set, comes
from the current run) and under ``calls`` (``@budgetspan.tool(cache=...)`` uses it). Modules:

- ``keys``: scopes, canonical arguments, the SHA-256 key; never built by hand;
- ``policy``: ``budgetspan.Cache``, a tool's declaration (scope, freshness, version, backend);
- ``backend``: the store protocol and the in-memory LRU bounded in bytes; ``redis_backend``:
  entries shared between processes, invalidation by generation counters;
- ``flight``: one computation per key in a process; ``meter``: what a computation cost;
- ``core``: one call's lookup, single flight, store and telemetry; ``wrap``: ``budgetspan.cached``.

Rules: a scope whose identity the run lacks is not cached (never cached more widely); arguments
or results with no canonical JSON form are not cached; a backend outage bypasses the cache and
never fails the call; a hit is not a tool call (no reservation against ``max_tool_calls``).
"""
