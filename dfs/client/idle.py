"""Idle connections kept per server for the next request, shared by the threads that call
(the HTTP connections of dfs/client/inlineio.py, the Unix sockets of dfs/client/localread.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
C = TypeVar("C")


class IdlePool(Generic[K, C]):
    """At most `max_idle` idle connections per key; the rest are closed when given back."""

    def __init__(self, max_idle: int, close: Callable[[C], None]) -> None:
        self.max_idle = max_idle
        self._close = close
        self._idle: dict[K, list[C]] = {}
        self._lock = threading.Lock()
        self.closed = False

    def take(self, key: K) -> C | None:
        """An idle connection to `key`, or None: make a new one. ConnectionError once closed."""
        with self._lock:
            if self.closed:
                raise ConnectionError("the client is closed")
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give_back(self, key: K, conn: C) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self.closed and len(idle) < self.max_idle:
                idle.append(conn)
                return
        self._close(conn)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                self._close(conn)
