"""Request bodies as bounded streams: nothing is ever read whole.

`body_stream` yields a PUT body in slices of up to STREAM_SLICE bytes and `part_stream` one file
of a multipart form; both count what passed through a shared `Budget` and raise EFBIG (413) as
soon as the request exceeds the gateway's `--max-upload`, so an oversized upload stops early and
leaves nothing behind (the client library deletes its temporary file). `expect_handler` refuses
an announced oversized body before `100 Continue` is sent. `read_ahead` keeps receiving while the
client library writes the previous piece to the chunkservers, so network and cluster overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from dfs.errors import DfsError
from dfs.gateway.metrics import UPLOADED_BYTES
from dfs.protocol import STREAM_SLICE

#: Slices `read_ahead` may hold before its consumer takes them (at most this many MiB per upload).
READ_AHEAD = 8

#: What a cut-off or malformed body raises while it is read; all become EINVAL (400).
BODY_ERRORS = (HttpProcessingError, aiohttp.ClientPayloadError, ConnectionResetError, ValueError)


class Budget:
    """Bytes one request may still send."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise too_large(self.limit)

    def check_announced(self, content_length: int | None) -> None:
        if content_length is not None and content_length > self.limit:
            raise too_large(self.limit)


def too_large(limit: int) -> DfsError:
    return DfsError(errno.EFBIG, f"request body larger than the gateway's limit of {limit} bytes")


async def body_stream(request: web.Request, budget: Budget) -> AsyncIterator[bytes]:
    """The request body (Content-Length or chunked) in slices, counted against `budget`."""
    try:
        async for piece in request.content.iter_chunked(STREAM_SLICE):
            budget.take(len(piece))
            UPLOADED_BYTES.inc(len(piece))
            yield piece
    except BODY_ERRORS as exc:
        raise DfsError(errno.EINVAL, f"request body cut off or malformed: {exc}") from None


async def part_stream(part: BodyPartReader, budget: Budget) -> AsyncIterator[bytes]:
    """One part of a multipart body, counted against `budget`."""
    try:
        while piece := await part.read_chunk(STREAM_SLICE):
            budget.take(len(piece))
            UPLOADED_BYTES.inc(len(piece))
            yield piece
    except BODY_ERRORS as exc:
        raise DfsError(errno.EINVAL, f"multipart body cut off or malformed: {exc}") from None


async def read_ahead(source: AsyncIterator[bytes], depth: int = READ_AHEAD) -> AsyncIterator[bytes]:
    """Yield what `source` yields, pulled by a task of its own up to `depth` items ahead.

    An error of `source` is raised here, in order. Use under `contextlib.aclosing` so the pulling task
    stops as soon as the consumer does.
    """
    queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)
        else:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def expect_handler(limit: int) -> ExpectHandler:
    """`Expect: 100-continue` handling that answers 413 at once when Content-Length is over `limit`."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        expect = request.headers.get("Expect", "")
        length = request.content_length
        if length is not None and length > limit:
            response = web.json_response(too_large(limit).to_json(), status=413)
            response.force_close()
            return response
        if request.version >= aiohttp.HttpVersion11:
            if expect.lower() != "100-continue":
                err = DfsError(errno.EINVAL, f"unsupported Expect: {expect}")
                return web.json_response(err.to_json(), status=417)
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    return handle
