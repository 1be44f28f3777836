"""On-disk chunk store: one data file and one checksum file per chunk, over one or more data dirs.

Layout of each data dir::

    DIR/chunks/XX/<id>.chunk      the chunk's bytes; XX = low byte of the id, two hex digits
    DIR/chunks/XX/<id>.meta       header and block digests (below)
    DIR/chunks/XX/<id>.meta.tmp   a meta file being replaced (write, fsync, rename); dropped at start
    DIR/chunks/XX/<id>.chunk.<r>.copy.tmp  a replica being copied in from another server; dropped at start
    DIR/quarantine/               files found corrupt or not ours, kept for inspection
    DIR/spare/                    empty files made ahead for new chunks (chunkserver/spares.py); dropped at start

Meta file ``<id>.meta``, little-endian::

    offset  size  field
         0     4  magic b"DFSC"
         4     2  format (u16) = 1
         6     2  flags (u16): bit 0 = pending (a write at `version` has not completed)
         8     4  block_size (u32) = 65536
        12     8  version (u64)
        20     8  length (u64): bytes of data in the chunk
        28   8*n  n = ceil(length / block_size) digests (u64): xxh3_64 of each block of the data
                  file in order; the last block may be short, its digest covers the bytes present

The data file holds `length` bytes (it may be longer after a crash; bytes past `length` are never
read). Bytes past `length` up to the chunk size read as zeros. A meta file is always replaced whole
(temp, rename), so it is either the old or the new one; the first meta of a new chunk has nothing to
replace: written into a spare file and renamed, or (no spare left) written in place (cut short, it
is shorter than its header says: refused as corrupt). Temp files are spare files when the pool
(DIR/spare/, chunkserver/spares.py) has some: a rename costs a fraction of a create.

Writes: the meta records the new version and the pending flag before the first byte is written;
once the body is written (and synced when asked) the digests of the blocks touched are recomputed
(whole blocks from memory, partial ones re-read from disk) and the meta is replaced without the
flag. A write that breaks off leaves a meta that matches the data but stays pending; a chunk still
pending at start (a crash mid-write) has all its digests recomputed by its next completed write.
A new chunk's files (pending meta, then data file) are made by the first disk call of its write,
the last buffer is written by the call that finishes it, and a small new chunk (INLINE_WRITE: the
files of a mount) is written from the event loop in one go: no hop to a disk thread.

Reads verify every block against its digest before returning any byte of it; a mismatch moves the
chunk's files to quarantine/ and raises EBADMSG. Small reads (random 4 KiB reads of a mount) keep
the data file and the digests of the last OPEN_CHUNKS chunks open, and take bytes already in the
page cache on the event loop (RWF_NOWAIT): each hop to a disk thread costs more than the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mmap
import os
import re
import struct
import sys
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from dfs.checksum import BLOCK_SIZE, block_digest, chunk_digest
from dfs.chunkserver import diskio, spares
from dfs.errors import DfsError
from dfs.protocol import STREAM_SLICE

log = logging.getLogger("chunkserver.store")

MAGIC = b"DFSC"
FORMAT = 1
FLAG_PENDING = 0x1
HEADER = struct.Struct("<4sHHIQQ")
DIGEST_SIZE = 8
MAX_ID = (1 << 63) - 1

#: Bytes per disk call of a streaming read or write; a multiple of BLOCK_SIZE.
SLICE = STREAM_SLICE
assert SLICE % BLOCK_SIZE == 0
#: Reads of at most this many bytes use the open chunks and try the page cache from the event loop.
SMALL_READ = 256 * 1024
#: Chunks kept open (data file and digests) for small reads.
OPEN_CHUNKS = 64
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)

#: A new chunk of at most this many bytes, written without sync, is written from the event loop: a few
#: renames of spare files and writes into the page cache, where the hops to a disk thread cost more
#: than the work (a 4 KiB PUT: ~0.75 ms of CPU inline, ~2 ms through the threads, 2 busy cores).
INLINE_WRITE = 64 * 1024

#: Slices at least this long start their writeback at once (streaming writes; small ones need not).
WRITE_BEHIND = SLICE // 2

ZERO_BLOCK_DIGEST = block_digest(bytes(BLOCK_SIZE))
_ZEROS = memoryview(bytes(SLICE))
_NAME = re.compile(r"([1-9][0-9]{0,18})\.(chunk|meta)")
_SUBDIR = re.compile(r"[0-9a-f]{2}")

Buffer = bytes | bytearray | memoryview


def nblocks(length: int) -> int:
    return -(-length // BLOCK_SIZE)


def chunk_paths(root: Path, chunk_id: int) -> tuple[Path, Path]:
    """(data file, meta file) of a chunk in data dir `root`."""
    sub = root / "chunks" / f"{chunk_id & 0xFF:02x}"
    return sub / f"{chunk_id}.chunk", sub / f"{chunk_id}.meta"


def _digests_from(raw: bytes) -> array:
    digests = array("Q")
    digests.frombytes(raw)
    if sys.byteorder == "big":
        digests.byteswap()
    return digests


def _digests_bytes(digests: array) -> bytes:
    if sys.byteorder == "big":
        digests = array("Q", digests)
        digests.byteswap()
    return digests.tobytes()


@dataclass(slots=True)
class Meta:
    version: int
    length: int
    pending: bool
    digests: array

    def encode(self) -> bytes:
        flags = FLAG_PENDING if self.pending else 0
        return HEADER.pack(MAGIC, FORMAT, flags, BLOCK_SIZE, self.version, self.length) + _digests_bytes(
            self.digests)


def read_meta(path: Path, *, header_only: bool = False) -> Meta:
    """Parse a meta file; ValueError if it is not a valid one."""
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
        if len(head) != HEADER.size:
            raise ValueError("short header")
        magic, fmt, flags, block_size, version, length = HEADER.unpack(head)
        if magic != MAGIC or fmt != FORMAT:
            raise ValueError("bad magic or format")
        if block_size != BLOCK_SIZE or flags & ~FLAG_PENDING or version < 1 or version > MAX_ID:
            raise ValueError("bad header fields")
        size = os.fstat(f.fileno()).st_size
        if size != HEADER.size + DIGEST_SIZE * nblocks(length):
            raise ValueError(f"size {size} does not match length {length}")
        digests = array("Q") if header_only else _digests_from(f.read())
    return Meta(version, length, bool(flags & FLAG_PENDING), digests)


def write_meta(path: Path, meta: Meta, *, sync: bool, replace: bool = True, spare: Path | None = None) -> None:
    """Replace `path` atomically: write a temp file, fsync it (when `sync`), rename, fsync the dir.
    The temp file is `spare` (an empty file of chunkserver/spares.py) when given and still there.

    Without `replace` or a spare (the first meta of a new chunk: no old one to keep) the file is
    written in place: cut short, it is shorter than its header says, which `read_meta` refuses."""
    fd = -1
    if spare is not None:
        with contextlib.suppress(FileNotFoundError):
            fd, tmp = os.open(spare, os.O_WRONLY), spare
    if fd < 0:
        tmp = path.with_name(path.name + ".tmp") if replace else path
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = memoryview(meta.encode())
        while data:
            data = data[os.write(fd, data):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if tmp != path:
        os.replace(tmp, path)
    if sync:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    while data:
        n = os.pwrite(fd, data, pos)
        data = data[n:]
        pos += n


def _pread_full(fd: int, size: int, pos: int) -> bytes:
    """`size` bytes at `pos`; bytes the file does not have read as zeros."""
    data = os.pread(fd, size, pos)
    if len(data) < size:
        data += bytes(size - len(data))
    return data


@dataclass(slots=True, eq=False)
class Entry:
    """What the index knows of one chunk; `writing` and `generation` live in memory only."""

    chunk_id: int
    root: Path
    version: int
    length: int
    pending: bool
    writing: bool = False
    generation: int = 0

    def report(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "version": self.version, "length": self.length,
                "pending": self.pending}


@dataclass(slots=True, eq=False)
class OpenChunk:
    """A chunk's data file and digests as of `generation`, open for reads; closed once `dropped`
    and no read uses it."""

    fd: int
    digests: array
    generation: int
    users: int = 0
    dropped: bool = False


class ChunkStore:
    """Chunks of one chunkserver across its data dirs. Use from one event loop."""

    def __init__(self, dirs: Sequence[Path], capacity: int | None = None) -> None:
        if not dirs:
            raise ValueError("a chunk store needs at least one data dir")
        self.dirs = [Path(d) for d in dirs]
        self._capacity = capacity
        self.index: dict[int, Entry] = {}
        self.used = 0
        self._reserved = 0
        self._locks: dict[int, list[Any]] = {}
        self._bad: list[dict[str, Any]] = []
        self._open: OrderedDict[int, OpenChunk] = OrderedDict()  # chunk id -> open for small reads, LRU
        self._spares = {root: spares.Spares(root) for root in self.dirs}  # empty files for new chunks

    # ---- start, space, reports

    async def open(self) -> None:
        """Create the dirs and build the index from the meta files (quarantining garbage)."""
        await diskio.run(self._scan)
        log.info("chunk store: %d chunks, %d bytes in %s", len(self.index), self.used,
                 ", ".join(map(str, self.dirs)))

    def _scan(self) -> None:
        for root in self.dirs:
            (root / "chunks").mkdir(parents=True, exist_ok=True)
            (root / "quarantine").mkdir(parents=True, exist_ok=True)
            self._spares[root].scan()
            for sub in sorted((root / "chunks").iterdir()):
                if not (sub.is_dir() and _SUBDIR.fullmatch(sub.name)):
                    self._quarantine_file(root, sub, "not a chunk dir")
                    continue
                self._scan_subdir(root, sub)

    def _scan_subdir(self, root: Path, sub: Path) -> None:
        names = set(os.listdir(sub))
        for name in sorted(names):
            path = sub / name
            if name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            match = _NAME.fullmatch(name)
            if not match or int(match[1]) & 0xFF != int(sub.name, 16) or not path.is_file():
                self._quarantine_file(root, path, "not a chunk file")
                continue
            chunk_id = int(match[1])
            if match[2] == "chunk":
                if f"{chunk_id}.meta" not in names:
                    self._quarantine_file(root, path, "data without meta")
                    self._bad.append({"chunk_id": chunk_id, "version": 0, "problem": "corrupt"})
                continue
            data_path = sub / f"{chunk_id}.chunk"
            try:
                meta = read_meta(path, header_only=True)
                if not data_path.exists():
                    if meta.length:
                        raise ValueError("data file missing")
                    data_path.touch()
            except (OSError, ValueError) as exc:
                log.warning("chunk %d quarantined at start: %s", chunk_id, exc)
                self._quarantine_file(root, path, str(exc))
                if data_path.exists():
                    self._quarantine_file(root, data_path, str(exc))
                names.discard(f"{chunk_id}.chunk")
                self._bad.append({"chunk_id": chunk_id, "version": 0, "problem": "corrupt"})
                continue
            entry = Entry(chunk_id, root, meta.version, meta.length, meta.pending)
            other = self.index.get(chunk_id)
            if other is not None:  # the same chunk in two dirs: keep the newer, complete one
                key = (not entry.pending, entry.version)
                if key <= (not other.pending, other.version):
                    self._quarantine_entry_sync(entry, "duplicate of a newer copy")
                    continue
                self._quarantine_entry_sync(other, "duplicate of a newer copy")
                self.used -= other.length
            self.index[chunk_id] = entry
            self.used += entry.length

    def _quarantine_file(self, root: Path, path: Path, why: str) -> None:
        dest = root / "quarantine" / f"{path.name}.{int(time.time())}.{uuid.uuid4().hex[:8]}"
        log.warning("quarantined %s: %s", path, why)
        with contextlib.suppress(OSError):
            os.replace(path, dest)

    def _quarantine_entry_sync(self, entry: Entry, why: str) -> None:
        stamp = f"v{entry.version}.{int(time.time())}.{uuid.uuid4().hex[:8]}"
        for path in chunk_paths(entry.root, entry.chunk_id):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, entry.root / "quarantine" / f"{path.name}.{stamp}")
        log.warning("chunk %d v%d quarantined: %s", entry.chunk_id, entry.version, why)

    def _disks(self) -> list[tuple[Path, os.statvfs_result]]:
        """One (dir, statvfs) per distinct file system among the data dirs."""
        seen: set[int] = set()
        out = []
        for root in self.dirs:
            dev = os.stat(root).st_dev
            if dev not in seen:
                seen.add(dev)
                out.append((root, os.statvfs(root)))
        return out

    @staticmethod
    def _free_of(root: Path) -> int:
        st = os.statvfs(root)
        return st.f_bavail * st.f_frsize

    def usage(self) -> dict[str, int]:
        """{capacity, used, free}: free = min(capacity - used, free disk space)."""
        disks = self._disks()
        disk_free = sum(st.f_bavail * st.f_frsize for _, st in disks)
        capacity = self._capacity
        if capacity is None:
            capacity = sum(st.f_blocks * st.f_frsize for _, st in disks)
        return {"capacity": capacity, "used": self.used,
                "free": max(0, min(capacity - self.used - self._reserved, disk_free))}

    def report(self) -> list[dict[str, Any]]:
        """The full chunk report: [{chunk_id, version, length, pending}]."""
        return [e.report() for e in self.index.values()]

    def spare_files(self) -> int:
        """Empty files ready to become new chunks' files (chunkserver/spares.py), over all data dirs."""
        return sum(len(pool) for pool in self._spares.values())

    def take_bad(self) -> list[dict[str, Any]]:
        """Chunks found bad since the last call: [{chunk_id, version, problem}]."""
        bad, self._bad = self._bad, []
        return bad

    def return_bad(self, bad: list[dict[str, Any]]) -> None:
        """Put back what `take_bad` gave when it could not be delivered."""
        self._bad[:0] = bad

    def _check_space(self, chunk_id: int, growth: int, root: Path) -> None:
        if growth <= 0:
            return
        if self._capacity is not None and self.used + self._reserved + growth > self._capacity:
            raise DfsError(errno.ENOSPC, f"chunk {chunk_id}: no space: {growth} more bytes would exceed "
                           f"the capacity of {self._capacity} bytes ({self.used} used)")
        if growth > self._free_of(root) - self._reserved:
            raise DfsError(errno.ENOSPC, f"chunk {chunk_id}: no space left on {root}")

    def _pick_dir(self) -> Path:
        if len(self.dirs) == 1:
            return self.dirs[0]
        return max(self.dirs, key=self._free_of)

    # ---- per-chunk serialization

    @contextlib.asynccontextmanager
    async def _locked(self, chunk_id: int) -> AsyncIterator[None]:
        slot = self._locks.get(chunk_id)
        if slot is None:
            slot = self._locks[chunk_id] = [asyncio.Lock(), 0]
        slot[1] += 1
        try:
            async with slot[0]:
                yield
        finally:
            slot[1] -= 1
            if slot[1] == 0:
                del self._locks[chunk_id]

    def _get(self, chunk_id: int) -> Entry:
        entry = self.index.get(chunk_id)
        if entry is None:
            raise DfsError(errno.ENOENT, f"chunk {chunk_id}: no such chunk")
        return entry

    # ---- write

    @contextlib.asynccontextmanager
    async def writer(self, chunk_id: int, version: int, offset: int, length: int, *,
                     sync: bool = False) -> AsyncIterator[ChunkWriter]:
        """Write `length` bytes at `offset`: feed them to the writer, then `commit()` it.

        Checks the version and space first (ESTALE, ENOSPC), marks the chunk pending at `version`
        before anything is written. Leaving the block without a commit (an error, a short body)
        leaves the chunk pending, with digests that match what was written.
        """
        _check_id(chunk_id, version)
        if offset < 0 or length < 0:
            raise DfsError(errno.EINVAL, f"chunk {chunk_id}: negative offset or length")
        async with self._locked(chunk_id):
            entry = self.index.get(chunk_id)
            if entry is not None and entry.version > version:
                raise DfsError(errno.ESTALE, f"chunk {chunk_id}: have v{entry.version}, newer than v{version}")
            old_length = entry.length if entry is not None else 0
            new_length = max(old_length, offset + length) if length else old_length
            root = entry.root if entry is not None else self._pick_dir()
            growth = new_length - old_length
            self._check_space(chunk_id, growth, root)
            self._reserved += growth
            try:
                was_pending = entry is not None and entry.pending
                fresh: tuple[Path | None, ...] = ()
                if entry is None:  # a new chunk: its files are made by the writer's first disk call
                    fd, digests = -1, array("Q")
                    entry = self.index[chunk_id] = Entry(chunk_id, root, version, 0, True)
                    fresh = tuple(self._spares[root].take() for _ in range(3))
                else:
                    fd, digests = await diskio.run(_begin_write, root, chunk_id, version, old_length, offset, sync)
                entry.version, entry.pending, entry.writing = version, True, True
                entry.generation += 1
                writer = ChunkWriter(entry, fd, digests, offset, length, old_length, was_pending, sync, fresh)
                try:
                    yield writer
                finally:
                    try:
                        await writer.close()
                    finally:
                        if not writer.committed:
                            log.warning("chunk %d v%d: write broke off after %d of %d bytes; left pending",
                                        chunk_id, version, writer.received, length)
                        if writer.saved:
                            final_length = writer.final_length()
                            self.used += final_length - entry.length
                            entry.length = final_length
                            entry.pending = not writer.committed
                        else:  # a new chunk whose meta never reached the disk: it is not here
                            self._forget_new(entry)
                        entry.writing = False
                        entry.generation += 1
            finally:
                self._reserved -= growth

    def _forget_new(self, entry: Entry) -> None:
        """Drop a new chunk whose write failed before its meta was on disk (nothing else of it can be)."""
        if self.index.get(entry.chunk_id) is entry:
            del self.index[entry.chunk_id]
        with contextlib.suppress(OSError):
            chunk_paths(entry.root, entry.chunk_id)[0].unlink(missing_ok=True)

    async def write(self, chunk_id: int, version: int, offset: int, length: int,
                    slices: AsyncIterable[Buffer], *, sync: bool = False) -> int:
        """Write a stream of `length` bytes at `offset`; returns the chunk's data length after it."""
        async with self.writer(chunk_id, version, offset, length, sync=sync) as writer:
            async for piece in slices:
                await writer.feed(piece)
            await writer.commit()
        return self.index[chunk_id].length

    # ---- read

    async def _readable(self, chunk_id: int, version: int) -> Entry:
        _check_id(chunk_id, version)
        entry = self._get(chunk_id)
        if entry.writing:  # wait for the write in progress, then look again
            async with self._locked(chunk_id):
                entry = self._get(chunk_id)
        if entry.version != version:
            raise DfsError(errno.ESTALE, f"chunk {chunk_id}: have v{entry.version}, not v{version}")
        if entry.pending:
            raise DfsError(errno.ESTALE, f"chunk {chunk_id} v{version}: unfinished write")
        return entry

    async def check_readable(self, chunk_id: int, version: int) -> dict[str, Any]:
        """The chunk's report if a read at `version` would be served (ENOENT, ESTALE otherwise)."""
        return (await self._readable(chunk_id, version)).report()

    async def read(self, chunk_id: int, version: int, start: int, end: int) -> AsyncIterator[Buffer]:
        """Bytes [start, end) of the chunk in slices of at most SLICE, every block verified first.

        Past the data length reads zeros. ENOENT, ESTALE (other version, unfinished write), EBADMSG
        (checksum mismatch: the chunk is quarantined), EAGAIN (a write changed it during the read).
        Close the iterator (`contextlib.aclosing`) when stopping early.
        """
        if start < 0 or end < start:
            raise DfsError(errno.EINVAL, f"chunk {chunk_id}: bad range {start}-{end}")
        entry = await self._readable(chunk_id, version)
        generation, length = entry.generation, entry.length
        data_end = min(end, length)
        pos = start
        if pos < data_end:
            small = data_end - start <= SMALL_READ
            opened = self._opened(entry) if small else None
            if opened is None:
                try:
                    fd, digests, first = await diskio.run(_open_read, entry.root, chunk_id, version, length, pos,
                                                          _slice_end(pos, data_end))
                except ValueError as exc:
                    await self._corrupt(entry, generation, f"bad meta file: {exc}")
                opened = self._keep_open(entry, generation, fd, digests, small)
                future: asyncio.Future[tuple[memoryview, int]] | None = _done(first)
            else:
                future = _read_cached(opened, pos, _slice_end(pos, data_end), length)
            opened.users += 1
            try:
                while future is not None:
                    view, bad = await future
                    nxt = _slice_end(pos, data_end)
                    future = None
                    if bad >= 0:
                        await self._corrupt(entry, generation, f"block {bad} checksum mismatch")
                    if nxt < data_end:
                        future = diskio.submit(_read_slice, opened.fd, opened.digests, nxt, _slice_end(nxt, data_end),
                                               length)
                    pos = nxt
                    yield view
            finally:
                if future is not None and not future.done():
                    future.add_done_callback(lambda _: _unuse(opened))
                else:
                    _unuse(opened)
        pos = max(pos, data_end)
        while pos < end:
            n = min(SLICE, end - pos)
            yield _ZEROS[:n]
            pos += n

    def _opened(self, entry: Entry) -> OpenChunk | None:
        """The chunk open for reads as it is now, if it is."""
        opened = self._open.get(entry.chunk_id)
        if opened is None:
            return None
        if opened.generation != entry.generation:
            self._close_open(entry.chunk_id)
            return None
        self._open.move_to_end(entry.chunk_id)
        return opened

    def _keep_open(self, entry: Entry, generation: int, fd: int, digests: array, keep: bool) -> OpenChunk:
        """Wrap a freshly opened chunk; with `keep` (and the chunk unchanged meanwhile), keep it open."""
        opened = OpenChunk(fd, digests, generation)
        if not keep or entry.generation != generation or self.index.get(entry.chunk_id) is not entry:
            opened.dropped = True  # closed after this read
            return opened
        self._close_open(entry.chunk_id)
        self._open[entry.chunk_id] = opened
        while len(self._open) > OPEN_CHUNKS:
            self._close_open(next(iter(self._open)))
        return opened

    def _close_open(self, chunk_id: int) -> None:
        """Stop keeping a chunk open (deleted, quarantined, replaced, or no longer recent)."""
        opened = self._open.pop(chunk_id, None)
        if opened is not None:
            opened.dropped = True
            opened.users += 1
            _unuse(opened)

    async def _corrupt(self, entry: Entry, generation: int, why: str) -> NoReturn:
        """A read found `entry` bad: quarantine it unless a write changed it meanwhile (EAGAIN)."""
        chunk_id, version = entry.chunk_id, entry.version
        async with self._locked(chunk_id):
            if self.index.get(chunk_id) is not entry or entry.generation != generation:
                raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: changed while being read")
            await self._quarantine(entry, why)
        raise DfsError(errno.EBADMSG, f"chunk {chunk_id} v{version}: {why} (replica quarantined)")

    async def _quarantine(self, entry: Entry, why: str) -> None:
        """Move a chunk's files to quarantine/ and report it bad; call with its lock held."""
        if self.index.get(entry.chunk_id) is entry:
            del self.index[entry.chunk_id]
            self.used -= entry.length
        entry.generation += 1
        self._close_open(entry.chunk_id)
        self._bad.append({"chunk_id": entry.chunk_id, "version": entry.version, "problem": "corrupt"})
        await diskio.run(self._quarantine_entry_sync, entry, why)

    async def quarantine(self, chunk_id: int, why: str) -> bool:
        """Quarantine a chunk found bad elsewhere (e.g. by a scrubber); False if unknown."""
        async with self._locked(chunk_id):
            entry = self.index.get(chunk_id)
            if entry is None:
                return False
            await self._quarantine(entry, why)
            return True

    # ---- other operations

    async def truncate(self, chunk_id: int, version: int, length: int) -> dict[str, Any]:
        """Set the data length (zero-filled when growing) and the version; ESTALE if ours is newer."""
        _check_id(chunk_id, version)
        if length < 0:
            raise DfsError(errno.EINVAL, f"chunk {chunk_id}: negative length")
        async with self._locked(chunk_id):
            entry = self._get(chunk_id)
            if entry.version > version:
                raise DfsError(errno.ESTALE, f"chunk {chunk_id}: have v{entry.version}, newer than v{version}")
            growth = length - entry.length
            self._check_space(chunk_id, growth, entry.root)
            await diskio.run(_truncate, entry, version, length)
            self.used += length - entry.length
            entry.version, entry.length = version, length
            entry.generation += 1
            log.info("chunk %d v%d truncated to %d bytes", chunk_id, version, length)
            return {"chunk_id": chunk_id, "version": version, "length": length}

    async def delete(self, chunk_id: int, version: int) -> bool:
        """Delete the chunk if its version is <= `version`; True if it was deleted."""
        _check_id(chunk_id, version)
        async with self._locked(chunk_id):
            entry = self.index.get(chunk_id)
            if entry is None or entry.version > version:
                return False
            del self.index[chunk_id]
            self.used -= entry.length
            entry.generation += 1
            self._close_open(chunk_id)
            await diskio.run(_remove, entry)
            log.info("chunk %d v%d deleted", chunk_id, entry.version)
            return True

    async def info(self, chunk_id: int) -> dict[str, Any]:
        """{chunk_id, version, length, pending, digest}; digest = chunk_digest of the block digests."""
        _check_id(chunk_id, 1)
        async with self._locked(chunk_id):
            entry = self._get(chunk_id)
            meta = await diskio.run(read_meta, chunk_paths(entry.root, chunk_id)[1])
            return {**entry.report(), "digest": chunk_digest(meta.digests)}

    def list(self) -> list[dict[str, Any]]:
        return self.report()

    # ---- replication copies and lease recovery (chunkserver/copier.py, docs/PROTOCOL.md)

    @contextlib.contextmanager
    def reserve(self, chunk_id: int, length: int) -> Iterator[Path]:
        """Room for a copy of `length` bytes (ENOSPC otherwise); yields the data dir it goes to."""
        entry = self.index.get(chunk_id)
        root = entry.root if entry is not None else self._pick_dir()
        growth = length - (entry.length if entry is not None else 0)
        self._check_space(chunk_id, growth, root)
        self._reserved += max(0, growth)
        try:
            yield root
        finally:
            self._reserved -= max(0, growth)

    @staticmethod
    def copy_path(root: Path, chunk_id: int) -> Path:
        """A fresh temp name for an incoming copy, beside the chunk's files (dropped at start if left)."""
        data_path, _ = chunk_paths(root, chunk_id)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        return data_path.with_name(f"{data_path.name}.{uuid.uuid4().hex[:8]}.copy.tmp")

    async def install_copy(self, chunk_id: int, version: int, root: Path, tmp: Path, length: int,
                           digests: array) -> dict[str, Any]:
        """Install a verified, synced copy `tmp` as the chunk at `version` (replacing an older one).

        Crash safety: the meta is first replaced by one that describes the new data but is marked
        pending, then the data file is renamed into place, then the meta is replaced by the final
        one. A crash in between leaves a pending replica (never served, reported as stale).
        """
        _check_id(chunk_id, version)
        async with self._locked(chunk_id):
            entry = self.index.get(chunk_id)
            if entry is not None and (entry.version > version or entry.writing):
                raise DfsError(errno.ESTALE, f"chunk {chunk_id}: have v{entry.version}, newer than the copy's "
                               f"v{version} (or a write is in progress)")
            if entry is not None and entry.root != root:
                raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: moved while being copied")
            self._close_open(chunk_id)  # its data file is replaced
            await diskio.run(_install, root, chunk_id, version, tmp, length, digests)
            if entry is None:
                entry = self.index[chunk_id] = Entry(chunk_id, root, version, 0, False)
            self.used += length - entry.length
            entry.version, entry.length, entry.pending = version, length, False
            entry.generation += 1
            log.info("chunk %d v%d installed from a verified copy (%d bytes)", chunk_id, version, length)
            return entry.report()

    async def recover(self, chunk_id: int, from_version: int, to_version: int) -> dict[str, Any]:
        """Lease recovery: take the chunk at `from_version` (pending or not) as it is on disk, with every
        digest taken again, as complete at `to_version`. ESTALE if the chunk is at another version."""
        _check_id(chunk_id, to_version)
        if to_version <= from_version:
            raise DfsError(errno.EINVAL, f"chunk {chunk_id}: recovery must raise the version")
        async with self._locked(chunk_id):
            entry = self._get(chunk_id)
            if entry.version != from_version:
                raise DfsError(errno.ESTALE, f"chunk {chunk_id}: have v{entry.version}, not v{from_version}")
            await diskio.run(_recover, entry, to_version)
            was_pending = entry.pending
            entry.version, entry.pending = to_version, False
            entry.generation += 1
            log.info("chunk %d recovered: v%d%s -> v%d (%d bytes)", chunk_id, from_version,
                     " pending" if was_pending else "", to_version, entry.length)
        return await self.info(chunk_id)


