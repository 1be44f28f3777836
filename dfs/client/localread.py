"""Short-circuit reads, client side: read a chunk straight from the files of a replica on this host.

A 4 KiB read over HTTP costs a round trip and ~160 µs of chunkserver CPU; when a replica lives on
this host, its chunkserver hands us its open data and meta files over a Unix socket instead
(dfs/localread.py, chunkserver/localread.py) and we pread the bytes and their 64 KiB blocks' digests
ourselves, verifying every block as the chunkserver would. Whether a chunkserver is local is asked
once per URL (`GET /local`: same host identity, and a socket that answers as the same process).

Anything that goes wrong (not local, refused, a digest mismatch, a short file, an OSError) returns
None and the caller reads the same range over HTTP, which reports bad replicas: a mismatch here may
be an overwrite in flight (the data file is written in place, the meta file replaced), so it is
never reported from here. The files of the last OPEN_CHUNKS chunks stay open (two descriptors each);
a chunk's entry is dropped when its version changes, when a read needs more than the length it was
opened with (a write may have grown the chunk), and after a mismatch (its meta file may be old).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from dfs.checksum import BLOCK_SIZE, DIGEST, block_digest
from dfs.client.idle import IdlePool
from dfs.client.inlineio import Connections
from dfs.client.metrics import SHORT_CIRCUIT_FALLBACKS, SHORT_CIRCUIT_READS
from dfs.errors import DfsError
from dfs.localread import encode, error_of, host_identity, receive
from dfs.protocol import STREAM_SLICE, ChunkLocation
from dfs.tokens import TOKEN_REFUSED

log = logging.getLogger("dfs.client")

#: Reads (of one chunk) up to this size go short-circuit; longer ones, the mount's sequential read-ahead
#: windows, stay on HTTP: there the chunkserver reads the next slice on its disk threads while the last
#: one travels, and 256 MiB read cold through the mount ran ~20% faster than one thread's verified
#: preads on a busy 2-core host (for ~30% more CPU).
MAX_READ = STREAM_SLICE
#: Chunks whose files are kept open, two descriptors each.
OPEN_CHUNKS = 128
#: Idle connections kept per chunkserver socket.
MAX_IDLE = 4
#: Seconds a chunkserver whose `/local` or socket failed is read over HTTP before asking again.
RECHECK = 30.0
#: Seconds a chunkserver found on another host (or without short-circuit reads) is not asked again.
ELSEWHERE_FOR = 600.0
#: Seconds a chunk the local chunkserver refused (missing, stale, unfinished) is read over HTTP.
REFUSED_FOR = 2.0
TIMEOUT = 5.0


class _Server(NamedTuple):
    """A chunkserver on this host: its socket, and the process that announced it."""

    socket: str
    instance: str


@dataclass(slots=True, eq=False)
class _Opened:
    """The open files of one chunk at one version; closed once dropped and no read uses them."""

    version: int
    data_fd: int
    meta_fd: int
    length: int
    digests_at: int
    users: int = 0
    dropped: bool = False

    def close(self) -> None:
        for fd in (self.data_fd, self.meta_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Fallback(Exception):
    """Read this range over HTTP; `reason` labels the fallback counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LocalReads:
    """Short-circuit reads for one client, shared by its threads."""

    max_read = MAX_READ

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout  # seconds a chunkserver may take to answer (a stopped one: then HTTP, elsewhere)
        self.host = host_identity()
        self._servers: dict[str, tuple[_Server | None, float]] = {}  # url -> (local server or None, ask again at)
        self._open: OrderedDict[tuple[str, int], _Opened] = OrderedDict()  # (url, chunk id) -> files, LRU
        self._refused: OrderedDict[tuple[str, int, int], float] = OrderedDict()  # (url, id, version) -> until
        self._idle: IdlePool[str, socket.socket] = IdlePool(MAX_IDLE, socket.socket.close)
        self._lock = threading.Lock()
        self._http = Connections()
        self.closed = False

    def read(self, loc: ChunkLocation, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the chunk from a replica on this host, every block verified; None when
        no replica is local or the read failed (then read them over HTTP). A local chunkserver that
        does not answer (stopped, hung) is passed over for the next local replica. Blocks: call from
        a thread."""
        for _replica in loc.servers:
            data, reason = self._read_from_local(loc, start, end)
            if reason != "unreachable":
                return data
        return None

    def _read_from_local(self, loc: ChunkLocation, start: int, end: int) -> tuple[bytes | None, str]:
        """(the bytes or None, why not: "" when none is local)."""
        found = self._local(loc)
        if found is None:
            return None, ""
        url, server = found
        try:
            data = self._read(url, server, loc, start, end)
        except _Fallback as exc:
            reason = exc.reason
        except DfsError as err:
            log.debug("chunk %d v%d: short-circuit read refused by %s: %s", loc.chunk_id, loc.version, url,
                      err.message)
            if err.errno not in TOKEN_REFUSED:
                self._refuse(url, loc)
            reason = "refused"
        except (ConnectionError, TimeoutError) as exc:
            log.info("short-circuit reads from %s stop for %.0f s: %s", url, RECHECK, exc or type(exc).__name__)
            with self._lock:
                self._servers[url] = (None, time.monotonic() + RECHECK)
            reason = "unreachable"
        except OSError as exc:
            log.info("chunk %d v%d: short-circuit read failed: %s", loc.chunk_id, loc.version, exc)
            reason = "error"
        else:
            SHORT_CIRCUIT_READS.inc()
            return data, ""
        SHORT_CIRCUIT_FALLBACKS.labels(reason).inc()
        return None, reason

    def may_be_local(self, loc: ChunkLocation) -> bool:
        """Whether `read` could find a local replica of `loc` (False: every one is known to be elsewhere),
        without blocking: callers on an event loop skip the thread hop for remote chunks."""
        if not self.host or self.closed:
            return False
        now = time.monotonic()
        for replica in loc.servers:
            cached = self._servers.get(replica.url)
            if cached is None or cached[0] is not None or cached[1] <= now:
                return True
        return False

    def _local(self, loc: ChunkLocation) -> tuple[str, _Server] | None:
        """The first replica of `loc` on this host, unless it refused the chunk a moment ago."""
        if not self.host or self.closed:
            return None
        for replica in loc.servers:
            server = self._server(replica.url)
            if server is not None:
                until = self._refused.get((replica.url, loc.chunk_id, loc.version))
                if until is not None and until > time.monotonic():
                    return None
                return replica.url, server
        return None

    def _refuse(self, url: str, loc: ChunkLocation) -> None:
        with self._lock:
            self._refused[(url, loc.chunk_id, loc.version)] = time.monotonic() + REFUSED_FOR
            while len(self._refused) > OPEN_CHUNKS:
                self._refused.popitem(last=False)

    def _server(self, url: str) -> _Server | None:
        """The chunkserver at `url` if it runs on this host (asked once; a no is asked again later)."""
        cached = self._servers.get(url)
        if cached is not None and (cached[0] is not None or cached[1] > time.monotonic()):
            return cached[0]
        server, wait = self._discover(url)
        with self._lock:
            self._servers[url] = (server, time.monotonic() + wait)
        return server

    def _discover(self, url: str) -> tuple[_Server | None, float]:
        """(the local server at `url` or None, seconds before asking again)."""
        try:
            reply = self._http.request(url, "GET", "/local", {}, timeout=self.timeout)
            if reply.status >= 500:
                return None, RECHECK
            body = json.loads(reply.body) if reply.status == 200 else {}
            if not isinstance(body, dict) or body.get("host") != self.host:
                return None, ELSEWHERE_FOR  # another host, or a chunkserver without short-circuit reads
            if os.path.exists(str(body.get("socket"))):
                return _Server(str(body["socket"]), str(body.get("instance"))), 0.0
            log.debug("%s: its socket %s is not here", url, body.get("socket"))
        except (OSError, ValueError) as exc:
            log.debug("%s: no short-circuit reads: %s", url, exc)
        return None, RECHECK

    def _read(self, url: str, server: _Server, loc: ChunkLocation, start: int, end: int) -> bytes:
        opened = self._acquire(url, server, loc, start, end)
        try:
            data = _verified(opened, start, end)
        finally:
            self._release(opened)
        if data is None:  # its meta file may predate a write in place: open afresh next time
            with self._lock:
                if self._open.get((url, loc.chunk_id)) is opened:
                    self._drop((url, loc.chunk_id))
            raise _Fallback("corrupt")
        return data

    def _acquire(self, url: str, server: _Server, loc: ChunkLocation, start: int, end: int) -> _Opened:
        """The chunk's files, open at `loc.version` with at least `end` bytes, for one read."""
        key = (url, loc.chunk_id)
        with self._lock:
            opened = self._open.get(key)
            if opened is not None and (opened.version != loc.version or end > opened.length):
                self._drop(key)
                opened = None
            if opened is not None:
                self._open.move_to_end(key)
                opened.users += 1
                return opened
        opened = self._ask(server, loc, start, end)
        if end > opened.length:  # past the replica's data: zeros, as HTTP serves them
            opened.close()
            raise _Fallback("beyond")
        with self._lock:
            if self.closed:
                opened.close()
                raise _Fallback("error")
            if key in self._open:
                self._drop(key)
            self._open[key] = opened
            opened.users = 1
            while len(self._open) > OPEN_CHUNKS:
                self._drop(next(iter(self._open)))
        return opened

    def _release(self, opened: _Opened) -> None:
        with self._lock:
            opened.users -= 1
            if opened.dropped and opened.users == 0:
                opened.close()

    def _drop(self, key: tuple[str, int]) -> None:
        """Forget a chunk's files (closed now, or by the last read using them); call with the lock."""
        opened = self._open.pop(key)
        opened.dropped = True
        if opened.users == 0:
            opened.close()

    def _ask(self, server: _Server, loc: ChunkLocation, start: int, end: int) -> _Opened:
        """The chunk's files from the chunkserver (DfsError: refused; ConnectionError: its socket), which
        starts the disk on bytes [start, end) while it checks the meta file."""
        request = encode({"chunk_id": loc.chunk_id, "version": loc.version, "token": loc.token,
                          "start": start, "end": end})
        for _ in range(2):
            sock, kept = self._connect(server.socket)
            try:
                sock.sendall(request)
                reply, fds = receive(sock)
            except (ConnectionError, TimeoutError) as exc:
                sock.close()
                if kept:
                    continue  # the server let a kept connection go (a restart): once more, on a new one
                raise ConnectionError(str(exc) or type(exc).__name__) from None
            except BaseException:
                sock.close()
                raise
            self._idle.give_back(server.socket, sock)
            break
        else:
            raise ConnectionError(f"{server.socket} closed the connection twice")
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise error_of(reply)
        try:
            if reply.get("instance") != server.instance or len(fds) != 2:
                raise ConnectionError(f"{server.socket} is not the chunkserver that announced it")
            if any(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY for fd in fds):
                raise DfsError(errno.EPROTO, f"{server.socket}: chunk files must come read-only")
            if reply.get("block_size") != BLOCK_SIZE or reply.get("digest_size") != DIGEST.size:
                raise DfsError(errno.EPROTO, f"{server.socket}: unknown meta layout")
            return _Opened(loc.version, fds[0], fds[1], int(reply["length"]), int(reply["digests_at"]))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _connect(self, path: str) -> tuple[socket.socket, bool]:
        """(connection, whether it was kept from an earlier request)."""
        kept = self._idle.take(path)
        if kept is not None:
            return kept, True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            sock.close()
            raise ConnectionRefusedError(f"{path}: no such socket") from None
        except BaseException:
            sock.close()
            raise
        return sock, False

    def close(self) -> None:
        """Close every file and connection (reads in progress close theirs when done)."""
        with self._lock:
            self.closed = True
            for key in list(self._open):
                self._drop(key)
        self._idle.close()
        self._http.close()


def _verified(opened: _Opened, start: int, end: int) -> bytes | None:
    """Bytes [start, end) (end <= length) read with the whole blocks they lie in, each checked against
    its digest; None on a mismatch or a file shorter than the chunk's length. The disk starts on the
    data before the digests are read (a cold read waits for one disk read, not two)."""
    first = start - start % BLOCK_SIZE
    last = min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, opened.length)
    count = -(-(last - first) // BLOCK_SIZE)
    os.posix_fadvise(opened.data_fd, first, last - first, os.POSIX_FADV_WILLNEED)
    raw = os.pread(opened.meta_fd, count * DIGEST.size, opened.digests_at + first // BLOCK_SIZE * DIGEST.size)
    data = os.pread(opened.data_fd, last - first, first)
    if len(raw) != count * DIGEST.size or len(data) != last - first:
        return None
    view = memoryview(data)
    for i, want in enumerate(struct.unpack(f"<{count}Q", raw)):
        if block_digest(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]) != want:
            return None
    return data if (first, last) == (start, end) else data[start - first : end - first]
