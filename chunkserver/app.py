"""HTTP face of a chunkserver: the routes of docs/PROTOCOL.md "Chunkserver" over the chunk store.

Handlers only parse and check requests and shape replies; the store (chunkserver/store.py) and the
chain (chunkserver/replication.py) do the work. Until the master has answered our registration the
chunk size is unknown, so data requests get 503 EAGAIN.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from dfs import tls
from dfs.chunkserver import copier, replication
from dfs.chunkserver.config import ChunkserverConfig
from dfs.chunkserver.heartbeat import MasterLink
from dfs.chunkserver.localread import describe as describe_local
from dfs.chunkserver.localread import local_reads_ctx
from dfs.chunkserver.metrics import COPIES, FORWARDED_BYTES, READ_BYTES, WRITES, add_chunkserver_metrics
from dfs.chunkserver.scrubber import Scrubber
from dfs.chunkserver.store import MAX_ID, SMALL_READ, ChunkStore
from dfs.errors import DfsError
from dfs.metrics import metrics_middleware
from dfs.protocol import CHAIN_HEADER
from dfs.tokens import MAX_TOKEN_LENGTH, TOKEN_HEADER, Token
from dfs.web import Handler, Params, add_health, error_middleware, json_error, read_json

log = logging.getLogger("chunkserver.app")

CONFIG = web.AppKey("config", ChunkserverConfig)
STORE = web.AppKey("store", ChunkStore)
SESSION = web.AppKey("session", aiohttp.ClientSession)
LINK = web.AppKey("link", MasterLink)


class Load:
    """Requests being served right now (sent to the master in heartbeats as `load`)."""

    def __init__(self) -> None:
        self.active = 0


LOAD = web.AppKey("load", Load)
SCRUBBER = web.AppKey("scrubber", Scrubber)


#: Routes anyone may call; every other one needs a chunk token (dfs/tokens.py), checked here (401) and
#: in its handler against the op, chunk and version it serves (`authorize`, 403).
OPEN_PATHS = frozenset({"/health", "/metrics", "/local"})
TOKEN = web.RequestKey("token", Token)


@web.middleware
async def token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS and request.match_info.http_exception is None:  # 404/405 stay what they are
        keys = request.app[CONFIG].keys
        if keys is None:
            raise DfsError(errno.EAGAIN, "chunkserver has no cluster keys")
        try:
            request[TOKEN] = keys.tokens.verify(request.headers.get(TOKEN_HEADER))
        except DfsError as err:
            log.info("%s %s refused: %s", request.method, request.path, err.message)
            response = json_error(err)
            response.headers["WWW-Authenticate"] = TOKEN_HEADER  # a 401 names how to authenticate
            return response
    return await handler(request)


def authorize(request: web.Request, op: str, chunk_id: int, version: int | None = None) -> None:
    """403 unless the request's token grants `op` on this chunk (at `version`, when given)."""
    try:
        request[TOKEN].require(op, chunk_id, version)
    except DfsError as err:
        log.info("%s %s refused: %s", request.method, request.path, err.message)
        raise


@web.middleware
async def load_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    load = request.app[LOAD]
    load.active += 1
    try:
        return await handler(request)
    finally:
        load.active -= 1

_ID = re.compile(r"[0-9]{1,19}")
_RANGE_NUMBER = re.compile(r"[0-9]{1,19}")


class Unsatisfiable(Exception):
    """A Range outside the chunk: 416 with `Content-Range: bytes */chunk_size`."""


def chunk_id_of(request: web.Request) -> int:
    text = request.match_info["id"]
    if not _ID.fullmatch(text) or not 0 < int(text) <= MAX_ID:
        raise DfsError(errno.EINVAL, f"bad chunk id {text!r}")
    return int(text)


def version_of(query: Params) -> int:
    return query.int("version", minimum=1, maximum=MAX_ID)