def _check_id(chunk_id: int, version: int) -> None:
    if not 0 < chunk_id <= MAX_ID:
        raise DfsError(errno.EINVAL, f"bad chunk id {chunk_id}")
    if not 0 < version <= MAX_ID:
        raise DfsError(errno.EINVAL, f"chunk {chunk_id}: bad version {version}")


def _slice_end(pos: int, end: int) -> int:
    return min(end, (pos // SLICE + 1) * SLICE)


# ---- disk work (runs on disk threads)


def _begin_write(root: Path, chunk_id: int, version: int, old_length: int, offset: int,
                 sync: bool) -> tuple[int, array]:
    """Record version + pending in the meta of a chunk we have, open its data file; returns (fd, digests)."""
    data_path, meta_path = chunk_paths(root, chunk_id)
    meta = read_meta(meta_path)
    meta.version, meta.pending = version, True
    write_meta(meta_path, meta, sync=sync)
    fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if offset > old_length and os.fstat(fd).st_size > old_length:
            os.ftruncate(fd, old_length)  # bytes of a broken write must not show up in the gap
    except OSError:
        os.close(fd)
        raise
    return fd, meta.digests


def _open_read(root: Path, chunk_id: int, version: int, length: int, start: int,
               end: int) -> tuple[int, array, tuple[memoryview, int]]:
    """Open the data file and read its digests, then the first slice [start, end): one disk call. The
    disk starts on the data while the meta file is read (a cold small read waits for one, not two)."""
    data_path, meta_path = chunk_paths(root, chunk_id)
    try:
        fd = os.open(data_path, os.O_RDONLY)
    except FileNotFoundError:
        fd = -1
    try:
        if fd >= 0:
            first = start - start % BLOCK_SIZE
            os.posix_fadvise(fd, first, min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, length) - first,
                             os.POSIX_FADV_WILLNEED)
        try:
            meta = read_meta(meta_path)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"chunk {chunk_id}: no such chunk") from None
        if meta.version != version or meta.length != length or meta.pending:
            raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: changed while being opened")
        if fd < 0:  # meta without data: a damaged replica, quarantined like a bad checksum
            raise ValueError("data file missing")
        return fd, meta.digests, _read_slice(fd, meta.digests, start, end, length)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _read_slice(fd: int, digests: array, start: int, end: int, length: int,
                nowait: bool = False) -> tuple[memoryview, int]:
    """Bytes [start, end) (end <= length) after verifying the blocks they lie in: (view, -1), or
    (empty, index of the first bad block). With `nowait`, BlockingIOError unless every byte is in
    the page cache (then nothing waits for the disk)."""
    first = start - start % BLOCK_SIZE
    last = min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, length)
    data = memoryview(_pread_nowait(fd, last - first, first) if nowait else _pread_full(fd, last - first, first))
    for pos in range(first, last, BLOCK_SIZE):
        block = pos // BLOCK_SIZE
        if block_digest(data[pos - first : min(pos + BLOCK_SIZE, last) - first]) != digests[block]:
            return data[:0], block
    return data[start - first : end - first], -1


