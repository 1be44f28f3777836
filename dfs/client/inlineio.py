"""Chunk reads and small chunk writes made from the calling thread (the mount's FUSE threads).

Through the asyncio client a 4 KiB read from a chunkserver costs two thread hops to the event loop
and back plus aiohttp's request machinery: ~800 µs where the same request over a plain keep-alive
socket costs ~250 µs (this 2-core machine). `InlineChunkIO` is a `ChunkIO` whose transport is
blocking HTTP/1.1 over keep-alive connections taken from a pool (as dfs/client/channel.py does for
the master), so its coroutines complete without suspending and `run_inline` runs them in the
calling thread; replica failover and error mapping stay in `ChunkIO`, written once.

The HTTP spoken is the little our chunkservers answer: a status line, headers, and a body of
`Content-Length` bytes (or chunked). Anything else closes the connection.

A small piece goes to every replica at once (dfs/client/chunkio.py says why): here every request
goes out, then every reply is read (`Connections.request_many`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from dfs import tls
from dfs.client.chunkio import FAN_OUT, ChunkIO, ReportBad, fanned_out
from dfs.client.idle import IdlePool
from dfs.client.metrics import WRITTEN_BYTES
from dfs.errors import DfsError
from dfs.protocol import CHAIN_HEADER, ChunkLocation, Lease, Replica
from dfs.tokens import TOKEN_HEADER

if TYPE_CHECKING:
    from dfs.client.client import Client
    from dfs.client.localread import LocalReads

CONNECT_TIMEOUT = 5.0
#: Seconds a request may wait for bytes when the caller sets no patience (aiohttp's sock_read of the client).
SLOW_TIMEOUT = 30.0
#: Idle connections kept per server (more are closed after their request).
MAX_IDLE = 16
MAX_HEADER_LINE = 8192
MAX_HEADERS = 100
#: Bodies up to this size go out in the same send as the headers.
JOIN_BODY = 64 * 1024


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class _Conn:
    """One keep-alive connection to one server."""

    def __init__(self, scheme: str, host: str, port: int, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            sock = tls.client_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.reader = sock.makefile("rb", buffering=65536)
        self.used = False  # has served a request: EOF before a reply may just mean the server let it go idle

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()


class StaleConnection(ConnectionError):
    """A kept connection the server had closed meanwhile: the request may be sent again on a new one."""


class Connections:
    """Keep-alive HTTP/1.1 connections to chunkservers, shared by the threads that call."""

    def __init__(self) -> None:
        self._pool: IdlePool[tuple[str, str, int], _Conn] = IdlePool(MAX_IDLE, _Conn.close)

    def request(self, base_url: str, method: str, target: str, headers: dict[str, str],
                body: bytes | memoryview = b"", timeout: float | None = None) -> Reply:
        """Send one request to the server at `base_url` and read the whole reply. Raises OSError
        (ConnectionError, TimeoutError) when the server cannot be reached or goes silent for `timeout`."""
        key, head = _key_and_head(base_url, method, target, headers, len(body))
        for _ in range(2):
            conn = self._take(key, min(CONNECT_TIMEOUT, timeout or CONNECT_TIMEOUT))
            try:
                conn.sock.settimeout(SLOW_TIMEOUT if timeout is None else timeout)
                _send(conn, head, body)
                return self._finish(key, conn)
            except StaleConnection:
                conn.close()
                continue  # once more, on a new connection
            except BaseException:
                conn.close()  # whatever happened, this connection's state is unknown
                raise
        raise ConnectionError(f"{base_url} closed the connection twice")

    def request_many(self, base_urls: list[str], method: str, target: str, headers: dict[str, str],
                     body: bytes | memoryview) -> list[Reply | OSError]:
        """The same request to several servers at once: every request goes out, then every reply is
        read. Each result is the server's reply or the OSError that kept it from answering."""
        results: list[Reply | OSError | None] = [None] * len(base_urls)
        sent: list[tuple[int, tuple[str, str, int], _Conn]] = []
        for i, base_url in enumerate(base_urls):
            key, head = _key_and_head(base_url, method, target, headers, len(body))
            conn = None
            try:
                conn = self._take(key, CONNECT_TIMEOUT)
                conn.sock.settimeout(SLOW_TIMEOUT)
                _send(conn, head, body)
                sent.append((i, key, conn))
            except StaleConnection:
                assert conn is not None
                conn.close()  # asked again below, alone, on a new connection
            except OSError as exc:
                if conn is not None:
                    conn.close()
                results[i] = exc
        for i, key, conn in sent:
            try:
                results[i] = self._finish(key, conn)
            except StaleConnection:
                conn.close()
            except OSError as exc:
                conn.close()
                results[i] = exc
            except BaseException:
                conn.close()
                raise
        for i, result in enumerate(results):
            if result is None:  # a kept connection the server had dropped: once more, alone
                try:
                    results[i] = self.request(base_urls[i], method, target, headers, body)
                except OSError as exc:
                    results[i] = exc
        return [r for r in results if r is not None]

    def _finish(self, key: tuple[str, str, int], conn: _Conn) -> Reply:
        """Read the reply to the request sent on `conn`, then keep or close the connection."""
        reply, reusable = _receive(conn)  # the caller closes the connection if this raises
        if reusable:
            self._give_back(key, conn)
        else:
            conn.close()
        return reply

    def _take(self, key: tuple[str, str, int], connect_timeout: float) -> _Conn:
        conn = self._pool.take(key)
        return conn if conn is not None else _Conn(*key, connect_timeout)

    def _give_back(self, key: tuple[str, str, int], conn: _Conn) -> None:
        conn.used = True
        self._pool.give_back(key, conn)

    def close(self) -> None:
        self._pool.close()


