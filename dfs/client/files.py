"""An open file: reads over cached chunk locations, writes under leases, commits on fsync and close.

Contract: a `FileHandle` sees the file as it was when opened plus its own writes (close-to-open).
Chunk locations are fetched lazily and cached for the life of the handle; a read that meets
another version everywhere refreshes them once. Writes go straight to the chunkservers in pieces of
at most WRITE_PIECE bytes (the handle keeps that much to resend after a failover); the new size and
mtime reach the master on `fsync()` and `close()`.

With an `inline` client (the mount's: dfs/client/inlineio.py), the handle's coroutines run from a
thread without an event loop (`run_inline`) make their calls through it, in that thread; on the
event loop they use the asyncio client. The caller keeps the two from running at once.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING

from dfs.client.chunkio import zeros
from dfs.errors import DfsError
from dfs.protocol import MAX_FILE_SIZE, WRITE_PIECE, Attr, ChunkLocation, Lease, Replica
from dfs.tokens import TOKEN_REFUSED

if TYPE_CHECKING:
    from dfs.client.client import Client

log = logging.getLogger("dfs.client")

LOCATION_BATCH = 256  # chunk slots asked for in one `chunks` call
WRITE_ATTEMPTS = 4
LEASE_MARGIN = 5.0  # seconds before expiry when a cached lease is renewed
SYNC_CONCURRENCY = 8  # chunks of one file fsynced at once by fsync()


class FileHandle:
    def __init__(self, client: Client, attr: Attr, inline: Client | None = None) -> None:
        self.client = client
        self.inline = inline
        self.inode = attr.inode
        self.attr = attr
        self.size = attr.size
        self._locations: dict[int, ChunkLocation] = {}
        #: Slot 0's bytes when the master keeps them (master/resident.py); they stand for slot 0.
        self._resident: bytes | None = None
        self._resident_refused = False  # the master said the file keeps its data on chunkservers
        self._fetched: set[int] = set()  # batches of slots asked of the master; absent slots are holes
        self._leases: dict[int, tuple[Lease, float]] = {}
        self._unsynced: set[int] = set()
        self._dirty = False
        self._lock = asyncio.Lock()
        self.closed = False

    @property
    def chunk_size(self) -> int:
        return self.client.chunk_size

    def _via(self) -> Client:
        """The client for this call: the inline one when no event loop runs here (run_inline)."""
        if self.inline is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return self.inline
        return self.client

    @property
    def dirty(self) -> bool:
        """Written since the last commit (size and mtime not yet on the master); fsync may still
        have chunks to sync when this is False."""
        return self._dirty

    # ---- reading -------------------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        parts = [piece async for piece in self.read_stream(offset, size)]
        return b"".join(parts)

    async def read_stream(self, offset: int, size: int | None = None) -> AsyncIterator[bytes]:
        """Bytes from `offset`, `size` of them at most, never past the end of the file."""
        if offset < 0 or (size is not None and size < 0):
            raise DfsError(errno.EINVAL, "negative offset or size")
        end = self.size if size is None else min(self.size, offset + size)
        pos = offset
        while pos < end:
            index, within = divmod(pos, self.chunk_size)
            stop = min(end - index * self.chunk_size, self.chunk_size)
            async for piece in self._read_chunk(index, within, stop):
                pos += len(piece)
                yield piece

    async def _read_chunk(self, index: int, start: int, end: int) -> AsyncIterator[bytes]:
        if index == 0 and self._resident is None and 0 not in self._locations:
            await self._location(0)  # its reply carries the resident bytes, if any
        if index == 0 and self._resident is not None:
            data = self._resident[start:end]
            yield data
            async for piece in zeros(end - start - len(data)):
                yield piece
            return
        loc = await self._location(index)
        if loc is None:
            async for piece in zeros(end - start):
                yield piece
            return
        done = 0
        try:
            async for piece in self._via().chunkio.read(loc, start, end):
                done += len(piece)
                yield piece
        except DfsError as err:
            if err.errno != errno.ESTALE and err.errno not in TOKEN_REFUSED:
                raise
            log.info("chunk %d v%d of inode %d: %s; refreshing locations", loc.chunk_id, loc.version, self.inode,
                     "token refused" if err.errno in TOKEN_REFUSED else "moved on")
            self._forget_locations()
            loc = await self._location(index)
            if loc is None:
                async for piece in zeros(end - start - done):
                    yield piece
                return
            try:
                async for piece in self._via().chunkio.read(loc, start + done, end):
                    yield piece
            except DfsError as again:
                if again.errno in TOKEN_REFUSED:
                    raise DfsError(errno.EACCES, f"chunk {loc.chunk_id} of inode {self.inode}: the chunkservers "
                                   f"refused a fresh token from the master: {again.message}") from None
                raise

    async def _location(self, index: int) -> ChunkLocation | None:
        """Where slot `index` lives (None: a hole), fetched LOCATION_BATCH slots at a time."""
        batch = index // LOCATION_BATCH
        if batch not in self._fetched and index not in self._locations:
            first = batch * LOCATION_BATCH
            reply = await self._via().master.call("chunks", inode=self.inode, first=first, count=LOCATION_BATCH)
            self.seed_locations(reply["chunks"], reply.get("resident_b64"))
            self._fetched.add(batch)
        return self._locations.get(index)

    def seed_locations(self, items: list[dict], resident_b64: str | None = None) -> None:
        """Locations the master sent along with something else (an open's getattr: `chunks` replies),
        and slot 0's resident bytes when it sent them."""
        for item in items:
            loc = ChunkLocation.from_json(item)
            self._locations.setdefault(loc.index, loc)
        if resident_b64 is not None:
            self._resident = base64.b64decode(resident_b64)

    @property
    def resident_bytes(self) -> int:
        """Bytes of slot 0 held here because the master keeps them (0: none)."""
        return 0 if self._resident is None else len(self._resident)

    def drop_resident(self) -> None:
        """Let go of slot 0's resident bytes (a memory cap): a later read of slot 0 asks again."""
        if self._resident is not None:
            self._resident = None
            self._fetched.discard(0)

    def refresh(self, attr: Attr) -> None:
        """Take attributes fetched anew (close-to-open): new size, and locations asked again."""
        self.attr = attr
        self.size = attr.size
        self._forget_locations()

    def _forget_locations(self) -> None:
        self._locations.clear()
        self._fetched.clear()
        self._resident = None

    # ---- writing -------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes | bytearray | memoryview, sync: bool = False) -> int:
        """Write `data` at `offset`; returns the number of bytes written (all of them)."""
        self._check_range(offset, len(data))
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            index, within = divmod(offset + pos, self.chunk_size)
            n = min(len(view) - pos, self.chunk_size - within, WRITE_PIECE)
            await self._write_piece(index, within, view[pos : pos + n], sync)
            pos += n
        return len(view)

    async def write_stream(self, offset: int, source: AsyncIterable[bytes]) -> int:
        """Write everything `source` yields, starting at `offset`, in pieces of at most WRITE_PIECE.

        The last piece of each chunk is written with sync, so a finished chunk is durable on every
        replica before anything can commit it. Memory held: one piece. A stream small enough to be
        resident data (master/resident.py) is committed with its bytes instead.
        """
        buf = bytearray()
        pos = offset
        total = 0

        async def send(final: bool) -> None:
            nonlocal pos, buf
            while buf:
                index, within = divmod(pos, self.chunk_size)
                room = self.chunk_size - within
                n = min(len(buf), room, WRITE_PIECE)
                if n < WRITE_PIECE and n < room and not final:
                    return  # wait for more bytes
                self._check_range(pos, n)
                await self._write_piece(index, within, memoryview(buf)[:n], sync=(n == room or final))
                # not `del buf[:n]`: a failed attempt's request may still hold a view of buf (BufferError)
                buf = buf[n:]
                pos += n

        async for piece in source:
            buf += piece
            total += len(piece)
            if len(buf) >= WRITE_PIECE:
                await send(final=False)
        if pos == offset and self.may_be_resident(offset + len(buf)):
            self._check_range(offset, len(buf))
            if await self.commit_resident([(offset, bytes(buf))], offset + len(buf)):
                return total
        await send(final=True)
        return total

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0:
            raise DfsError(errno.EINVAL, "negative offset")
        if offset + length > MAX_FILE_SIZE:
            raise DfsError(errno.EFBIG, f"file would exceed {MAX_FILE_SIZE} bytes")

    async def _lease(self, index: int, exclude: list[int] | None = None) -> Lease:
        now = time.monotonic()
        cached = self._leases.get(index)
        if cached and not exclude and cached[1] - LEASE_MARGIN > now:
            return cached[0]
        lease = await self._via().lease(self.inode, index, exclude or [])
        self._leases[index] = (lease, now + lease.expires_in)
        if index == 0:  # the master moved any resident bytes into this chunk
            self._resident = None
        # our own reads of this slot must use the new version and replicas
        self._locations[index] = ChunkLocation(index, lease.chunk_id, lease.version, list(lease.servers),
                                               lease.read_token)
        return lease

    async def _write_piece(self, index: int, within: int, data: memoryview, sync: bool) -> None:
        exclude: list[int] = []
        last_error: DfsError | None = None
        token_refused = False
        for _attempt in range(WRITE_ATTEMPTS):
            lease = await self._lease(index, exclude)
            try:
                failed = await self._via().chunkio.write(lease, within, data, sync)
            except DfsError as err:
                last_error = err
                if err.errno == errno.ESTALE:  # our lease was superseded: ask again
                    self._leases.pop(index, None)
                    continue
                if err.errno in TOKEN_REFUSED:  # its token expired (or the secret changed): once more
                    if token_refused:
                        raise DfsError(errno.EACCES, f"chunk {lease.chunk_id}: the chunkservers refused a fresh "
                                       f"write token from the master: {err.message}") from None
                    token_refused = True
                    self._leases.pop(index, None)
                    continue
                log.warning("chunk %d v%d: write to %s failed (%s); excluding it",
                            lease.chunk_id, lease.version, lease.servers[0].url, err.message)
                exclude = [lease.servers[0].id]
                if err.errno == errno.ENOSPC and len(lease.servers) == 1:
                    raise
                continue
            if not failed:
                break
            bad = _ids_of(lease.servers, failed)
            log.warning("chunk %d v%d: replicas %s failed; rewriting the piece without them",
                        lease.chunk_id, lease.version, ", ".join(failed))
            exclude = bad
            last_error = DfsError(errno.EIO, f"replicas failed: {', '.join(failed)}")
        else:
            raise DfsError(last_error.errno if last_error else errno.EIO,
                           f"chunk slot {index} of inode {self.inode}: write failed "
                           f"after {WRITE_ATTEMPTS} attempts: {last_error.message if last_error else ''}")
        if data:  # an empty write only syncs: it must not commit a size (maybe stale by now) again
            self.size = max(self.size, index * self.chunk_size + within + len(data))
            self._dirty = True
        if sync:
            self._unsynced.discard(index)
        else:
            self._unsynced.add(index)

    async def truncate(self, size: int) -> None:
        if size < 0 or size > MAX_FILE_SIZE:
            raise DfsError(errno.EINVAL if size < 0 else errno.EFBIG, f"bad size {size}")
        await self.flush()
        self.attr = await self._via().setattr(self.inode, size=size)
        self.size = size
        self._forget_locations()
        self._leases.clear()

    async def flush(self, durable: bool = True, release: bool = False,
                    deferred: Mapping[str, int] | None = None) -> None:
        """Commit size and mtime to the master; with `durable`, first fsync the written chunks on
        every replica (close(2) needs the commit, fsync(2) both; a kill -9 of a chunkserver loses
        nothing either way, since the data is in its page cache). With `release`, the leases go
        back in the same call (a close(2)): a later write asks for new ones. `deferred`: attributes
        set since the writes, committed with them (`mtime_ns` instead of the master's clock, `mode`)."""
        async with self._lock:
            if durable:
                # a lease given back at a close: its chunks are synced under a new one
                await self._sync_chunks([index for index in sorted(self._unsynced)
                                         if index in self._leases or index * self.chunk_size < self.size])
                self._unsynced.clear()
            release = release and bool(self._leases)
            self._dirty = self._dirty or bool(deferred)
            if self._dirty or release:
                changes = {"size": self.size, **(deferred or {})} if self._dirty else {}
                reply = await self._via().master.call("commit", inode=self.inode, client=self.client.client_id,
                                                      release=release, **changes)
                if release:
                    self._leases.clear()
                if self._dirty:
                    self.attr = Attr.from_json(reply["attr"])
                    self._dirty = False

    def may_be_resident(self, end: int) -> bool:
        """Whether bytes written up to `end` may go to the master with the commit (resident data):
        small, and nothing of this file known to be on chunkservers. The master has the last word."""
        return (0 < end <= self.client.resident_max and self.size <= self.client.resident_max
                and not self._resident_refused and not self._leases and not self._unsynced
                and not self._locations)

    async def commit_resident(self, extents: list[tuple[int, bytes | bytearray]], size: int, release: bool = False,
                              deferred: Mapping[str, int] | None = None) -> bool:
        """Commit the written `extents` themselves, for the master to keep (master/resident.py), with
        the new `size` and the attributes `deferred` to the commit. False: the master keeps this
        file's data on chunkservers; send the extents there (and never ask again for this handle)."""
        async with self._lock:
            pieces = [{"offset": offset, "data_b64": base64.b64encode(data).decode("ascii")}
                      for offset, data in extents]
            dirops = self.client.dirops
            queued = dirops.commit(self.attr, size, pieces, dict(deferred or {})) if dirops is not None else None
            if queued is not None:  # a file made in a delegated folder: with the batch (dfs/client/dirops.py)
                self.attr = queued
            else:
                try:
                    reply = await self._via().master.call("commit", inode=self.inode, client=self.client.client_id,
                                                          release=release, size=size, resident=pieces,
                                                          **(deferred or {}))
                except DfsError as err:
                    if err.errno != errno.EXDEV:
                        raise
                    self._resident_refused = True
                    return False
                self.attr = Attr.from_json(reply["attr"])
            self.size = max(self.size, size)
            self._dirty = False
            self._forget_locations()  # a later read asks for the bytes as the master now has them
            return True

    async def _sync_chunks(self, indices: list[int]) -> None:
        """fsync these chunks on every replica, SYNC_CONCURRENCY at a time (each is a round trip
        through the chain and a few disk flushes, mostly waiting)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # run inline, in the calling thread (run_inline): one after another
            for index in indices:
                await self._write_piece(index, 0, memoryview(b""), sync=True)
            return
        gate = asyncio.Semaphore(SYNC_CONCURRENCY)

        async def sync(index: int) -> None:
            async with gate:
                await self._write_piece(index, 0, memoryview(b""), sync=True)

        await asyncio.gather(*(sync(index) for index in indices))

    async def fsync(self) -> None:
        await self.flush()

    def close_clean(self) -> bool:
        """Close at once, without a call, when there is nothing to commit or give back (False: call
        `close()`)."""
        if not self.closed and (self._dirty or self._leases):
            return False
        self.closed = True
        return True

    async def close(self, deferred: Mapping[str, int] | None = None) -> None:
        """Flush, commit and give the leases back (a later writer need not wait for them to expire)."""
        if self.closed:
            return
        try:
            # close(2) commits; only fsync(2) forces the disks
            await self.flush(durable=False, release=True, deferred=deferred)
        finally:
            self.closed = True
            if self._leases:  # the commit failed: give them back all the same
                self._leases.clear()
                await self._via().master.call("commit", inode=self.inode, client=self.client.client_id,
                                              release=True)

    async def __aenter__(self) -> FileHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _ids_of(servers: list[Replica], urls: list[str]) -> list[int]:
    wanted = {u.rstrip("/") for u in urls}
    return [s.id for s in servers if s.url.rstrip("/") in wanted]