def _pread_nowait(fd: int, size: int, pos: int) -> bytearray:
    """`size` bytes at `pos` from the page cache only (BlockingIOError when any must come from disk)."""
    assert _RWF_NOWAIT is not None
    buf = bytearray(size)
    if os.preadv(fd, [buf], pos, _RWF_NOWAIT) < size:  # partly cached, or a short file: the slow path
        raise BlockingIOError(errno.EAGAIN, "not all in the page cache")
    return buf


def _read_cached(opened: OpenChunk, start: int, end: int, length: int) -> asyncio.Future[tuple[memoryview, int]]:
    """A slice of an open chunk: from the page cache right here if it is all there, else on a disk thread."""
    global _RWF_NOWAIT
    if _RWF_NOWAIT is not None:
        try:
            return _done(_read_slice(opened.fd, opened.digests, start, end, length, nowait=True))
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _RWF_NOWAIT = None  # this kernel or file system cannot: always the disk thread
    return diskio.submit(_read_slice, opened.fd, opened.digests, start, end, length)


def _done(result: tuple[memoryview, int]) -> asyncio.Future[tuple[memoryview, int]]:
    future: asyncio.Future[tuple[memoryview, int]] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


def _unuse(opened: OpenChunk) -> None:
    opened.users -= 1
    if opened.dropped and opened.users == 0:
        os.close(opened.fd)