def _head(method: str, target: str, host: str, port: int, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {f'[{host}]' if ':' in host else host}:{port}"]
    if length or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {length}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise DfsError(errno.EINVAL, f"header {name} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _key_and_head(base_url: str, method: str, target: str, headers: dict[str, str],
                  length: int) -> tuple[tuple[str, str, int], bytes]:
    """The pool key (scheme, host, port) of `base_url` and the head of a request to it."""
    parts = urlsplit(base_url)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    return (scheme, host, port), _head(method, target, host, port, headers, length)


def _send(conn: _Conn, head: bytes, body: bytes | memoryview) -> None:
    try:
        if len(body) <= JOIN_BODY:
            conn.sock.sendall(head + bytes(body))
        else:
            conn.sock.sendall(head)
            conn.sock.sendall(body)
    except (BrokenPipeError, ConnectionResetError) as exc:
        if conn.used:
            raise StaleConnection(str(exc)) from None
        raise


def _receive(conn: _Conn) -> tuple[Reply, bool]:
    """(the reply to the request sent, whether the connection may serve another request)."""
    try:
        status_line = conn.reader.readline(MAX_HEADER_LINE)
    except (BrokenPipeError, ConnectionResetError) as exc:
        if conn.used:
            raise StaleConnection(str(exc)) from None
        raise
    if not status_line:
        if conn.used:
            raise StaleConnection("closed before replying")
        raise ConnectionError("the server closed the connection before replying")
    version, _, rest = status_line.decode("latin-1").partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ConnectionError(f"not an HTTP reply: {status_line[:60]!r}")
    headers = _read_headers(conn)
    reusable = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if headers.get("transfer-encoding", "").lower() == "chunked":
        data = _read_chunked(conn)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ConnectionError(f"bad Content-Length {headers['content-length']!r}") from None
        data = conn.reader.read(length)
        if len(data) < length:
            raise ConnectionError(f"transfer cut off after {len(data)} of {length} bytes")
    else:
        data, reusable = conn.reader.read(), False
    return Reply(int(code), headers, data), reusable


def _read_headers(conn: _Conn) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = conn.reader.readline(MAX_HEADER_LINE)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise ConnectionError("the connection closed within the reply's headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ConnectionError("too many header lines")


def _read_chunked(conn: _Conn) -> bytes:
    parts = []
    while True:
        size_line = conn.reader.readline(MAX_HEADER_LINE)
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            raise ConnectionError(f"bad chunk size line {size_line[:40]!r}") from None
        if size == 0:
            while conn.reader.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        piece = conn.reader.read(size)
        if len(piece) < size or conn.reader.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n"):
            raise ConnectionError("chunked body cut off")
        parts.append(piece)


def error_of(reply: Reply) -> DfsError:
    """The DfsError a chunkserver answered with (its JSON body), or one made from the status alone."""
    try:
        body: Any = json.loads(reply.body)
    except ValueError:
        body = None
    return DfsError.from_json(reply.status, body)


class InlineChunkIO(ChunkIO):
    """`ChunkIO` over `Connections`: its coroutines never suspend (run them with `run_inline`)."""

    def __init__(self, connections: Connections, report_bad: ReportBad, read_timeout: float | None,
                 local: LocalReads | None = None) -> None:
        super().__init__(None, report_bad, read_timeout, local)  # type: ignore[arg-type]  # no aiohttp session
        self.connections = connections

    async def _read_local(self, loc: ChunkLocation, start: int, end: int) -> bytes | None:
        assert self.local is not None
        return self.local.read(loc, start, end)  # here, in the calling thread

    async def _read_from(self, replica: Replica, loc: ChunkLocation, start: int, end: int,
                         patience: float | None = None) -> AsyncIterator[bytes]:
        headers = {"Range": f"bytes={start}-{end - 1}", TOKEN_HEADER: loc.token}
        try:
            reply = self.connections.request(replica.url, "GET", f"/chunks/{loc.chunk_id}?version={loc.version}",
                                             headers, timeout=patience)
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:  # no route, a name that does not resolve, TLS: unreachable, as ChunkIO counts it
            raise ConnectionError(str(exc) or type(exc).__name__) from None
        if reply.status >= 400:
            raise error_of(reply)
        yield reply.body

    async def write(self, lease: Lease, offset: int, data: bytes | memoryview, sync: bool) -> list[str]:
        head, rest = lease.servers[0], lease.servers[1:]
        target = f"/chunks/{lease.chunk_id}?version={lease.version}&offset={offset}" + ("&sync=1" if sync else "")
        if rest and len(data) <= FAN_OUT:
            return self._fan_out(lease, target, data)
        headers = {CHAIN_HEADER: ",".join(r.url for r in rest),
                   "Content-Type": "application/octet-stream", TOKEN_HEADER: lease.token}
        try:
            reply = self.connections.request(head.url, "PUT", target, headers, data)
        except OSError as exc:
            raise DfsError(errno.EIO, f"chunk {lease.chunk_id}: {head.url} unreachable: "
                                      f"{exc or type(exc).__name__}") from None
        if reply.status >= 400:
            raise error_of(reply)
        try:
            body = json.loads(reply.body)
        except ValueError:
            raise DfsError(errno.EIO, f"chunk {lease.chunk_id}: {head.url} answered without JSON") from None
        WRITTEN_BYTES.inc(len(data))
        return [str(u) for u in body.get("failed", [])]

    def _fan_out(self, lease: Lease, target: str, data: bytes | memoryview) -> list[str]:
        """Write a small piece to every replica at once."""
        headers = {"Content-Type": "application/octet-stream", TOKEN_HEADER: lease.token}
        replies = self.connections.request_many([r.url for r in lease.servers], "PUT", target, headers, data)
        errors: list[BaseException | None] = []
        for replica, reply in zip(lease.servers, replies, strict=True):
            if isinstance(reply, OSError):
                errors.append(DfsError(errno.EIO, f"chunk {lease.chunk_id}: {replica.url} unreachable: "
                                                  f"{reply or type(reply).__name__}"))
            else:
                errors.append(error_of(reply) if reply.status >= 400 else None)
        return fanned_out(lease, errors, len(data))


def inline_client(client: Client, connections: Connections) -> Client:
    """A view of `client` (its key, its identity) whose master calls and chunk transfers complete in
    the calling thread, for `FileHandle(inline=...)`; needs `client.open_channels()` first."""
    view = client.inline()
    view.chunkio = InlineChunkIO(connections, view._report_bad, client.read_timeout, client.local_reads)
    return view
