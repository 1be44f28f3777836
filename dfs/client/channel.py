"""Master calls over the master's WebSocket channel (master/channel.py), made from the calling thread.

The mount's FUSE threads make one small namespace call after another. Through the asyncio client
each costs an HTTP request and two thread hops to the loop and back, ~450 µs on top of the
master's own work; over a WebSocket that is already open it costs a frame each way. So calls take
a connection from a pool (opened with the client's access key), and `ChannelMaster.call` does its
blocking I/O right there, in the calling thread: a `Client` view whose `master` is a
`ChannelMaster` (`Client.inline()`) runs its namespace coroutines to the end without an event loop
(`run_inline`), so the protocol still exists once, in the async client.

websocket-client opens (and closes) the connections; a call's frames are written and read here
(`_Link`): its reader asks the socket for a frame's header, then for its payload (two waits, four
system calls with a timeout), checks UTF-8 in Python and builds objects per frame, which cost a
call ~60 µs of the calling thread's CPU. `_Link` reads whatever has arrived in one `recv`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import websocket

from dfs import tls
from dfs.client.metrics import observe_call
from dfs.client.rpc import Backoff, CallBarrier, tls_failure, unreachable
from dfs.errors import DfsError

log = logging.getLogger("dfs.client")

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0
#: Seconds a call may wait for its answer (a readdir page of 10,000 entries takes well under one).
CALL_TIMEOUT = 60.0
#: Idle connections kept for the next calls (more are closed after their call).
MAX_IDLE = 32
#: RFC 6455 opcodes.
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
_RECV_SIZE = 65536
#: A reply larger than this is refused (the master answers 10,000 readdir entries in well under it).
MAX_MESSAGE = 64 * 1024 * 1024


class _Link:
    """One open WebSocket: text frames out (masked, as a client's must be), messages in."""

    __slots__ = ("buffer", "sock", "ws")

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.sock: socket.socket = ws.sock
        self.buffer = bytearray()

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        masked = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
        self.sock.sendall(header + mask + masked)

    def _fill(self, need: int) -> None:
        while len(self.buffer) < need:
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                raise websocket.WebSocketConnectionClosedException("the master closed the channel")
            self.buffer += data

    def _frame(self) -> tuple[bool, int, bytes]:
        """The next frame: (fin, opcode, payload)."""
        self._fill(2)
        first, second = self.buffer[0], self.buffer[1]
        if second & 0x80 or first & 0x70:
            raise websocket.WebSocketProtocolException("the master sent a masked or extended frame")
        length, start = second & 0x7F, 2
        if length == 126:
            self._fill(4)
            length, start = struct.unpack_from("!H", self.buffer, 2)[0], 4
        elif length == 127:
            self._fill(10)
            length, start = struct.unpack_from("!Q", self.buffer, 2)[0], 10
        if length > MAX_MESSAGE:
            raise websocket.WebSocketPayloadException(f"a frame of {length} bytes from the master")
        self._fill(start + length)
        payload = bytes(self.buffer[start:start + length])
        del self.buffer[:start + length]
        return bool(first & 0x80), first & 0x0F, payload

    def receive(self) -> bytes:
        """The next data message (pings answered, pongs skipped)."""
        parts: list[bytes] = []
        while True:
            fin, opcode, payload = self._frame()
            if opcode == _PING:
                self.send(_PONG, payload)
                continue
            if opcode == _PONG:
                continue
            if opcode == _CLOSE:
                raise websocket.WebSocketConnectionClosedException("the master closed the channel")
            if opcode not in (_TEXT, _BINARY, _CONTINUATION) or (opcode == _CONTINUATION) != bool(parts):
                raise websocket.WebSocketProtocolException(f"unexpected frame (opcode {opcode})")
            parts.append(payload)
            if fin:
                return b"".join(parts)


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
        self._idle: list[_Link] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.closed = False
        #: What must happen before a call of any view (a mount's pending changes: dfs/client/dirops.py)
        self.before_call: CallBarrier | None = None

    def _connect(self) -> _Link:
        options: dict[str, Any] = {}
        if self.url.startswith("wss:"):
            options["sslopt"] = {"context": tls.client_context()}
        ws = websocket.create_connection(
            self.url, timeout=CONNECT_TIMEOUT, header=[f"{k}: {v}" for k, v in self.key_headers.items()],
            sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], enable_multithread=False, **options)
        ws.settimeout(CALL_TIMEOUT)
        return _Link(ws)

    def _take(self) -> _Link:
        with self._lock:
            if self.closed:
                raise ConnectionError("the client is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give_back(self, link: _Link) -> None:
        with self._lock:
            if not self.closed and len(self._idle) < MAX_IDLE:
                self._idle.append(link)
                return
        _close(link)

    def exchange(self, op: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        """Send one call on a connection of the pool and wait for its answer: (status, body).
        Raises OSError / WebSocketException when the connection is (or goes) bad."""
        link = self._take()
        call_id = next(self._ids)
        try:
            message = json.dumps({"id": call_id, "op": op, "headers": headers, "body": body})
            link.send(_TEXT, message.encode("utf-8", "surrogatepass"))
            answer = json.loads(link.receive())
            if answer.get("id") != call_id:
                raise DfsError(errno.EIO, f"master answered call {answer.get('id')} to call {call_id} ({op})")
        except BaseException:
            _close(link)  # whatever happened, this connection's state is unknown
            raise
        self._give_back(link)
        return int(answer["status"]), answer.get("body")

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for ws in idle:
            _close(ws)


def _close(link: _Link) -> None:
    with contextlib.suppress(Exception):  # a broken socket: nothing to tell
        link.ws.close(timeout=0.1)


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
        barrier = self.channels.before_call
        if barrier is not None and barrier.must_flush(op, fields):
            barrier.flush()
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