def _truncate(entry: Entry, version: int, length: int) -> None:
    data_path, meta_path = chunk_paths(entry.root, entry.chunk_id)
    meta = read_meta(meta_path)
    old = meta.length
    fd = os.open(data_path, os.O_RDWR)
    try:
        if length >= old:
            os.ftruncate(fd, length)
        count = nblocks(length)
        del meta.digests[count:]
        meta.digests.extend([0] * (count - len(meta.digests)))
        for block in range(min(old, length) // BLOCK_SIZE, count):
            pos = block * BLOCK_SIZE
            if pos >= old and pos + BLOCK_SIZE <= length:
                meta.digests[block] = ZERO_BLOCK_DIGEST
            else:
                meta.digests[block] = block_digest(_pread_full(fd, min(BLOCK_SIZE, length - pos), pos))
        os.fdatasync(fd)
        meta.version, meta.length = version, length
        write_meta(meta_path, meta, sync=True)
        if length < old:
            os.ftruncate(fd, length)
    finally:
        os.close(fd)


def _install(root: Path, chunk_id: int, version: int, tmp: Path, length: int, digests: array) -> None:
    data_path, meta_path = chunk_paths(root, chunk_id)
    write_meta(meta_path, Meta(version, length, True, digests), sync=True)
    os.replace(tmp, data_path)
    _fsync_dir(data_path.parent)
    write_meta(meta_path, Meta(version, length, False, digests), sync=True)


def _recover(entry: Entry, version: int) -> None:
    """Digests of every block taken from the data, data synced, meta at `version` without the flag."""
    data_path, meta_path = chunk_paths(entry.root, entry.chunk_id)
    length = entry.length
    digests = array("Q")
    fd = os.open(data_path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size != length:
            os.ftruncate(fd, length)
        for pos in range(0, length, SLICE):
            data = memoryview(_pread_full(fd, min(SLICE, length - pos), pos))
            digests.extend(block_digest(data[i : i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    write_meta(meta_path, Meta(version, length, False, digests), sync=True)


def _remove(entry: Entry) -> None:
    for path in chunk_paths(entry.root, entry.chunk_id):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class ChunkWriter:
    """Streams one write into a chunk file: copies incoming pieces into one of two SLICE buffers and
    writes a full buffer on a disk thread while the other fills. Buffers end on block boundaries, so
    the digests of whole blocks are taken from memory; partial blocks are re-read at the end.

    A large write's buffers are page-aligned (diskio.aligned_buffer) and its aligned slices go to
    disk with O_DIRECT where the file system takes it: no copy into (and no allocation of) page
    cache, which costs more CPU than anything else a chunkserver does for a write. Reads, and the
    partial blocks re-read here, stay buffered; the kernel keeps the two coherent."""

    def __init__(self, entry: Entry, fd: int, digests: array, offset: int, length: int, old_length: int,
                 was_pending: bool, sync: bool, spares: tuple[Path | None, ...] = ()) -> None:
        self.entry = entry
        #: A new chunk's empty files made ahead: its data file, its pending meta, its final meta's temp.
        self._spares = spares or (None, None, None)
        self._fd = fd
        self._digests = digests
        self._offset = offset
        self._length = length
        self._old_length = old_length
        self._was_pending = was_pending
        self._sync = sync
        size = min(SLICE, (nblocks(length) + 1) * BLOCK_SIZE)  # small writes get small buffers
        self._aligned = size == SLICE
        self._bufs: tuple[bytearray | mmap.mmap, ...] = (
            (diskio.aligned_buffer(size), diskio.aligned_buffer(size)) if self._aligned
            else (bytearray(size), bytearray(size)))
        self._direct_fd: int | None = None
        self._direct_tried = False
        self._current = 0
        self._pos = offset  # file offset of the current buffer's first byte
        self._fill = 0
        self._target = min(len(self._bufs[0]), SLICE - offset % BLOCK_SIZE)
        self._received = 0
        self._inflight: asyncio.Future[None] | None = None
        self._computed: set[int] = set()
        self._closed = False
        self.committed = False
        #: A meta of the chunk is on disk (for a new chunk, fd < 0: once its first disk call made it).
        self.saved = fd >= 0
        self._inline = fd < 0 and length <= INLINE_WRITE and not sync
        end_blocks = nblocks(offset + length)
        if len(digests) < end_blocks:
            digests.extend([0] * (end_blocks - len(digests)))

    @property
    def received(self) -> int:
        return self._received

    @property
    def inline(self) -> bool:
        """The write is finished on the event loop (a small new chunk: INLINE_WRITE), without a hop."""
        return self._inline

    async def feed(self, data: Buffer) -> None:
        """Take the next piece of the body (any size); EINVAL past the declared length."""
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        size = len(view)
        if self._received + size > self._length:
            raise DfsError(errno.EINVAL, f"chunk {self.entry.chunk_id}: body longer than {self._length} bytes")
        done = 0
        while done < size:
            n = min(size - done, self._target - self._fill)
            self._bufs[self._current][self._fill : self._fill + n] = view[done : done + n]
            self._fill += n
            done += n
            self._received += n
            if self._fill == self._target:
                await self._flush()

    async def _flush(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight
        if self._fill == 0:
            return
        buf = self._bufs[self._current]
        self._inflight = diskio.submit(self._write_sync, buf, self._pos, self._fill)
        self._current ^= 1
        self._pos += self._fill
        self._fill = 0
        self._target = len(self._bufs[self._current])

    def _open_new(self) -> int:
        """A new chunk's files, made by its first disk call, in the order of a write to a chunk we have:
        the meta with version and pending flag (written in place: there is no old one to keep), then
        the data file. Spare files renamed into place when there are, else created. A data file
        already there has no meta (the remains of a write that broke off): garbage, replaced."""
        if self._fd < 0:
            data_path, meta_path = chunk_paths(self.entry.root, self.entry.chunk_id)
            meta = Meta(self.entry.version, 0, True, array("Q"))
            try:
                write_meta(meta_path, meta, sync=self._sync, replace=False, spare=self._spares[1])
            except FileNotFoundError:
                data_path.parent.mkdir(parents=True, exist_ok=True)
                write_meta(meta_path, meta, sync=self._sync, replace=False, spare=self._spares[1])
            self.saved = True
            if spares.place(self._spares[0], data_path):
                self._fd = os.open(data_path, os.O_RDWR)
                return self._fd
            self._fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        return self._fd

    def _write_sync(self, buf: bytearray | mmap.mmap, pos: int, size: int) -> None:
        view = memoryview(buf)[:size]
        fd = self._open_new()
        if not self._write_direct(view, pos):
            _pwrite_all(fd, view, pos)
            if size >= WRITE_BEHIND:
                diskio.start_writeback(fd, pos, size)
        block = nblocks(pos)
        while (block + 1) * BLOCK_SIZE <= pos + size:
            start = block * BLOCK_SIZE - pos
            self._digests[block] = block_digest(view[start : start + BLOCK_SIZE])
            self._computed.add(block)
            block += 1

    def _write_direct(self, view: memoryview, pos: int) -> bool:
        """Write with O_DIRECT when the buffer is aligned and the file system allows it (disk thread)."""
        if not self._aligned or pos % diskio.DIRECT_ALIGN or len(view) < diskio.DIRECT_ALIGN:
            return False
        if not self._direct_tried:
            self._direct_tried = True
            self._direct_fd = diskio.open_direct(chunk_paths(self.entry.root, self.entry.chunk_id)[0])
        if self._direct_fd is None:
            return False
        if diskio.pwrite_direct(self._direct_fd, self._fd, view, pos):
            return True
        self._close_direct()  # refused (EINVAL): buffered from now on
        return False

    def _close_direct(self) -> None:
        fd, self._direct_fd = self._direct_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _release_buffers(self) -> None:
        """Aligned buffers go back to the pool once no disk thread may still be writing from them."""
        if self._aligned and (self._inflight is None or self._inflight.done()):
            self._aligned = False
            for buf in self._bufs:
                diskio.release_buffer(buf)  # type: ignore[arg-type]
            self._bufs = ()

    async def commit(self) -> None:
        """Finish a write whose whole body was fed: digests, sync, meta without the pending flag."""
        if self._received != self._length:
            raise DfsError(errno.EINVAL, f"chunk {self.entry.chunk_id}: body shorter than {self._length} bytes")
        await self._finish(complete=True)
        self.committed = True

    async def close(self) -> None:
        """Release the file; if not committed, save what was written as pending."""
        if not self._closed:
            try:
                await self._finish(complete=False)
            except Exception:
                log.exception("chunk %d v%d: cannot save a broken-off write", self.entry.chunk_id,
                              self.entry.version)
            finally:
                if not self._closed:
                    self._closed = True
                    if self._fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(self._fd)
                    self._close_direct()
        self._release_buffers()

    def final_length(self) -> int:
        """The chunk's data length once this write (or the part of it received) is on disk."""
        end = self._offset + self._received
        return max(self._old_length, end) if self._received else self._old_length

    async def _finish(self, *, complete: bool) -> None:
        """Write what is buffered and finish, in one disk call (a small write costs one hop, a small
        new chunk none: INLINE_WRITE)."""
        try:
            if self._inflight is not None:
                inflight, self._inflight = self._inflight, None
                await inflight
            last = (self._bufs[self._current], self._pos, self._fill) if self._fill else None
            self._pos += self._fill
            self._fill = 0
            if self._inline:
                self._finish_sync(complete, last)
            else:
                await diskio.run(self._finish_sync, complete, last)
        except BaseException:
            if self._inflight is not None:  # let the disk thread finish before the fd goes away
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self._inflight)
            raise

    def _finish_sync(self, complete: bool, last: tuple[bytearray | mmap.mmap, int, int] | None) -> None:
        entry = self.entry
        length = self.final_length()
        try:
            if last is not None:
                self._write_sync(*last)
            fd = self._open_new()
            size = os.fstat(fd).st_size
            if size != length:
                os.ftruncate(fd, length)
            count = nblocks(length)
            digests = self._digests
            del digests[count:]
            if self._was_pending:  # digests may not match the data after a crash: take them all again
                dirty = range(count)
                self._computed.clear()
            elif self._received:
                end = nblocks(self._offset + self._received)
                dirty = range(min(self._offset, self._old_length) // BLOCK_SIZE, min(end, count))
            else:
                dirty = range(0)
            for block in dirty:
                if block in self._computed:
                    continue
                pos = block * BLOCK_SIZE
                if pos >= self._old_length and pos + BLOCK_SIZE <= min(self._offset, length):
                    digests[block] = ZERO_BLOCK_DIGEST  # wholly inside a zero-filled gap
                else:
                    digests[block] = block_digest(_pread_full(fd, min(BLOCK_SIZE, length - pos), pos))
            if complete and self._sync:
                os.fdatasync(fd)
            meta = Meta(entry.version, length, not complete, digests)
            write_meta(chunk_paths(entry.root, entry.chunk_id)[1], meta, sync=self._sync, spare=self._spares[2])
        finally:
            self._closed = True
            self._close_direct()
            if self._fd >= 0:
                os.close(self._fd)
