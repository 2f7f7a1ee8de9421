"""Where entries live: the backend protocol and the in-memory backend (LRU, bounded in bytes).

A backend stores opaque bytes under digests (``keys``), keeps the generation counters that
invalidation bumps, and offers a short lock for single flight across processes. It never decides
what is fresh or who may read: the core does, the same way for every backend.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

ENTRY_OVERHEAD = 96  # bytes counted per entry on top of its key and value (dict slot, tuple, floats)


class Backend(Protocol):
    """What the cache needs from a store. Any exception it raises is an outage: the cache is
    bypassed, the call runs, nothing fails."""

    name: str

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl_s: float | None) -> None: ...
    def generations(self, names: list[str]) -> list[int]: ...
    def bump(self, name: str) -> None: ...
    def try_lock(self, key: str, ttl_s: float) -> bool: ...
    def unlock(self, key: str) -> None: ...


class MemoryCache:
    """One process's cache: least recently used entries go first once ``max_bytes`` is reached.

    ``clock`` (seconds) decides expiry; tests pass a controllable one."""

    name = "memory"

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, clock: Callable[[], float] = time.time) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes: a positive number of bytes")
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            value, expires = found
            if expires is not None and self.clock() >= expires:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            return  # larger than the whole cache: not kept
        expires = self.clock() + ttl_s if ttl_s is not None else None
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (value, expires)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= self._size(key, value)

    def generations(self, names: list[str]) -> list[int]:
        with self._lock:
            return [self._generations.get(n, 0) for n in names]

    def bump(self, name: str) -> None:
        with self._lock:
            self._generations[name] = self._generations.get(name, 0) + 1

    def try_lock(self, key: str, ttl_s: float) -> bool:
        return True  # one process: the in-process single flight already holds the key

    def unlock(self, key: str) -> None:
        return None


__all__ = ["Backend", "MemoryCache"]
