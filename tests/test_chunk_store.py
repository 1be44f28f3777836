"""The chunk store on its own, over temporary data dirs (chunkserver/store.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dfs.checksum import chunk_digest, digests_of
from dfs.chunkserver import diskio, spares
from dfs.chunkserver.store import BLOCK_SIZE, FLAG_PENDING, HEADER, INLINE_WRITE, ChunkStore, chunk_paths, read_meta
from dfs.errors import DfsError

MiB = 1024 * 1024


async def pieces(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(store: ChunkStore, chunk_id: int, version: int, start: int, end: int) -> bytes:
    out = bytearray()
    async for piece in store.read(chunk_id, version, start, end):
        out += piece
    return bytes(out)


async def opened(tmp_path: Path, dirs: int = 1, capacity: int | None = None) -> ChunkStore:
    store = ChunkStore([tmp_path / f"d{i}" for i in range(dirs)], capacity)
    await store.open()
    return store


async def write(store: ChunkStore, chunk_id: int, version: int, offset: int, data: bytes, **kw: bool) -> int:
    return await store.write(chunk_id, version, offset, len(data), pieces(data), **kw)


def expect_digests_match(store: ChunkStore, chunk_id: int, model: bytes) -> None:
    """The meta on disk describes exactly `model` (a full independent re-check of the digests)."""
    entry = store.index[chunk_id]
    data_path, meta_path = chunk_paths(entry.root, chunk_id)
    meta = read_meta(meta_path)
    assert meta.length == len(model) == entry.length
    assert data_path.read_bytes()[: len(model)] == model
    assert list(meta.digests) == digests_of(model)


async def test_round_trip_and_info(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    data = random.randbytes(3 * MiB + 12345)
    assert await write(store, 7, 1, 0, data, sync=True) == len(data)
    assert await read_all(store, 7, 1, 0, len(data)) == data
    assert await read_all(store, 7, 1, 1000, 2 * MiB + 5) == data[1000 : 2 * MiB + 5]
    # past the data length reads zeros, up to whatever end the caller asks (the chunk size)
    assert await read_all(store, 7, 1, len(data) - 10, 4 * MiB) == data[-10:] + bytes(4 * MiB - len(data))
    info = await store.info(7)
    assert info == {"chunk_id": 7, "version": 1, "length": len(data), "pending": False,
                    "digest": chunk_digest(digests_of(data))}
    expect_digests_match(store, 7, data)
    assert store.used == len(data)
    assert store.list() == [{"chunk_id": 7, "version": 1, "length": len(data), "pending": False}]
    data_path, meta_path = chunk_paths(tmp_path / "d0", 7)
    assert data_path.parent.name == "07" and meta_path.name == "7.meta"


@pytest.mark.parametrize(("offset", "size"), [
    (100, 10),  # inside one block
    (BLOCK_SIZE - 5, 10),  # across a block boundary
    (BLOCK_SIZE, BLOCK_SIZE),  # exactly one block
    (3 * BLOCK_SIZE + 7, 2 * MiB),  # many blocks, unaligned, beyond the old end
    (MiB - 3, 6),  # across a slice boundary
    (0, 3 * MiB),  # everything
])


async def test_overwrite(tmp_path: Path, offset: int, size: int) -> None:
    store = await opened(tmp_path)
    model = bytearray(random.randbytes(2 * MiB + 999))
    await write(store, 1, 1, 0, bytes(model))
    patch = random.randbytes(size)
    await write(store, 1, 2, offset, patch)
    model[offset : offset + size] = patch
    assert await read_all(store, 1, 2, 0, len(model)) == model
    expect_digests_match(store, 1, bytes(model))


async def test_sparse_gap_is_zero_filled(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    await write(store, 2, 1, 0, b"a" * 100)
    await write(store, 2, 1, 5 * BLOCK_SIZE + 3, b"b" * 10)
    model = b"a" * 100 + bytes(5 * BLOCK_SIZE + 3 - 100) + b"b" * 10
    assert await read_all(store, 2, 1, 0, len(model)) == model
    expect_digests_match(store, 2, model)
    # a new chunk written far from its start
    await write(store, 3, 1, MiB + 1, b"xyz")
    assert await read_all(store, 3, 1, 0, MiB + 4) == bytes(MiB + 1) + b"xyz"
    expect_digests_match(store, 3, bytes(MiB + 1) + b"xyz")


async def test_truncate_down_and_up(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    data = random.randbytes(MiB + 500)
    await write(store, 4, 1, 0, data)
    assert await store.truncate(4, 2, 70_000) == {"chunk_id": 4, "version": 2, "length": 70_000}
    assert store.used == 70_000
    expect_digests_match(store, 4, data[:70_000])
    assert await store.truncate(4, 3, 300_000) == {"chunk_id": 4, "version": 3, "length": 300_000}
    model = data[:70_000] + bytes(230_000)
    expect_digests_match(store, 4, model)
    assert await read_all(store, 4, 3, 0, MiB) == model + bytes(MiB - 300_000)
    with pytest.raises(DfsError) as exc:
        await store.truncate(4, 2, 10)
    assert exc.value.errno == errno.ESTALE
    with pytest.raises(DfsError) as exc:
        await store.truncate(99, 1, 10)
    assert exc.value.errno == errno.ENOENT


async def test_version_rules(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    await write(store, 5, 3, 0, b"hello")
    with pytest.raises(DfsError) as exc:  # older version than ours
        await write(store, 5, 2, 0, b"x")
    assert exc.value.errno == errno.ESTALE
    for version in (2, 4):  # reading another version than ours
        with pytest.raises(DfsError) as exc:
            await read_all(store, 5, version, 0, 5)
        assert exc.value.errno == errno.ESTALE
    with pytest.raises(DfsError) as exc:
        await read_all(store, 6, 1, 0, 5)
    assert exc.value.errno == errno.ENOENT
    await write(store, 5, 4, 0, b"J")  # a newer version takes over
    assert await read_all(store, 5, 4, 0, 5) == b"Jello"

    # a write that breaks off leaves the chunk pending: reads refuse it, the report says so
    async def broken() -> AsyncIterator[bytes]:
        yield b"12"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write(5, 5, 0, 4, broken())
    assert store.index[5].pending and store.index[5].version == 5
    header = HEADER.unpack(chunk_paths(store.index[5].root, 5)[1].read_bytes()[: HEADER.size])
    assert header[2] & FLAG_PENDING and header[4] == 5
    with pytest.raises(DfsError) as exc:
        await read_all(store, 5, 5, 0, 5)
    assert exc.value.errno == errno.ESTALE
    assert store.report() == [{"chunk_id": 5, "version": 5, "length": 5, "pending": True}]
    expect_digests_match(store, 5, b"12llo")  # the meta still matches what was written
    # a completed write at a newer version clears it
    await write(store, 5, 6, 2, b"34")
    assert await read_all(store, 5, 6, 0, 5) == b"1234o"
    assert not store.index[5].pending

    # delete only up to the given version
    assert not await store.delete(5, 5)
    assert await store.delete(5, 6)
    assert not await store.delete(5, 6)
    assert store.used == 0 and not chunk_paths(tmp_path / "d0", 5)[0].exists()


async def test_pending_set_before_first_byte(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    await write(store, 8, 1, 0, b"abc")
    meta_path = chunk_paths(tmp_path / "d0", 8)[1]
    seen = []

    async def watched() -> AsyncIterator[bytes]:
        seen.append(read_meta(meta_path, header_only=True))
        yield b"xyz"

    await store.write(8, 2, 0, 3, watched())
    assert seen[0].pending and seen[0].version == 2
    assert not read_meta(meta_path).pending


async def test_checksum_mismatch_quarantines(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    data = random.randbytes(MiB)
    await write(store, 9, 1, 0, data)
    data_path, meta_path = chunk_paths(tmp_path / "d0", 9)
    with open(data_path, "r+b") as f:  # flip one byte in block 5
        f.seek(5 * BLOCK_SIZE + 17)
        byte = f.read(1)
        f.seek(5 * BLOCK_SIZE + 17)
        f.write(bytes([byte[0] ^ 0xFF]))
    # a read of blocks before the bad one is fine
    assert await read_all(store, 9, 1, 0, 5 * BLOCK_SIZE) == data[: 5 * BLOCK_SIZE]
    with pytest.raises(DfsError) as exc:
        await read_all(store, 9, 1, 0, MiB)
    assert exc.value.errno == errno.EBADMSG
    assert 9 not in store.index and store.used == 0
    assert not data_path.exists() and not meta_path.exists()
    assert len(os.listdir(tmp_path / "d0" / "quarantine")) == 2
    assert store.take_bad() == [{"chunk_id": 9, "version": 1, "problem": "corrupt"}]
    assert store.take_bad() == []
    with pytest.raises(DfsError) as exc:
        await read_all(store, 9, 1, 0, 10)
    assert exc.value.errno == errno.ENOENT


async def test_missing_data_file_quarantines(tmp_path: Path) -> None:
    """A data file deleted by hand (meta file left) is a damaged replica, not a server error."""
    store = await opened(tmp_path)
    await write(store, 10, 1, 0, random.randbytes(1000))
    data_path, meta_path = chunk_paths(tmp_path / "d0", 10)
    data_path.unlink()
    with pytest.raises(DfsError) as exc:
        await read_all(store, 10, 1, 0, 1000)
    assert exc.value.errno == errno.EBADMSG
    assert 10 not in store.index and not meta_path.exists()
    assert store.take_bad() == [{"chunk_id": 10, "version": 1, "problem": "corrupt"}]


async def test_capacity(tmp_path: Path) -> None:
    store = await opened(tmp_path, capacity=MiB)
    await write(store, 10, 1, 0, bytes(MiB - 10))
    with pytest.raises(DfsError) as exc:
        await write(store, 11, 1, 0, bytes(11))
    assert exc.value.errno == errno.ENOSPC
    assert 11 not in store.index and not chunk_paths(tmp_path / "d0", 11)[1].exists()
    with pytest.raises(DfsError) as exc:  # growing an existing chunk counts too
        await write(store, 10, 1, MiB - 10, bytes(11))
    assert exc.value.errno == errno.ENOSPC
    with pytest.raises(DfsError) as exc:
        await store.truncate(10, 1, MiB + 1)
    assert exc.value.errno == errno.ENOSPC
    await write(store, 10, 1, 0, b"x" * 1000)  # overwriting needs no room
    await write(store, 12, 1, 0, bytes(10))
    usage = store.usage()
    assert usage["capacity"] == MiB and usage["used"] == MiB and usage["free"] == 0


async def test_restart_rebuilds_index(tmp_path: Path) -> None:
    store = await opened(tmp_path, dirs=2)
    model = {}
    for chunk_id in range(1, 40):
        model[chunk_id] = random.randbytes(random.randrange(0, 200_000))
        await write(store, chunk_id, chunk_id % 3 + 1, 0, model[chunk_id])
    roots = {e.root for e in store.index.values()}
    assert len(roots) >= 1
    report = sorted(store.report(), key=lambda r: r["chunk_id"])
    # garbage of all kinds in a data dir
    sub = tmp_path / "d0" / "chunks"
    (sub / "zz").mkdir()
    (sub / "05" / "junk.txt").write_text("junk")
    (sub / "06" / "262.meta").write_bytes(b"DFSC not a header")
    (sub / "06" / "262.chunk").write_bytes(b"data")
    (sub / "07" / "519.chunk").write_bytes(b"orphan")
    (sub / "08" / "8.meta.tmp").write_bytes(b"half written")
    again = await opened(tmp_path, dirs=2)
    assert sorted(again.report(), key=lambda r: r["chunk_id"]) == report
    assert again.used == sum(len(d) for d in model.values())
    for chunk_id, data in model.items():
        assert await read_all(again, chunk_id, chunk_id % 3 + 1, 0, len(data)) == data
    assert {b["chunk_id"] for b in again.take_bad()} == {262, 519}
    assert not (sub / "08" / "8.meta.tmp").exists()
    assert len(os.listdir(tmp_path / "d0" / "quarantine")) == 5


async def test_new_chunks_spread_over_dirs(tmp_path: Path) -> None:
    store = await opened(tmp_path, dirs=2)
    await write(store, 1, 1, 0, b"x")
    assert store.index[1].root in store.dirs
    assert store.usage()["used"] == 1


async def test_concurrent_writes_to_one_chunk_serialize(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    blobs = [bytes([i]) * (MiB // 2) for i in range(1, 5)]
    await asyncio.gather(*(write(store, 1, 1, i * MiB // 4, blob) for i, blob in enumerate(blobs)))
    data = await read_all(store, 1, 1, 0, store.index[1].length)
    assert len(data) == MiB // 4 * 3 + MiB // 2
    expect_digests_match(store, 1, data)


async def test_read_waits_for_write_in_progress(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    await write(store, 1, 1, 0, b"a" * 1000)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"b" * 500
        await release.wait()
        yield b"b" * 500

    writing = asyncio.create_task(store.write(1, 2, 0, 1000, slow()))
    await asyncio.sleep(0.05)
    assert store.index[1].writing and store.index[1].pending
    reading = asyncio.create_task(read_all(store, 1, 2, 0, 1000))
    await asyncio.sleep(0.05)
    assert not reading.done()
    release.set()
    await writing
    assert await reading == b"b" * 1000


async def test_crash_mid_write_is_recovered_by_next_write(tmp_path: Path) -> None:
    store = await opened(tmp_path)
    data = bytearray(random.randbytes(MiB))
    await write(store, 3, 1, 0, bytes(data))
    data_path, meta_path = chunk_paths(tmp_path / "d0", 3)
    # as a crash would leave it: pending meta with the old digests, some new bytes on disk
    raw = bytearray(meta_path.read_bytes())
    raw[6] |= FLAG_PENDING
    raw[12:20] = (2).to_bytes(8, "little")
    meta_path.write_bytes(bytes(raw))
    with open(data_path, "r+b") as f:
        f.seek(700_000)
        f.write(b"N" * 1000)
    data[700_000:701_000] = b"N" * 1000
    again = await opened(tmp_path)
    assert again.report() == [{"chunk_id": 3, "version": 2, "length": MiB, "pending": True}]
    await write(again, 3, 3, 0, b"new")  # completes at a newer version: every digest is taken again
    data[:3] = b"new"
    assert await read_all(again, 3, 3, 0, MiB) == data
    expect_digests_match(again, 3, bytes(data))


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range and O_DIRECT are Linux's")


async def test_large_writes_bypass_the_page_cache(tmp_path: Path) -> None:
    """Large writes send their aligned slices with O_DIRECT (the rest buffered, with write-behind);
    mixed with small buffered writes over the same pages, the chunk holds what a file would."""
    assert diskio._SYNC_FILE_RANGE is not None
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    direct = diskio.open_direct(probe)
    assert direct is not None  # the data dir's file system takes O_DIRECT: the test covers that path
    os.close(direct)
    store = await opened(tmp_path)
    model = bytearray()

    async def put(version: int, offset: int, data: bytes) -> None:
        await write(store, 9, version, offset, data)
        model[len(model) : offset + len(data)] = bytes(max(0, offset + len(data) - len(model)))
        model[offset : offset + len(data)] = data

    await put(1, 0, os.urandom(3 * MiB + 5))  # aligned: direct, with a buffered tail
    await put(1, 5000, os.urandom(300))  # small and buffered, inside pages written directly
    await put(2, 1000, os.urandom(2 * MiB))  # unaligned start: first slice buffered, then direct
    await put(2, 4 * MiB, os.urandom(MiB + 4096))  # past the end, after a gap
    assert await read_all(store, 9, 2, 0, len(model)) == model
    expect_digests_match(store, 9, bytes(model))


@pytest.mark.timeout(30)
async def test_small_reads_of_an_open_chunk_see_writes_and_corruption(tmp_path: Path) -> None:
    """Small reads keep the chunk open (digests, data file): a write since, or a flipped byte, is seen."""
    store = await opened(tmp_path)
    data = bytearray(random.randbytes(3 * BLOCK_SIZE))
    await write(store, 12, 1, 0, bytes(data))
    for start in (100, 70_000, 100):  # the second and third read find the chunk open
        assert await read_all(store, 12, 1, start, start + 4096) == data[start : start + 4096]
    await write(store, 12, 2, 70_010, b"new")
    data[70_010:70_013] = b"new"
    assert await read_all(store, 12, 2, 70_000, 74_096) == data[70_000:74_096]
    with pytest.raises(DfsError) as exc:
        await read_all(store, 12, 1, 0, 10)
    assert exc.value.errno == errno.ESTALE
    data_path, _ = chunk_paths(tmp_path / "d0", 12)
    with open(data_path, "r+b") as f:  # through the page cache, as any later corruption is read
        f.seek(2 * BLOCK_SIZE + 5)
        f.write(bytes([data[2 * BLOCK_SIZE + 5] ^ 1]))
    assert await read_all(store, 12, 2, 0, 4096) == data[:4096]  # other blocks stay readable
    with pytest.raises(DfsError) as exc:
        await read_all(store, 12, 2, 2 * BLOCK_SIZE, 2 * BLOCK_SIZE + 4096)
    assert exc.value.errno == errno.EBADMSG
    assert 12 not in store.index and not data_path.exists()
    with pytest.raises(DfsError) as exc:
        await read_all(store, 12, 2, 0, 10)
    assert exc.value.errno == errno.ENOENT


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size, sync", [(4096, False), (3 * MiB + 5, False), (4096, True)])
async def test_new_chunk_survives_restart(tmp_path: Path, size: int, sync: bool) -> None:
    """A new chunk's files are made by its first disk call (a small one: after its body is in), the meta
    pending before any byte of data is on disk; after a restart the chunk is reported and reads back."""
    store = await opened(tmp_path)
    data_path, meta_path = chunk_paths(tmp_path / "d0", 21)
    data = random.randbytes(size)
    seen = []

    async def watched() -> AsyncIterator[bytes]:
        async for piece in pieces(data):
            if meta_path.exists():
                try:
                    meta = read_meta(meta_path, header_only=True)
                except ValueError:  # the first meta is being written in place, by a disk thread, right now
                    meta = None
                if meta is not None:
                    try:
                        on_disk = data_path.stat().st_size
                    except FileNotFoundError:  # the meta is made first: the data file may not exist yet
                        on_disk = 0
                    seen.append(meta.pending and on_disk < size)
            yield piece

    assert await store.write(21, 1, 0, size, watched(), sync=sync) == size
    assert all(seen) and (len(seen) > 0) == (size > INLINE_WRITE)
    assert sorted(os.listdir(data_path.parent)) == ["21.chunk", "21.meta"]
    expect_digests_match(store, 21, data)
    again = await opened(tmp_path)
    assert again.report() == [{"chunk_id": 21, "version": 1, "length": size, "pending": False}]
    assert await read_all(again, 21, 1, 0, size) == data
    await write(again, 21, 2, 10, b"over")  # a later write replaces that meta as any other
    assert await read_all(again, 21, 2, 0, 20) == data[:10] + b"over" + data[14:20]


@pytest.mark.timeout(30)
async def test_new_chunk_cut_short_is_never_served(tmp_path: Path) -> None:
    """What a crash while writing new chunks can leave: a pending meta without data file (killed
    between the two), a meta cut short (its first, written in place when no spare file was left), a
    pending meta with part of the data. None is served; a cut meta is quarantined at start, a pending
    chunk is completed by the next write."""
    store = await opened(tmp_path)
    for chunk_id in (31, 32):
        await write(store, chunk_id, 1, 0, random.randbytes(3 * BLOCK_SIZE))
    data_31, meta_31 = chunk_paths(tmp_path / "d0", 31)
    data_31.unlink()
    meta_31.write_bytes(HEADER.pack(b"DFSC", 1, FLAG_PENDING, BLOCK_SIZE, 1, 0))
    meta_32 = chunk_paths(tmp_path / "d0", 32)[1]
    meta_32.write_bytes(meta_32.read_bytes()[:-5])

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        await store.write(33, 1, 0, 4096, broken())
    assert store.index[33].pending
    again = await opened(tmp_path)
    assert sorted(again.report(), key=lambda r: r["chunk_id"]) == [
        {"chunk_id": 31, "version": 1, "length": 0, "pending": True},
        {"chunk_id": 33, "version": 1, "length": 1000, "pending": True}]
    assert {b["chunk_id"] for b in again.take_bad()} == {32}
    for chunk_id, code in ((31, errno.ESTALE), (32, errno.ENOENT), (33, errno.ESTALE)):
        with pytest.raises(DfsError) as exc:
            await read_all(again, chunk_id, 1, 0, 10)
        assert exc.value.errno == code
    await write(again, 33, 2, 0, b"b" * 4096)
    assert await read_all(again, 33, 2, 0, 4096) == b"b" * 4096


@pytest.mark.timeout(30)
async def test_new_chunk_that_cannot_be_saved_is_forgotten(tmp_path: Path) -> None:
    """A new chunk whose files cannot be made leaves nothing behind: not indexed, no space used."""
    store = await opened(tmp_path)
    blocker = tmp_path / "d0" / "chunks" / "15"  # chunk 21 = 0x15 lives in chunks/15/
    blocker.write_bytes(b"a file where the dir should be")
    with pytest.raises(OSError):
        await write(store, 21, 1, 0, b"x" * 4096)
    assert 21 not in store.index and store.used == 0 and store.report() == []
    blocker.unlink()
    await write(store, 21, 1, 0, b"y" * 4096)
    assert await read_all(store, 21, 1, 0, 4096) == b"y" * 4096


@pytest.mark.timeout(30)
async def test_new_chunks_take_spare_files(tmp_path: Path) -> None:
    """New chunks rename empty files made ahead (a create costs far more than a rename): three each; the pool is
    refilled when low, used up falls back to creating, and is dropped at start."""
    store = await opened(tmp_path)
    spare_dir = tmp_path / "d0" / "spare"
    assert os.listdir(spare_dir) == []
    await write(store, 40, 1, 0, b"a" * 4096)  # the pool is empty: files are created, a refill starts
    for _ in range(500):
        if store.spare_files() == spares.FULL:
            break
        await asyncio.sleep(0.01)
    assert store.spare_files() == len(os.listdir(spare_dir)) == spares.FULL
    inodes = {os.stat(spare_dir / name).st_ino for name in os.listdir(spare_dir)}
    data = random.randbytes(5000)
    await write(store, 41, 1, 0, data)
    data_path, meta_path = chunk_paths(tmp_path / "d0", 41)
    assert {data_path.stat().st_ino, meta_path.stat().st_ino} <= inodes
    assert store.spare_files() == len(os.listdir(spare_dir)) == spares.FULL - 3  # data, pending and final meta
    expect_digests_match(store, 41, data)
    (spare_dir / "left").write_bytes(b"a meta whose rename a crash prevented")
    again = await opened(tmp_path)
    assert os.listdir(spare_dir) == []
    assert await read_all(again, 40, 1, 0, 4096) == b"a" * 4096
    assert await read_all(again, 41, 1, 0, 5000) == data