def chunk_size_of(request: web.Request) -> int:
    size = request.app[LINK].chunk_size
    if size is None:
        raise DfsError(errno.EAGAIN, "chunkserver not registered with the master yet")
    return size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a `Range: bytes=a-b | a- | -n` header over `size` bytes; None without one."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        raise DfsError(errno.EINVAL, f"unsupported Range {header!r}: expected bytes=a-b")
    if "," in spec:
        raise DfsError(errno.EINVAL, "multiple ranges are not supported")
    first, sep, last = (part.strip() for part in spec.partition("-"))
    if not sep or (first and not _RANGE_NUMBER.fullmatch(first)) or (last and not _RANGE_NUMBER.fullmatch(last)) \
            or not (first or last):
        raise DfsError(errno.EINVAL, f"malformed Range {header!r}")
    if not first:  # suffix: the last n bytes
        count = int(last)
        if count == 0:
            raise Unsatisfiable
        return max(0, size - count), size
    start = int(first)
    end = int(last) + 1 if last else size
    if start >= size or end <= start:
        raise Unsatisfiable
    return start, min(end, size)


def unsatisfiable(chunk_id: int, size: int) -> web.Response:
    err = DfsError(errno.ERANGE, f"chunk {chunk_id}: range not satisfiable (chunk size {size})")
    return web.json_response(err.to_json(), status=err.status, headers={"Content-Range": f"bytes */{size}"})


async def put_chunk(request: web.Request) -> web.Response:
    chunk_id = chunk_id_of(request)
    query = Params(request.query)
    version = version_of(query)
    offset = query.int("offset", minimum=0, maximum=MAX_ID)
    sync = query.bool("sync", False)
    authorize(request, "write", chunk_id, version)
    chunk_size = chunk_size_of(request)
    length = request.content_length
    if length is None:
        raise DfsError(errno.EINVAL, "Content-Length required")
    if offset + length > chunk_size:
        raise DfsError(errno.ERANGE, f"chunk {chunk_id}: {offset}+{length} exceeds the chunk size {chunk_size}")
    chain = replication.parse_chain(request.headers.get(CHAIN_HEADER))
    if request.app[CONFIG].url.rstrip("/") in chain:
        raise DfsError(errno.EINVAL, f"{CHAIN_HEADER} names this server")
    result = await replication.chain_write(request.app[STORE], request.app[SESSION], chunk_id, version, offset,
                                           length, sync, request.content, chain, request.headers[TOKEN_HEADER])
    WRITES.inc(length)
    if len(result["failed"]) < len(chain):  # someone downstream took it
        FORWARDED_BYTES.inc(length)
    return web.json_response(result)


async def get_chunk(request: web.Request) -> web.StreamResponse:
    chunk_id = chunk_id_of(request)
    version = version_of(Params(request.query))
    authorize(request, "read", chunk_id, version)
    chunk_size = chunk_size_of(request)
    try:
        wanted = parse_range(request.headers.get("Range"), chunk_size)
    except Unsatisfiable:
        return unsatisfiable(chunk_id, chunk_size)
    start, end = wanted or (0, chunk_size)
    store = request.app[STORE]
    info = await store.check_readable(chunk_id, version)
    headers = {"Accept-Ranges": "bytes", "X-DFS-Version": str(version), "X-DFS-Length": str(info["length"])}
    if wanted:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{chunk_size}"
    status = 206 if wanted else 200
    if end - start <= SMALL_READ and request.method != "HEAD":  # read whole: headers and body in one send
        async with contextlib.aclosing(store.read(chunk_id, version, start, end)) as pieces:
            body = b"".join([piece async for piece in pieces])
        READ_BYTES.inc(len(body))
        return web.Response(body=body, status=status, headers=headers, content_type="application/octet-stream")
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = "application/octet-stream"
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
        await response.write_eof()
        return response
    async with contextlib.aclosing(store.read(chunk_id, version, start, end)) as pieces:
        first = await anext(pieces)  # errors before the headers go out become JSON replies
        await response.prepare(request)
        try:
            await response.write(first)
            READ_BYTES.inc(len(first))
            async for piece in pieces:
                await response.write(piece)
                READ_BYTES.inc(len(piece))
        except DfsError as err:
            log.warning("chunk %d v%d: read aborted mid-stream: %s", chunk_id, version, err.message)
            if request.transport is not None:
                request.transport.close()  # the client sees a body shorter than Content-Length
            return response
    await response.write_eof()
    return response


async def chunk_info(request: web.Request) -> web.Response:
    chunk_id = chunk_id_of(request)
    authorize(request, "read", chunk_id)  # of any version: info tells which one is here
    return web.json_response(await request.app[STORE].info(chunk_id))


