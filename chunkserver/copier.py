"""Replication copies: this server (the target) pulls one chunk from another replica (the source).

`POST /chunks/{id}/replicate {source, version, rate?}` (docs/PROTOCOL.md) runs `pull_chunk`:

1. `GET source/chunks/{id}/info`: the source must hold `version`, complete; its length and digest;
2. `GET source/chunks/{id}?version=V` with a Range over the data: the source verifies every block it
   sends; the body streams into a temp file beside the chunk (`<id>.chunk.<r>.copy.tmp`) while the
   block digests of what arrives are taken, at most `rate` bytes per second;
3. the digest of the copy must equal the source's digest and the length its length; the temp file is
   synced and installed by `ChunkStore.install_copy` (pending meta, rename, final meta).

Nothing is installed unless it is verified; a failure removes the temp file. Two pulls of one chunk
at once are refused (EBUSY).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from array import array
from pathlib import Path
from typing import Any

import aiohttp

from dfs.checksum import BLOCK_SIZE, block_digest, chunk_digest
from dfs.chunkserver import diskio
from dfs.chunkserver.store import SLICE, ChunkStore
from dfs.errors import DfsError, describe
from dfs.jobs import Throttle
from dfs.tokens import TOKEN_HEADER

log = logging.getLogger("chunkserver.copier")

#: Seconds of silence from the source before a pull gives up.
SOURCE_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=15.0)

_pulling: set[tuple[int, int]] = set()  # (id of the store, chunk id)


async def _source_info(session: aiohttp.ClientSession, source: str, chunk_id: int, token: str) -> dict[str, Any]:
    async with session.get(f"{source}/chunks/{chunk_id}/info", headers={TOKEN_HEADER: token},
                           timeout=SOURCE_TIMEOUT) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise DfsError.from_json(resp.status, body)
        if not isinstance(body, dict):
            raise DfsError(errno.EIO, f"chunk {chunk_id}: {source} sent a bad info reply")
        return body


class _TempWriter:
    """Fills SLICE-sized, block-aligned buffers and writes each on a disk thread while the next fills,
    taking the digest of every block as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.digests = array("Q")
        self.size = 0
        self._bufs = (bytearray(SLICE), bytearray(SLICE))
        self._current = 0
        self._fill = 0
        self._inflight: asyncio.Future[None] | None = None

    async def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), SLICE - self._fill)
            self._bufs[self._current][self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == SLICE:
                await self._flush()

    async def _flush(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight
        if self._fill:
            self._inflight = diskio.submit(self._write, self._bufs[self._current], self.size, self._fill)
            self.size += self._fill
            self._current ^= 1
            self._fill = 0

    def _write(self, buf: bytearray, pos: int, size: int) -> None:
        view = memoryview(buf)[:size]
        done = 0
        while done < size:
            done += os.pwrite(self.fd, view[done:], pos + done)
        self.digests.extend(block_digest(view[i : i + BLOCK_SIZE]) for i in range(0, size, BLOCK_SIZE))

    async def finish(self) -> None:
        """Write what is buffered and sync the file."""
        await self._flush()
        await self._flush()
        await diskio.run(os.fsync, self.fd)

    async def close(self) -> None:
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
            self._inflight = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def pull_chunk(store: ChunkStore, session: aiohttp.ClientSession, chunk_id: int, version: int,
                     source: str, source_token: str, rate: float | None = None) -> dict[str, Any]:
    """Copy chunk `chunk_id` at `version` from `source` into this store, reading it there with
    `source_token` (a read token the master issued with the order); the reply of the endpoint."""
    key = (id(store), chunk_id)
    if key in _pulling:
        raise DfsError(errno.EBUSY, f"chunk {chunk_id}: a copy is already being pulled")
    _pulling.add(key)
    try:
        return await _pull(store, session, chunk_id, version, source.rstrip("/"), source_token, rate)
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        log.warning("chunk %d v%d: copy from %s failed: %s", chunk_id, version, source, describe(exc))
        raise DfsError(errno.EIO, f"chunk {chunk_id}: source {source} failed: {describe(exc)}") from None
    except DfsError as err:
        log.warning("chunk %d v%d: copy from %s failed: %s %s", chunk_id, version, source, err.code, err.message)
        raise
    finally:
        _pulling.discard(key)


async def _pull(store: ChunkStore, session: aiohttp.ClientSession, chunk_id: int, version: int, source: str,
                token: str, rate: float | None) -> dict[str, Any]:
    started = time.monotonic()
    info = await _source_info(session, source, chunk_id, token)
    if info.get("version") != version or info.get("pending"):
        raise DfsError(errno.ESTALE, f"chunk {chunk_id}: {source} has v{info.get('version')}"
                       f"{' (pending)' if info.get('pending') else ''}, not v{version}")
    length, digest = int(info["length"]), str(info["digest"])
    local = store.index.get(chunk_id)
    if local is not None and local.version > version:
        raise DfsError(errno.ESTALE, f"chunk {chunk_id}: have v{local.version}, newer than v{version}")
    if local is not None and local.version == version and not local.pending and not local.writing:
        mine = await store.info(chunk_id)
        if mine["digest"] == digest and mine["length"] == length:
            log.info("chunk %d v%d: already here, identical to %s", chunk_id, version, source)
            return {**mine, "copied": 0}
    throttle = Throttle(rate)
    with store.reserve(chunk_id, length) as root:
        tmp = store.copy_path(root, chunk_id)
        writer = _TempWriter(tmp)
        installed = False
        try:
            if length:
                headers = {"Range": f"bytes=0-{length - 1}", TOKEN_HEADER: token}
                async with session.get(f"{source}/chunks/{chunk_id}", params={"version": str(version)},
                                       headers=headers, timeout=SOURCE_TIMEOUT) as resp:
                    if resp.status >= 400:
                        raise DfsError.from_json(resp.status, await _json_or_none(resp))
                    try:
                        async for piece in resp.content.iter_chunked(SLICE):
                            await writer.feed(piece)
                            await throttle.consume(len(piece))
                    except aiohttp.ClientPayloadError as exc:
                        raise DfsError(errno.EIO, f"chunk {chunk_id}: transfer from {source} cut off: "
                                       f"{exc}") from None
            await writer.finish()
            if writer.size != length:
                raise DfsError(errno.EIO, f"chunk {chunk_id}: got {writer.size} of {length} bytes from {source}")
            got = chunk_digest(writer.digests)
            if got != digest:
                raise DfsError(errno.EIO, f"chunk {chunk_id} v{version}: the copy's digest {got} differs from "
                               f"{source}'s {digest}")
            await writer.close()
            result = await store.install_copy(chunk_id, version, root, tmp, length, writer.digests)
            installed = True
        finally:
            if not installed:
                await writer.close()
                with contextlib.suppress(OSError):
                    tmp.unlink()
    seconds = time.monotonic() - started
    log.info("chunk %d v%d copied from %s: %d bytes in %.2fs", chunk_id, version, source, length, seconds)
    return {**result, "digest": digest, "copied": length, "seconds": round(seconds, 3)}


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return None
