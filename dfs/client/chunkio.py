"""Bytes to and from chunkservers: ranged reads with failover, writes through the replica chain.

A small piece (up to FAN_OUT bytes) is written to every replica of the lease at once instead of down
the chain, so the replicas write at the same time. A chain hop costs its server a client request in
Python (~0.5 ms for a 4 KiB body on this project's test machine) and makes the replicas write one
after the other; the chain's point, sending each byte over the client's link once, only counts for
large pieces, which keep it. The first replica answers for the write as a chain's head does (its
error is the write's); the others' failures are named, as a chain names the servers downstream that
failed (`fanned_out`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from dfs.client.metrics import READ_BYTES, REPLICA_FAILURES, WRITTEN_BYTES
from dfs.client.rpc import error_from_response
from dfs.errors import DfsError
from dfs.protocol import CHAIN_HEADER, STREAM_SLICE, ChunkLocation, Lease, Replica
from dfs.tokens import TOKEN_HEADER, TOKEN_REFUSED

if TYPE_CHECKING:
    from dfs.client.localread import LocalReads

log = logging.getLogger("dfs.client")

#: Called with (location, replica, problem) when a replica misbehaves, so the master hears of it.
ReportBad = Callable[[ChunkLocation, Replica, str], Awaitable[None]]

_ZEROS = bytes(STREAM_SLICE)

#: Pieces up to this size go to every replica at once (a fan-out), larger ones down the chain.
FAN_OUT = 64 * 1024

#: Seconds a replica may keep a read waiting (for its first byte, or between two pieces) before the
#: read fails over to the next replica. The last replica gets the session's own (longer) timeout.
READ_TIMEOUT = 2.0


async def _slices(data: memoryview) -> AsyncIterator[memoryview]:
    """A request body in STREAM_SLICE views: each goes to the socket as it is, where one large body
    would be joined to the headers and copied into the transport's buffer (two copies of it)."""
    for pos in range(0, len(data), STREAM_SLICE):
        yield data[pos : pos + STREAM_SLICE]


def zeros(length: int) -> AsyncIterator[bytes]:
    """`length` zero bytes in slices: what a hole in a sparse file reads as."""

    async def gen() -> AsyncIterator[bytes]:
        left = length
        while left > 0:
            n = min(left, STREAM_SLICE)
            yield _ZEROS if n == STREAM_SLICE else bytes(n)
            left -= n

    return gen()