async def truncate_chunk(request: web.Request) -> web.Response:
    chunk_id = chunk_id_of(request)
    query = Params(request.query)
    version = version_of(query)
    length = query.int("length", minimum=0, maximum=MAX_ID)
    authorize(request, "truncate", chunk_id, version)
    chunk_size = chunk_size_of(request)
    if length > chunk_size:
        raise DfsError(errno.ERANGE, f"chunk {chunk_id}: length {length} exceeds the chunk size {chunk_size}")
    return web.json_response(await request.app[STORE].truncate(chunk_id, version, length))


async def delete_chunk(request: web.Request) -> web.Response:
    chunk_id = chunk_id_of(request)
    version = version_of(Params(request.query))
    authorize(request, "delete", chunk_id, version)
    return web.json_response({"deleted": await request.app[STORE].delete(chunk_id, version)})


async def replicate_chunk(request: web.Request) -> web.Response:
    """Pull the chunk from `source` (another chunkserver), verify it, install it (chunkserver/copier.py)."""
    chunk_id = chunk_id_of(request)
    chunk_size_of(request)
    body = await read_json(request)
    source = str(body.str("source", max_length=2048)).rstrip("/")
    if not source.startswith(("http://", "https://")) or any(c.isspace() for c in source):
        raise DfsError(errno.EINVAL, f"'source' must be an http(s) URL: {source!r}")
    if source == request.app[CONFIG].url.rstrip("/"):
        raise DfsError(errno.EINVAL, "'source' names this server")
    version = body.int("version", minimum=1, maximum=MAX_ID)
    authorize(request, "replicate", chunk_id, version)
    rate = body.int("rate", 0, minimum=0, maximum=MAX_ID)
    source_token = str(body.str("source_token", max_length=MAX_TOKEN_LENGTH))
    result = await copier.pull_chunk(request.app[STORE], request.app[SESSION], chunk_id, version, source,
                                     source_token, rate or None)
    COPIES.inc(result.get("copied", 0))
    return web.json_response(result)


async def recover_chunk(request: web.Request) -> web.Response:
    """Lease recovery: the chunk at version `from` (pending or not) becomes complete at version `to`."""
    chunk_id = chunk_id_of(request)
    query = Params(request.query)
    source = query.int("from", minimum=1, maximum=MAX_ID)
    target = query.int("to", minimum=1, maximum=MAX_ID)
    authorize(request, "recover", chunk_id, target)
    return web.json_response(await request.app[STORE].recover(chunk_id, source, target))


async def list_chunks(request: web.Request) -> web.Response:
    authorize(request, "list", 0)
    return web.json_response({"chunks": request.app[STORE].list()})


def create_app(config: ChunkserverConfig) -> web.Application:
    """The chunkserver application: store and HTTP client opened and closed through cleanup_ctx.

    The heartbeat task is added by `chunkserver.service`; without it the server stays unregistered
    unless `app[LINK]` is filled in by hand (tests).
    """
    app = web.Application(middlewares=[metrics_middleware, error_middleware, token_middleware, load_middleware])
    app[CONFIG] = config
    app[LINK] = MasterLink()
    app[LOAD] = Load()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        store = ChunkStore(config.data_dirs, config.capacity)
        await store.open()
        app[STORE] = store
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ssl=tls.client_context())
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(local_reads_ctx(config.socket_path, STORE, config.keys))

    def health() -> dict[str, object]:
        link = app[LINK]
        extra: dict[str, object] = {"registered": link.chunk_size is not None, "server_id": link.server_id}
        if STORE in app:
            extra.update(app[STORE].usage(), chunks=len(app[STORE].index))
        extra["load"] = app[LOAD].active
        if SCRUBBER in app:
            extra["scrub"] = app[SCRUBBER].status()
        return extra

    add_health(app, "chunkserver", health)
    app.router.add_get("/local", describe_local)  # short-circuit reads (chunkserver/localread.py)
    app.router.add_get("/chunks", list_chunks)
    app.router.add_put("/chunks/{id}", put_chunk)
    app.router.add_get("/chunks/{id}", get_chunk)  # and HEAD
    app.router.add_get("/chunks/{id}/info", chunk_info)
    app.router.add_post("/chunks/{id}/truncate", truncate_chunk)
    app.router.add_delete("/chunks/{id}", delete_chunk)
    app.router.add_post("/chunks/{id}/replicate", replicate_chunk)
    app.router.add_post("/chunks/{id}/recover", recover_chunk)
    add_chunkserver_metrics(app, STORE, SCRUBBER)  # /metrics (chunkserver/metrics.py)
    return app
