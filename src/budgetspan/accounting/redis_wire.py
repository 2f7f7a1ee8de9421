"""Running the ledger's scripts on Redis: one round trip each, every wait bounded.

**Bounded.** Every call waits for Redis at most ``timeout_s`` (2 s by default), and no longer than
the run's remaining wall-clock time (at least 0.1 s, so that a call at the deadline still gets its
refusal from the server). The ledger talks to Redis through a connection pool of its own, made
with the client's settings, socket and connect timeouts of at most ``timeout_s`` and no retries
(redis-py's retries with back-off would multiply the bound), so that connecting and the connection
handshake are bounded too.

A call whose wait runs out drops its connection (a late reply must never be read as the answer
to the next command); its script may still run when the server wakes, which counts a call that
was not made (an overshoot of the count, never an undercount).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from budgetspan.accounting.redis_scripts import CANCEL, EXTEND, OPEN, READ, RESERVE, SETTLE, SETTLE_RESERVE

log = logging.getLogger(__name__)


class Server:
    """Runs the ledger's scripts on Redis: one round trip each, every wait bounded."""

    def __init__(self, client: Any, timeout_s: float) -> None:
        import redis

        self.timeout_s = timeout_s
        self.pool = pool_for(client, timeout_s)
        # redis-py before 5.3 wants a command name to hand out a connection; later ones warn about it
        name = inspect.signature(self.pool.get_connection).parameters.get("command_name")
        needs_name = name is not None and name.default is inspect.Parameter.empty
        self._checkout_args: tuple[str, ...] = ("EVALSHA",) if needs_name else ()
        self._no_script = redis.exceptions.NoScriptError
        self._timeout = redis.exceptions.TimeoutError

    def run(self, script: Script, key: str | tuple[str, ...], args: Sequence[Any], within_s: float) -> Any:
        """The script's reply, waited for at most ``within_s``; the connection is dropped on any
        failure (a late reply must never be read as the answer to the next command)."""
        conn = self.pool.get_connection(*self._checkout_args)
        try:
            try:
                return self._ask(conn, within_s, script.evalsha(key, args))
            except self._no_script:  # a restarted or flushed server: send the script itself
                keys = (key,) if type(key) is str else key
                return self._ask(conn, within_s, pack(("EVAL", script.body, len(keys), *keys, *args)))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.pool.release(conn)

    def _ask(self, conn: Any, within_s: float, command: bytes) -> Any:
        conn.send_packed_command([command])
        if not conn.can_read(timeout=within_s):
            raise self._timeout(f"no reply from Redis within {within_s:.3g} s")
        return conn.read_response(disable_decoding=True)


def pack(args: Sequence[Any], head: bytes = b"", count: int = 0) -> bytes:
    """A command in the Redis protocol: ``count`` arguments already packed in ``head``, then
    ``args`` (strings, bytes, numbers). The ledger's arguments are a few short strings and numbers:
    this costs half of what redis-py's general packer does for them."""
    parts = [b"*%d\r\n" % (count + len(args)), head]
    for arg in args:
        kind = type(arg)
        data = arg.encode() if kind is str else arg if kind is bytes else repr(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True)
class Script:
    """A Lua script, called by its SHA1 (EVALSHA) and sent whole when the server lacks it."""

    body: str
    sha: str
    #: ``EVALSHA <sha> 1`` in the Redis protocol: the start of every call of the script.
    head: bytes

    @classmethod
    def of(cls, body: str) -> Script:
        sha = hashlib.sha1(body.encode()).hexdigest()
        return cls(body, sha, pack(("EVALSHA", sha, 1))[len(b"*3\r\n") :])

    def evalsha(self, key: str | tuple[str, ...], args: Sequence[Any]) -> bytes:
        """The call on one key (the run's), or on several (the run's and its scope windows')."""
        if type(key) is str:
            return pack((key, *args), self.head, 3)
        return pack(("EVALSHA", self.sha, len(key), *key, *args))


SCRIPTS = {
    name: Script.of(body)
    for name, body in (
        ("reserve", RESERVE),
        ("settle", SETTLE),
        ("settle_reserve", SETTLE_RESERVE),
        ("open", OPEN),
        ("cancel", CANCEL),
        ("read", READ),
        ("extend", EXTEND),
    )
}

#: Connection settings redis-py (8.x) derives per pool: a copy of a pool must make its own.
_PER_POOL_SETTINGS = ("orig_", "maint_notifications_pool_handler", "himport_registry")


def pool_for(client: Any, timeout_s: float) -> Any:
    """A connection pool of the ledger's own, with the client's settings (address, database,
    credentials, TLS...), socket and connect timeouts of at most ``timeout_s``, and no retries
    (redis-py 6+ retries a failed connect three times with back-off: seconds, not ``timeout_s``).
    A pool of another kind (Sentinel, cluster) is used as it is."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = client.connection_pool
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        log.warning(
            "budgetspan: RedisLedger uses the client's %s as it is: connecting is bounded only by "
            "its own timeouts and retries",
            type(pool).__name__,
        )
        return pool
    settings = {k: v for k, v in pool.connection_kwargs.items() if not k.startswith(_PER_POOL_SETTINGS)}
    for name in ("socket_timeout", "socket_connect_timeout"):
        own = settings.get(name)
        settings[name] = timeout_s if own is None else min(own, timeout_s)
    settings.update(retry=Retry(NoBackoff(), 0), retry_on_error=[], retry_on_timeout=False)
    return redis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=pool.max_connections, **settings
    )
