"""A blocking facade over `Client` for threads (FUSE callbacks) and the CLI.

One event loop runs in a daemon thread; every call is submitted to it with
`asyncio.run_coroutine_threadsafe`, so the protocol exists once, in the async client. Coroutine
methods become blocking methods, async iterators become iterators, and objects the client returns
(`FileHandle`) come back wrapped the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from dfs.client.client import Client
from dfs.client.files import FileHandle


class LoopThread:
    """An asyncio loop in a daemon thread, and `run()` to wait for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dfs-client-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> concurrent.futures.Future:
        """Start `coro` on the loop and return at once; `.result()` waits for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def iterate(self, agen: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(agen.aclose())  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class _SyncProxy:
    """Wraps an async object: coroutine methods block, async generators iterate, results are wrapped."""

    def __init__(self, target: Any, runner: LoopThread) -> None:
        self._target = target
        self._runner = runner

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, FileHandle):
            return SyncFileHandle(value, self._runner)
        return value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            @functools.wraps(attr)
            def blocking(*args: Any, **kwargs: Any) -> Any:
                return self._wrap(self._runner.run(attr(*args, **kwargs)))
            return blocking
        if inspect.isasyncgenfunction(attr):
            @functools.wraps(attr)
            def iterating(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return self._runner.iterate(attr(*args, **kwargs))
            return iterating
        return attr


class SyncFileHandle(_SyncProxy):
    def __enter__(self) -> SyncFileHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncClient(_SyncProxy):
    """`with SyncClient(url) as fs: fs.stat("/a")` — the whole `Client` API, blocking."""

    def __init__(self, master_url: str, **options: Any) -> None:
        runner = LoopThread()
        client = Client(master_url, **options)
        super().__init__(client, runner)
        try:
            runner.run(client.start())
        except BaseException:
            runner.run(client.close())
            runner.stop()
            raise

    def acting_for(self, uid: int, gid: int, groups: tuple[int, ...] = ()) -> _SyncProxy:
        """Blocking view of `Client.acting_for` (same connections; not to be shut down)."""
        return _SyncProxy(self._target.acting_for(uid, gid, groups), self._runner)

    def with_key(self, key: str) -> _SyncProxy:
        """Blocking view of `Client.with_key`."""
        return _SyncProxy(self._target.with_key(key), self._runner)

    def shutdown(self) -> None:
        self._runner.run(self._target.close())
        self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
