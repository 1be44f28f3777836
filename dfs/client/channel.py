"""Master calls over the master's WebSocket channel (master/channel.py), made from the calling thread.

The mount's FUSE threads make one small namespace call after another. Through the asyncio client
each costs an HTTP request and two thread hops to the loop and back, ~450 µs on top of the
master's own work; over a WebSocket that is already open it costs a frame each way. So calls take
a connection from a pool (opened with the client's access key), and `ChannelMaster.call` does its
blocking I/O right there, in the calling thread: a `Client` view whose `master` is a
`ChannelMaster` (`Client.inline()`) runs its namespace coroutines to the end without an event loop
(`run_inline`), so the protocol still exists once, in the async client.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import websocket

from dfs import tls
from dfs.client.metrics import observe_call
from dfs.client.rpc import Backoff, tls_failure, unreachable
from dfs.errors import DfsError

log = logging.getLogger("dfs.client")

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0
#: Seconds a call may wait for its answer (a readdir page of 10,000 entries takes well under one).
CALL_TIMEOUT = 60.0
#: Idle connections kept for the next calls (more are closed after their call).
MAX_IDLE = 32


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (its awaits are channel calls) to its end, here."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a coroutine run inline suspended: it needs the client's event loop")


class Channels:
    """A pool of WebSockets to the master, opened with `key_headers`: a call takes an idle one (or
    opens one) and gives it back, so each thread calling at the moment has one, however many come
    and go (libfuse starts and ends its threads as it likes)."""

    def __init__(self, master_url: str, key_headers: dict[str, str]) -> None:
        self.url = master_url.replace("http", "ws", 1) + "/api/channel"
        self.key_headers = key_headers
        self._idle: list[websocket.WebSocket] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.closed = False

    def _connect(self) -> websocket.WebSocket:
        options: dict[str, Any] = {}
        if self.url.startswith("wss:"):
            options["sslopt"] = {"context": tls.client_context()}
        ws = websocket.create_connection(
            self.url, timeout=CONNECT_TIMEOUT, header=[f"{k}: {v}" for k, v in self.key_headers.items()],
            sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], enable_multithread=False, **options)
        ws.settimeout(CALL_TIMEOUT)
        return ws

    def _take(self) -> websocket.WebSocket:
        with self._lock:
            if self.closed:
                raise ConnectionError("the client is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, ws: websocket.WebSocket) -> None:
        with self._lock:
            if not self.closed and len(self._idle) < MAX_IDLE:
                self._idle.append(ws)
                return
        _close(ws)

    def exchange(self, op: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        """Send one call on a connection of the pool and wait for its answer: (status, body).
        Raises OSError / WebSocketException when the connection is (or goes) bad."""
        ws = self._take()
        call_id = next(self._ids)
        try:
            ws.send(json.dumps({"id": call_id, "op": op, "headers": headers, "body": body}))
            raw = ws.recv()
            answer = json.loads(raw)
            if answer.get("id") != call_id:
                raise DfsError(errno.EIO, f"master answered call {answer.get('id')} to call {call_id} ({op})")
        except BaseException:
            _close(ws)  # whatever happened, this connection's state is unknown
            raise
        self._give_back(ws)
        return int(answer["status"]), answer.get("body")

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for ws in idle:
            _close(ws)


def _close(ws: websocket.WebSocket) -> None:
    with contextlib.suppress(Exception):  # a broken socket: nothing to tell
        ws.close(timeout=0.1)


class ChannelMaster:
    """What `MasterClient` is to the event loop, for the calling thread: `await master.call(...)`
    completes without suspending. Retries as MasterClient does: a master that cannot be reached,
    or answers EAGAIN, is tried again for `retry_for` seconds, then the call fails with EIO."""

    def __init__(self, channels: Channels, headers: dict[str, str], retry_for: float) -> None:
        self.channels = channels
        self.url = channels.url
        self.headers = headers
        self.retry_for = retry_for

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        started = time.perf_counter()
        ok = False
        try:
            reply = self._call(op, fields)
            ok = True
            return reply
        finally:
            observe_call(op, ok, time.perf_counter() - started)

    def _call(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        backoff = Backoff(self.retry_for)
        while True:
            try:
                status, body = self.channels.exchange(op, self.headers, fields)
            except websocket.WebSocketBadStatusException as exc:  # the upgrade was refused
                if exc.status_code >= 400 and exc.status_code != 503:
                    raise DfsError.from_json(exc.status_code, _json_or_none(exc.resp_body)) from None
                delay = backoff.next()
                if delay is None:
                    raise unreachable(self.url, exc) from None
            except (OSError, websocket.WebSocketException) as exc:
                if _is_certificate_error(exc):
                    raise tls_failure(self.url, str(exc)) from None
                delay = backoff.next()
                if delay is None:
                    raise unreachable(self.url, exc) from None
                log.debug("master %s unreachable for %s (%s); retrying", self.url, op, exc)
            else:
                if status < 400:
                    return dict(body)
                err = DfsError.from_json(status, body)
                delay = backoff.next() if err.errno == errno.EAGAIN else None
                if delay is None:
                    raise err
            time.sleep(delay)


def _json_or_none(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def _is_certificate_error(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError)