class ChunkIO:
    def __init__(self, session: aiohttp.ClientSession, report_bad: ReportBad,
                 read_timeout: float | None = READ_TIMEOUT, local: LocalReads | None = None) -> None:
        self.session = session
        self.report_bad = report_bad
        self.read_timeout = read_timeout
        self.local = local  # short-circuit reads of replicas on this host (None: HTTP only)

    async def read(self, loc: ChunkLocation, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a chunk: from the files of a replica on this host while that works
        (dfs/client/localread.py; reads of at most its `max_read`), then over HTTP from the first replica
        that serves them."""
        pos = start
        if self.local is not None and end - start <= self.local.max_read and self.local.may_be_local(loc):
            while pos < end:
                piece = await self._read_local(loc, pos, min(end, pos + STREAM_SLICE))
                if piece is None:
                    break
                pos += len(piece)
                READ_BYTES.inc(len(piece))
                yield piece
        if pos < end:
            async for piece in self._read_replicas(loc, pos, end):
                yield piece

    async def _read_local(self, loc: ChunkLocation, start: int, end: int) -> bytes | None:
        """A short-circuit read, on a thread: it blocks on the disk."""
        assert self.local is not None
        return await asyncio.to_thread(self.local.read, loc, start, end)

    async def _read_replicas(self, loc: ChunkLocation, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a chunk over HTTP, from the first replica that serves them.

        A replica that fails (refused, stale, corrupt, cut off mid-stream) is reported and the read
        goes on from the next one at the byte where the last stopped. ESTALE from every replica
        means the caller's locations are outdated: it is raised so the caller can refresh them.
        """
        pos = start
        errors: list[str] = []
        stale = 0
        for number, replica in enumerate(loc.servers):
            if pos >= end:
                break
            patience = self.read_timeout if number < len(loc.servers) - 1 else None
            try:
                async for piece in self._read_from(replica, loc, pos, end, patience):
                    pos += len(piece)
                    READ_BYTES.inc(len(piece))
                    yield piece
                if pos < end:
                    raise DfsError(errno.EIO, f"short read ({pos - start} of {end - start} bytes)")
            except DfsError as err:
                if err.errno in TOKEN_REFUSED:  # every replica checks the same token: no point going on
                    raise
                errors.append(f"{replica.url}: {err.message}")
                if err.errno == errno.ESTALE:
                    stale += 1
                    continue
                problem = "corrupt" if err.errno in (errno.EBADMSG, errno.EIO) else "missing"
                log.warning("chunk %d v%d: replica %s failed (%s); trying another",
                            loc.chunk_id, loc.version, replica.url, err.message)
                problem = problem if err.errno != errno.ENOENT else "missing"
                REPLICA_FAILURES.labels(problem).inc()
                await self.report_bad(loc, replica, problem)
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                errors.append(f"{replica.url}: {exc or type(exc).__name__}")
                log.warning("chunk %d v%d: replica %s unreachable (%s); trying another",
                            loc.chunk_id, loc.version, replica.url, exc or type(exc).__name__)
                REPLICA_FAILURES.labels("unreachable").inc()
                await self.report_bad(loc, replica, "unreachable")
        if pos >= end:
            return
        if stale and stale == len(errors):
            raise DfsError(errno.ESTALE, f"chunk {loc.chunk_id} v{loc.version}: every replica has another version")
        detail = "; ".join(errors) or "no live replica"
        raise DfsError(errno.EIO, f"chunk {loc.chunk_id} v{loc.version}: cannot be read ({detail})")

    async def _read_from(self, replica: Replica, loc: ChunkLocation, start: int, end: int,
                         patience: float | None = None) -> AsyncIterator[bytes]:
        """The bytes from one replica; with `patience`, TimeoutError when it sends nothing for that long
        (a stalled or stopped server costs a failover, not a hang). Each wait has its own timeout, so
        the generator may be resumed from any task (the sync facade does that)."""
        url = f"{replica.url}/chunks/{loc.chunk_id}"
        headers = {"Range": f"bytes={start}-{end - 1}", TOKEN_HEADER: loc.token}
        async with asyncio.timeout(patience):
            resp = await self.session.get(url, params={"version": loc.version}, headers=headers)
        try:
            if resp.status >= 400:
                raise await error_from_response(resp)
            while True:
                try:
                    async with asyncio.timeout(patience):
                        piece = await resp.content.read(STREAM_SLICE)
                except aiohttp.ClientPayloadError as exc:
                    raise DfsError(errno.EIO, f"transfer cut off: {exc}") from None
                if not piece:
                    break
                yield piece
        except BaseException:
            resp.close()  # a connection left mid-body is never reused
            raise
        finally:
            resp.release()

    async def write(self, lease: Lease, offset: int, data: bytes | memoryview, sync: bool) -> list[str]:
        """Write `data` at `offset` of the leased chunk on every replica: down the chain, or for a
        piece of at most FAN_OUT bytes to each replica at once.

        Returns the URLs of replicas that did not take it (empty when all did). Raises DfsError when
        the first replica fails; ENOSPC and ESTALE keep their errno so callers can act on them.
        """
        head, rest = lease.servers[0], lease.servers[1:]
        if rest and len(data) <= FAN_OUT:
            outcomes = await asyncio.gather(*(self._put(replica, [], lease, offset, data, sync)
                                              for replica in lease.servers), return_exceptions=True)
            return fanned_out(lease, [o if isinstance(o, BaseException) else None for o in outcomes], len(data))
        body = await self._put(head, rest, lease, offset, data, sync)
        WRITTEN_BYTES.inc(len(data))
        return [str(u) for u in body.get("failed", [])]

    async def _put(self, replica: Replica, chain: list[Replica], lease: Lease, offset: int,
                   data: bytes | memoryview, sync: bool) -> dict:
        """PUT the piece to `replica`, which forwards it down `chain`: its JSON answer."""
        params = {"version": str(lease.version), "offset": str(offset)}
        if sync:
            params["sync"] = "1"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                   TOKEN_HEADER: lease.token}
        if chain:
            headers[CHAIN_HEADER] = ",".join(r.url for r in chain)
        view = memoryview(data).cast("B")
        body = view if len(view) <= STREAM_SLICE else _slices(view)
        try:
            async with self.session.put(f"{replica.url}/chunks/{lease.chunk_id}", params=params,
                                        data=body, headers=headers) as resp:
                if resp.status >= 400:
                    raise await error_from_response(resp)
                return dict(await resp.json(content_type=None))
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise DfsError(errno.EIO, f"chunk {lease.chunk_id}: {replica.url} unreachable: "
                                      f"{exc or type(exc).__name__}") from None


def fanned_out(lease: Lease, errors: list[BaseException | None], length: int) -> list[str]:
    """A fanned-out write's result from each replica's error (None: it took the piece): the first
    replica's error is the write's, as a chain head's is; the others' name them failed."""
    failed: list[str] = []
    for position, (replica, error) in enumerate(zip(lease.servers, errors, strict=True)):
        if error is None:
            continue
        if position == 0:
            raise error
        failed.append(replica.url)
    WRITTEN_BYTES.inc(length)
    return failed
