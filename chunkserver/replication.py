"""Chain replication of a chunk write: write the body locally while forwarding it downstream.

Each piece of the request body goes to the local `ChunkWriter` and, through a bounded queue, into
the streaming body of a PUT to the next server of the chain (which forwards to the rest). Nothing
buffers the whole body. The reply waits for the local write and the downstream answer; a downstream
that cannot be reached is skipped (the chain continues with the one after it), one that fails or
stalls midway is given up on while the local write goes on. Either way it is named in `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from dfs.chunkserver.store import ChunkStore
from dfs.errors import DfsError
from dfs.protocol import CHAIN_HEADER
from dfs.tokens import TOKEN_HEADER

log = logging.getLogger("chunkserver.replication")

#: Pieces (of up to ~256 KiB each) queued for the downstream server before the upstream waits.
QUEUE_PIECES = 16
#: Seconds the downstream may leave the queue full (not reading our body) before it is given up on.
STALL_TIMEOUT = 30.0
#: Seconds of silence allowed on a socket (reading the request body, waiting for an answer).
READ_TIMEOUT = 30.0
DOWNSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=READ_TIMEOUT)
MAX_CHAIN = 16


def parse_chain(header: str | None) -> list[str]:
    """The URLs of an X-DFS-Chain header (EINVAL for anything that is not a short list of http URLs)."""
    if not header:
        return []
    urls = [u.strip().rstrip("/") for u in header.split(",") if u.strip()]
    if len(urls) > MAX_CHAIN:
        raise DfsError(errno.EINVAL, f"{CHAIN_HEADER} names more than {MAX_CHAIN} servers")
    for url in urls:
        if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise DfsError(errno.EINVAL, f"{CHAIN_HEADER}: not an http URL: {url!r}")
    return urls


class Downstream:
    """The forwarding half of a chain write: one PUT to the next reachable server of `chain`."""

    def __init__(self, session: aiohttp.ClientSession, chain: list[str], chunk_id: int, version: int,
                 offset: int, length: int, sync: bool, token: str) -> None:
        self._session = session
        self._token = token  # the client's write token, good on every server of the chain
        self._chain = chain
        self._chunk_id = chunk_id
        self._params = {"version": str(version), "offset": str(offset), **({"sync": "1"} if sync else {})}
        self._length = length
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_PIECES)
        self._dead = False
        self._ended = False
        self._handed = asyncio.Event()  # the whole body is in the downstream's socket, or it was given up on
        self.failed: list[str] = []
        self._task = asyncio.create_task(self._run(), name=f"forward chunk {chunk_id}")

    async def send(self, piece: bytes | None) -> None:
        """Queue a piece (None: the end) for the downstream; waits while the queue is full, never forever."""
        if self._dead:
            return
        if not self._queue.full():
            self._queue.put_nowait(piece)
            return
        try:
            async with asyncio.timeout(STALL_TIMEOUT):
                await self._queue.put(piece)
        except TimeoutError:
            if not self._dead:
                log.warning("chunk %d v%s: downstream %s stalled for %.0fs; giving up on it", self._chunk_id,
                            self._params["version"], self._chain[0], STALL_TIMEOUT)
                self._task.cancel()
                self._give_up()

    async def end(self) -> None:
        """No more pieces: the body ends with what was sent."""
        if not self._ended:
            self._ended = True
            await self.send(None)

    async def handed_over(self) -> None:
        """Wait (STALL_TIMEOUT at most) until the whole body is in the downstream's socket, or the
        downstream was given up on: a write done on the event loop after that overlaps the next one's."""
        await self.end()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STALL_TIMEOUT):
                await self._handed.wait()

    async def result(self) -> list[str]:
        """End the body and wait for the downstream's answer: the URLs that did not take the write."""
        await self.end()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._task.cancelled() and not self._dead:
            self._give_up()
        return self.failed

    async def abort(self) -> None:
        """The local write failed: break off the downstream request (its replica stays pending)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    def _give_up(self, chain: list[str] | None = None) -> None:
        """Name the rest of the chain failed and unblock senders for good."""
        if not self._dead:
            self._dead = True
            self.failed.extend(u for u in (chain if chain is not None else self._chain) if u not in self.failed)
        self._handed.set()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _body(self, started: list[bool]) -> AsyncIterator[bytes]:
        started[0] = True
        while True:
            piece = await self._queue.get()
            if piece is None:
                self._handed.set()
                return
            yield piece

    async def _run(self) -> None:
        chain = self._chain
        version = self._params["version"]
        try:
            while chain:
                url, rest = chain[0], chain[1:]
                started = [False]
                headers = {"Content-Length": str(self._length), "Content-Type": "application/octet-stream",
                           TOKEN_HEADER: self._token}
                if rest:
                    headers[CHAIN_HEADER] = ",".join(rest)
                try:
                    async with self._session.put(f"{url}/chunks/{self._chunk_id}", params=self._params,
                                                 data=self._body(started), headers=headers,
                                                 timeout=DOWNSTREAM_TIMEOUT) as resp:
                        body = await resp.json(content_type=None)
                except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                    if started[0]:
                        raise
                    log.warning("chunk %d v%s: downstream %s unreachable (%s); skipping it", self._chunk_id,
                                version, url, exc)
                    self.failed.append(url)
                    chain = rest
                    continue
                if resp.status == 200 and isinstance(body, dict):
                    self.failed.extend(str(u) for u in body.get("failed") or [])
                else:
                    err = DfsError.from_json(resp.status, body)
                    log.warning("chunk %d v%s: downstream %s refused the write: %s %s", self._chunk_id, version,
                                url, err.code, err.message)
                    self._give_up(chain)
                return
            self._give_up([])  # nobody left to forward to: drop what comes
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("chunk %d v%s: downstream %s failed midway: %s", self._chunk_id, version, chain[0],
                        exc or type(exc).__name__)
            self._give_up(chain)
        finally:
            self._handed.set()


async def chain_write(store: ChunkStore, session: aiohttp.ClientSession, chunk_id: int, version: int,
                      offset: int, length: int, sync: bool, body: aiohttp.StreamReader,
                      chain: list[str], token: str) -> dict[str, Any]:
    """Write `length` bytes of `body` at `offset` locally and down `chain` (forwarding the client's write
    `token`); the PUT reply."""
    async with store.writer(chunk_id, version, offset, length, sync=sync) as writer:
        downstream = Downstream(session, chain, chunk_id, version, offset, length, sync, token) if chain else None
        try:
            loop = asyncio.get_running_loop()
            received = 0
            async with asyncio.timeout(None) as timer:  # only waits for the client's bytes count
                while received < length:
                    timer.reschedule(loop.time() + READ_TIMEOUT)
                    try:
                        piece = await body.readany()
                    except (aiohttp.ClientError, ConnectionError, aiohttp.EofStream):
                        piece = b""
                    timer.reschedule(None)
                    if not piece:
                        raise DfsError(errno.EINVAL, f"chunk {chunk_id}: body ended after {received} of "
                                       f"{length} bytes")
                    received += len(piece)
                    if downstream is not None:
                        await downstream.send(piece)
                    await writer.feed(piece)
            if downstream is not None and writer.inline:
                await downstream.handed_over()  # the next server writes while this one does
            await writer.commit()
        except TimeoutError:
            if downstream is not None:
                await downstream.abort()
            raise DfsError(errno.ETIMEDOUT, f"chunk {chunk_id}: request body stalled") from None
        except BaseException:
            if downstream is not None:
                await downstream.abort()
            raise
    failed = await downstream.result() if downstream is not None else []
    entry = store.index.get(chunk_id)
    log.debug("chunk %d v%d: wrote %d bytes at %d%s", chunk_id, version, length, offset,
              f", failed downstream: {failed}" if failed else "")
    return {"chunk_id": chunk_id, "version": version, "length": entry.length if entry else offset + length,
            "written": length, "failed": failed}
