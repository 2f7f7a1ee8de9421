"""Single flight in one process: one computation per key, however many callers ask at once.

Threads wait on an event, asyncio tasks on a future of their own loop. The leader hands the
encoded entry to the callers that waited, so they get the answer even when the backend could not
store it (down, or the value too large). If the leader fails, each waiter tries again on its own:
an error is not an answer to share.
"""

from __future__ import annotations

import asyncio
import threading


class _Flight:
    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: bytes | None = None


class Flights:
    """The keys being computed right now, by threads and by asyncio tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, _Flight] = {}
        self._tasks: dict[tuple[int, str], asyncio.Future[bytes | None]] = {}

    # threads -------------------------------------------------------------------------------
    def join(self, key: str) -> _Flight | None:
        """None: this caller leads (computes, then ``land``). Otherwise the flight to ``wait`` on."""
        with self._lock:
            flight = self._threads.get(key)
            if flight is None:
                self._threads[key] = _Flight()
            return flight

    def land(self, key: str, entry: bytes | None) -> None:
        with self._lock:
            flight = self._threads.pop(key, None)
        if flight is not None:
            flight.entry = entry
            flight.done.set()

    @staticmethod
    def wait(flight: _Flight, timeout_s: float | None = None) -> bytes | None:
        flight.done.wait(timeout_s)
        return flight.entry

    # asyncio -------------------------------------------------------------------------------
    def ajoin(self, key: str) -> asyncio.Future[bytes | None] | None:
        loop = asyncio.get_running_loop()
        with self._lock:
            fut = self._tasks.get((id(loop), key))
            if fut is None:
                self._tasks[(id(loop), key)] = loop.create_future()
            return fut

    def aland(self, key: str, entry: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            fut = self._tasks.pop((id(loop), key), None)
        if fut is not None and not fut.done():
            fut.set_result(entry)


__all__ = ["Flights"]
