"""Running the ledger's scripts on Redis: one round trip each, every wait bounded.

**Bounded.** Every call waits for Redis at most ``timeout_s`` (2 s by default), and no longer than
the run's remaining wall-clock time (at least 0.1 s, so that a call at the deadline still gets its
refusal from the server). The ledger talks to Redis through a connection pool of its own, made
with the client's settings, socket and connect timeouts of at most ``timeout_s`` and no retries
(redis-py's retries with back-off would multiply the bound), so that connecting and the connection
handshake are bounded too.

**Loaded once.** On Redis 7 the scripts are one function library (``FUNCTION LOAD``), called with
``FCALL``: the helpers and tables they share are built when the library loads, not on every call
(bench/README.md). A server without the library (restarted, flushed with ``FUNCTION FLUSH``) gets
it again and the call is retried once; a server without functions (Redis 6) or a user not allowed
to load them gets each script with ``EVALSHA`` (the script itself when the server lacks it).

**Which server.** Each new connection (and each reconnection) asks ``INFO`` for the server's
``run_id`` before any script goes on it: another id means a restart or a failover, whose copy of a
run may be older than what this process heard (a snapshot, replication lag), and ``on_change`` is
called first (``RedisLedger`` sets its open runs back). A server that evicts keys when full
(``maxmemory`` with a policy other than ``noeviction``) can drop a scope window unseen: said once
per server (a warning and an internal error). A user not allowed ``INFO`` is not asked again.

A call whose wait runs out drops its connection (a late reply must never be read as the answer
to the next command); its script may still run when the server wakes, which counts a call that
was not made (an overshoot of the count, never an undercount). Such a failure, after the script
was sent, is marked (``may_have_run``): a settlement must not be sent again (it would be applied
twice, giving back another call's worst case).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from budgetspan import events
from budgetspan.accounting.redis_library import BODIES, CORE

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
        self._response_error = redis.exceptions.ResponseError
        self._timeout = redis.exceptions.TimeoutError
        #: Whether to call the library's functions (until the server says it cannot have them).
        self.functions = True
        #: When this process last refreshed each scope window without an end (``redis_scopes``).
        self.refreshed: dict[str, float] = {}
        #: The ``run_id`` of the server last connected to; ``on_change(before, after)`` is called
        #: when a new connection finds another (``_connected``).
        self.server_id: bytes | None = None
        self.on_change: Callable[[bytes, bytes], None] | None = None
        self._ask_id = True
        self._id_lock = threading.Lock()

    def run(self, script: Script, key: str | tuple[Any, ...], args: Sequence[Any], within_s: float) -> Any:
        """The script's reply, waited for at most ``within_s``; the connection is dropped on any
        failure (a late reply must never be read as the answer to the next command)."""
        conn = self.pool.get_connection(*self._checkout_args)
        sent = False
        try:
            if not getattr(conn, "_budgetspan_watched", False):
                conn._budgetspan_watched = True
                conn.register_connect_callback(self._connected)
                self._connected(conn)
            sent = True
            if script.function and self.functions:
                try:
                    return self._ask(conn, within_s, script.fcall(key, args))
                except self._response_error as e:
                    if _fcall_denied(e):  # a user allowed EVALSHA but not FCALL: scripts from now on
                        log.warning("budgetspan: Redis refuses the ledger's functions (%s); using scripts", e)
                        self.functions = False
                    elif not _function_missing(e):
                        raise
                    elif self._load(conn, within_s):  # restarted or flushed: load it and retry once
                        return self._ask(conn, within_s, script.fcall(key, args))
            try:
                return self._ask(conn, within_s, script.evalsha(key, args))
            except self._no_script:  # a restarted or flushed server: send the script itself
                keys = (key,) if type(key) is str else key
                return self._ask(conn, within_s, pack(("EVAL", script.body, len(keys), *keys, *args)))
        except BaseException as e:
            conn.disconnect()
            if sent and not isinstance(e, self._response_error):  # (an error reply: it did not run)
                e.budgetspan_may_have_run = True  # type: ignore[attr-defined]
            raise
        finally:
            self.pool.release(conn)

    def _load(self, conn: Any, within_s: float) -> bool:
        """Load the library; False (and scripts from now on) where the server refuses it."""
        try:
            self._ask(conn, within_s, pack(("FUNCTION", "LOAD", "REPLACE", LIBRARY)))
            return True
        except self._response_error as e:
            log.warning("budgetspan: Redis cannot load the ledger's functions (%s); using scripts", e)
            self.functions = False
            return False

    def _connected(self, conn: Any) -> None:
        """A connection made or made again (redis-py calls this from ``connect``): which server
        answers; another one than before is reported (``on_change``) before any script is sent."""
        if not self._ask_id:
            return
        try:
            info = self._ask(conn, self.timeout_s, pack(("INFO",)))
        except self._response_error:  # INFO not allowed for this user, or renamed
            self._ask_id = False
            return
        except BaseException:
            conn.disconnect()
            raise
        text = info if isinstance(info, bytes) else str(info).encode()
        found = re.search(rb"run_id:(\w+)", text)
        if found is None:
            return
        with self._id_lock:
            before, self.server_id = self.server_id, found.group(1)
        if before != found.group(1):
            _evictions(text)
        if before is not None and before != found.group(1) and self.on_change is not None:
            self.on_change(before, found.group(1))

    def _ask(self, conn: Any, within_s: float, command: bytes) -> Any:
        conn.send_packed_command([command])
        if not conn.can_read(timeout=within_s):
            raise self._timeout(f"no reply from Redis within {within_s:.3g} s")
        return conn.read_response(disable_decoding=True)


def may_have_run(error: BaseException) -> bool:
    """Whether ``Server.run`` failed with ``error`` after sending the script (a timeout, a
    connection lost): the server may run it, or have run it, all the same."""
    return bool(getattr(error, "budgetspan_may_have_run", False))


def _evictions(info: bytes) -> None:
    """Say so when the server (``INFO``'s text) may evict keys: a scope window (a tenant's day)
    dropped when Redis is full starts again from zero, and no process can see it go."""
    limit = re.search(rb"\nmaxmemory:(\d+)", info)
    policy = re.search(rb"\nmaxmemory_policy:([\w-]+)", info)
    if limit is None or policy is None or int(limit.group(1)) == 0 or policy.group(1) == b"noeviction":
        return
    log.warning(
        "budgetspan: the Redis of the ledger evicts keys when full (maxmemory-policy %s, maxmemory "
        "%s bytes): it can drop a run's or a scope window's record, and a tenant's or user's "
        "window then starts again from zero unseen. Set maxmemory-policy noeviction on it",
        policy.group(1).decode(),
        limit.group(1).decode(),
    )
    events.emit("on_internal_error", "redis_ledger")


class Packed(bytes):
    """An argument in the Redis protocol already (``packed``): ``pack`` takes it as it is. For
    what a caller sends call after call (a scope window's key and budget)."""


def packed(arg: str | bytes) -> Packed:
    data = arg.encode() if isinstance(arg, str) else arg
    return Packed(b"$%d\r\n%b\r\n" % (len(data), data))


#: Short strings and numbers packed already, by type (``pack``): most of the ledger's
#: arguments are the same few flags, zeros and names call after call.
_PACKED: dict[type, dict[Any, bytes]] = {str: {}, int: {}, float: {}}
_PACKED_MAX = 4096


def pack(args: Sequence[Any], head: bytes = b"", count: int = 0) -> bytes:
    """A command in the Redis protocol: ``count`` arguments already packed in ``head``, then
    ``args`` (strings, bytes, numbers, ``Packed``). The ledger's arguments are a few short strings and numbers:
    this costs a fraction of what redis-py's general packer does for them."""
    parts = [b"*%d\r\n" % (count + len(args)), head]
    for arg in args:
        kind = type(arg)
        if kind is Packed:
            parts.append(arg)
            continue
        known = _PACKED.get(kind)
        item = None if known is None else known.get(arg)
        if item is None:
            data = arg.encode() if kind is str else arg if kind is bytes else repr(arg).encode()
            item = b"$%d\r\n%b\r\n" % (len(data), data)
            if known is not None and len(known) < _PACKED_MAX and len(data) <= 64:
                known[arg] = item
        parts.append(item)
    return b"".join(parts)


def _fcall_denied(error: BaseException) -> bool:
    """Whether an error says this Redis user may not call functions (an ACL without ``FCALL``)."""
    text = str(error).lower()
    return "no permissions" in text and "'fcall" in text


def _function_missing(error: BaseException) -> bool:
    """Whether an error says the library is not loaded (or the server has no functions)."""
    text = str(error).lower()
    return "function not found" in text or "unknown command" in text


@dataclass(frozen=True)
class Script:
    """A Lua script: a function of the library (``FCALL``), or called by its SHA1 (``EVALSHA``),
    and sent whole when the server lacks it."""

    body: str
    sha: str
    #: ``EVALSHA <sha> 1`` in the Redis protocol: the start of every call of the script.
    head: bytes
    #: The library function that runs it ('' none), and ``FCALL <function> 1`` packed.
    function: str = ""
    function_head: bytes = b""

    @classmethod
    def of(cls, body: str, function: str = "") -> Script:
        sha = hashlib.sha1(body.encode()).hexdigest()
        head = pack(("EVALSHA", sha, 1))[len(b"*3\r\n") :]
        function_head = pack(("FCALL", function, 1))[len(b"*3\r\n") :] if function else b""
        return cls(body, sha, head, function, function_head)

    def evalsha(self, key: str | tuple[Any, ...], args: Sequence[Any]) -> bytes:
        """The call on one key (the run's), or on several (the run's and its scope windows')."""
        if type(key) is str:
            return pack((key, *args), self.head, 3)
        return pack(("EVALSHA", self.sha, len(key), *key, *args))

    def fcall(self, key: str | tuple[Any, ...], args: Sequence[Any]) -> bytes:
        """The same call of the library's function."""
        if type(key) is str:
            return pack((key, *args), self.function_head, 3)
        return pack(("FCALL", self.function, len(key), *key, *args))


#: The library's version: its functions' names change with its code, so that processes running
#: two versions of budgetspan against one server each call their own.
VERSION = hashlib.sha1(CORE.encode()).hexdigest()[:12]
#: The functions that only read, registered ``no-writes``: Redis runs them when it is full
#: (``maxmemory`` with ``noeviction`` refuses every other function), so ``spend()`` still answers.
READ_ONLY = ("window",)
LIBRARY = f"#!lua name=budgetspan_{VERSION}\n{CORE}\n" + "".join(
    f"redis.register_function{{function_name='budgetspan_{VERSION}_{name}', "
    f"callback=function(keys, argv) return call(op_{name}, keys, argv) end"
    + (", flags={'no-writes'}}\n" if name in READ_ONLY else "}\n")
    for name in BODIES
)
SCRIPTS = {
    name: Script.of(f"{CORE}\nreturn call(op_{name}, KEYS, ARGV)\n", f"budgetspan_{VERSION}_{name}")
    for name in BODIES
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
