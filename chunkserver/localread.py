"""Short-circuit reads, chunkserver side: hand open chunk files to clients on this host.

The chunkserver listens on a Unix socket (`ChunkserverConfig.socket_path`: `local.sock` in the first
data dir, removed at stop) and announces it with a host identity on `GET /local`. A request names a
chunk, its version and a read token (dfs/localread.py); the token and the version are checked as
the HTTP GET checks them, then the chunk's data and meta files go to the client as O_RDONLY
descriptors (SCM_RIGHTS), and the client reads and verifies the blocks itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from dfs.checksum import BLOCK_SIZE
from dfs.chunkserver import diskio
from dfs.chunkserver.metrics import SHORT_CIRCUIT_OPENS
from dfs.chunkserver.store import DIGEST_SIZE, FLAG_PENDING, HEADER, MAGIC, ChunkStore, chunk_paths
from dfs.errors import DfsError
from dfs.localread import MAX_LINE, encode, error_reply, host_identity
from dfs.tokens import ClusterKeys
from dfs.web import background

log = logging.getLogger("chunkserver.localread")


class LocalReads:
    """The Unix socket server: one task accepting, one per connection."""

    def __init__(self, path: Path, store: ChunkStore, keys: ClusterKeys | None) -> None:
        self.path = path
        self.store = store
        self.keys = keys
        self.instance = uuid.uuid4().hex  # tells this process from a restarted one at the same path
        self.host = host_identity()
        self._tasks: set[asyncio.Task] = set()

    def describe(self) -> dict[str, Any]:
        """What `GET /local` answers: a client on the same host uses the socket."""
        return {"host": self.host, "socket": str(self.path), "instance": self.instance}

    def bind(self) -> socket.socket:
        """The listening socket at `path` (a file left by a killed process is replaced). OSError."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.path))
            server.listen(64)
            server.setblocking(False)
        except BaseException:
            server.close()
            raise
        return server

    async def serve(self, server: socket.socket) -> None:
        """Accept connections on `server` until cancelled (then the open connections are dropped)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, _ = await loop.sock_accept(server)
                task = asyncio.create_task(self._connection(conn), name="local-read")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buf = b""
        with conn:
            conn.setblocking(False)
            try:
                while True:
                    line, sep, rest = buf.partition(b"\n")
                    if not sep:
                        if len(buf) >= MAX_LINE:
                            await loop.sock_sendall(conn, encode(error_reply(DfsError(errno.EINVAL,
                                                                                      "request too long"))))
                            return
                        more = await loop.sock_recv(conn, MAX_LINE)
                        if not more:
                            return
                        buf += more
                        continue
                    buf = rest
                    await self._answer(conn, line)
            except (ConnectionError, BrokenPipeError):
                return

    async def _answer(self, conn: socket.socket, line: bytes) -> None:
        fds: list[int] = []
        try:
            try:
                reply, fds = await self._open(line)
            except DfsError as err:
                log.info("short-circuit read refused: %s", err.message)
                SHORT_CIRCUIT_OPENS.labels("refused").inc()
                reply = error_reply(err)
            else:
                SHORT_CIRCUIT_OPENS.labels("ok").inc()
            await _send(conn, encode(reply), fds)
        finally:
            for fd in fds:
                os.close(fd)

    async def _open(self, line: bytes) -> tuple[dict[str, Any], list[int]]:
        """Check the request as the HTTP GET is checked, then open the chunk's files."""
        try:
            request = json.loads(line)
            chunk_id, version, token = int(request["chunk_id"]), int(request["version"]), str(request["token"])
            start, end = max(0, int(request.get("start", 0))), max(0, int(request.get("end", 0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise DfsError(errno.EINVAL, "malformed short-circuit request") from None
        if self.keys is None:
            raise DfsError(errno.EAGAIN, "chunkserver has no cluster keys")
        self.keys.tokens.verify(token).require("read", chunk_id, version)
        info = await self.store.check_readable(chunk_id, version)
        entry = self.store.index.get(chunk_id)
        if entry is None:
            raise DfsError(errno.ENOENT, f"chunk {chunk_id}: no such chunk")
        length = int(info["length"])
        fds = await diskio.run(_open_files, entry.root, chunk_id, version, length, start, min(end, length))
        return {"ok": True, "instance": self.instance, "length": length, "block_size": BLOCK_SIZE,
                "digests_at": HEADER.size, "digest_size": DIGEST_SIZE}, fds


def _open_files(root: Path, chunk_id: int, version: int, length: int, start: int, end: int) -> list[int]:
    """[data fd, meta fd], both O_RDONLY, after checking the meta is the one of `version` and `length`
    (EAGAIN when a write or a truncate changed the chunk since it was checked). The disk starts on the
    client's first bytes, [start, end), while the meta file is read."""
    data_path, meta_path = chunk_paths(root, chunk_id)
    fds: list[int] = []
    try:
        fds.append(os.open(data_path, os.O_RDONLY | os.O_CLOEXEC))
        if start < end:
            first, last = start - start % BLOCK_SIZE, min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, length)
            os.posix_fadvise(fds[0], first, last - first, os.POSIX_FADV_WILLNEED)
        fds.append(os.open(meta_path, os.O_RDONLY | os.O_CLOEXEC))
        head = os.pread(fds[1], HEADER.size, 0)
        if len(head) != HEADER.size:
            raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: changed while being opened")
        magic, _fmt, flags, block_size, have, have_length = HEADER.unpack(head)
        if magic != MAGIC or block_size != BLOCK_SIZE or have != version or have_length != length \
                or flags & FLAG_PENDING:
            raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: changed while being opened")
        return fds
    except FileNotFoundError:
        for fd in fds:
            os.close(fd)
        raise DfsError(errno.ENOENT, f"chunk {chunk_id}: no such chunk") from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


async def _send(conn: socket.socket, data: bytes, fds: list[int]) -> None:
    """`data` with `fds` attached to its first byte, on a non-blocking socket."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sent = socket.send_fds(conn, [data], fds)
            break
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(conn.fileno(), writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(conn.fileno())
    if sent < len(data):
        await loop.sock_sendall(conn, data[sent:])


LOCAL_READS = web.AppKey("local_reads", LocalReads)


async def describe(request: web.Request) -> web.Response:
    """`GET /local`: the host identity and the socket of short-circuit reads (404 when there is none)."""
    local = request.app.get(LOCAL_READS)
    if local is None:
        raise DfsError(errno.ENOENT, "no short-circuit reads here")
    return web.json_response(local.describe())


def local_reads_ctx(path: Path | None, store_key: web.AppKey[ChunkStore],
                    keys: ClusterKeys | None) -> Any:
    """A cleanup_ctx serving short-circuit reads on `path` for the app's life, the socket file removed
    at the end (none for None, or when the socket cannot be made: clients then read over HTTP)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        local = LocalReads(path, app[store_key], keys) if path is not None else None
        try:
            server = local.bind() if local is not None else None
        except OSError as exc:
            log.warning("no short-circuit reads: cannot listen on %s: %s", path, exc)
            server = None
        if local is None or server is None:
            yield
            return
        log.info("short-circuit reads on %s", path)
        app[LOCAL_READS] = local
        try:
            async with background(local.serve(server), "local-reads"):
                yield
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                local.path.unlink()

    return ctx
