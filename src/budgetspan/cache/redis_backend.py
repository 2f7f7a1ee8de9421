"""The Redis backend: entries shared between processes, expired by Redis (TTL).

Key names are ``{prefix}e:{digest}`` (entries), ``{prefix}g:{digest}`` (generation counters) and
``{prefix}l:{digest}`` (single-flight locks): digests only, never argument text or ids.
Invalidation bumps a generation counter, so the entries under it are never read again and age
out by their TTL; nothing is scanned or deleted.
"""

from __future__ import annotations

import uuid
from typing import Any

DEFAULT_PREFIX = "budgetspan:cache:"
DEFAULT_TIMEOUT_S = 0.5  # a Redis that does not answer within this is an outage: the cache is bypassed

# Delete a lock only if this process still holds it (it may have expired and been taken since).
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisCache:
    """Entries in Redis. ``client``: a ``redis.Redis`` (bytes replies) or a URL; made from a URL,
    the client gives up after ``timeout_s`` so an outage costs the call little."""

    name = "redis"

    def __init__(
        self, client: Any, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if isinstance(client, str):
            import redis

            client = redis.Redis.from_url(client, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.client = client
        self.prefix = prefix
        self._token = uuid.uuid4().hex.encode()  # this process's lock value
        self._unlock = client.register_script(_UNLOCK)

    def get(self, key: str) -> bytes | None:
        value = self.client.get(self.prefix + "e:" + key)
        return bytes(value) if value is not None else None

    def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        name = self.prefix + "e:" + key
        if ttl_s is None:
            self.client.set(name, value)
        else:
            self.client.set(name, value, px=max(1, int(ttl_s * 1000)))

    def generations(self, names: list[str]) -> list[int]:
        values = self.client.mget([self.prefix + "g:" + n for n in names])
        return [int(v) if v is not None else 0 for v in values]

    def bump(self, name: str) -> None:
        self.client.incr(self.prefix + "g:" + name)

    def try_lock(self, key: str, ttl_s: float) -> bool:
        return bool(
            self.client.set(self.prefix + "l:" + key, self._token, nx=True, px=max(1, int(ttl_s * 1000)))
        )

    def unlock(self, key: str) -> None:
        self._unlock(keys=[self.prefix + "l:" + key], args=[self._token])


__all__ = ["RedisCache"]
