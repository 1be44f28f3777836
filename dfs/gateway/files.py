"""The `/fs/...` handlers: files and folders of the cluster over plain HTTP.

    GET    /fs/PATH          a file's bytes (Range, ETag, conditional requests); a folder's listing (JSON)
    HEAD   /fs/PATH          the same headers, no body
    PUT    /fs/PATH          store the body as PATH (streamed, atomic replace)            ?goal=N
    POST   /fs/DIR/          multipart/form-data: every file part becomes DIR/<filename>   ?goal=N
    POST   /fs/PATH?op=mkdir[&parents=true]    POST /fs/PATH?op=rename&to=/new/path[&noreplace=true]
    DELETE /fs/PATH[?recursive=true]

Every error is JSON `{"error": "ENOENT", "message": ...}` (the `error_middleware` of dfs.web), with
the one exception of a read that fails after the headers went out: the connection is then cut, so
the client sees a short body rather than wrong bytes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mimetypes
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import BodyPartReader, hdrs, web

from dfs.client import Client, FileHandle
from dfs.errors import DfsError
from dfs.gateway.auth import client_of
from dfs.gateway.bodies import BODY_ERRORS, Budget, body_stream, expect_handler, part_stream, read_ahead
from dfs.gateway.conditional import (
    RangeNotSatisfiable,
    byte_range,
    etag,
    last_modified,
    not_modified,
    range_applies,
)
from dfs.gateway.keys import MAX_UPLOAD
from dfs.gateway.metrics import DOWNLOADED_BYTES
from dfs.gateway.paths import PREFIX, fs_path, other_path
from dfs.limits import LIST_DEFAULT, LIST_MAX
from dfs.metrics import name_operation, operation_of
from dfs.names import validate_name
from dfs.protocol import MAX_GOAL, STREAM_SLICE, Attr
from dfs.web import Params

log = logging.getLogger("dfs.gateway")



# ---- JSON shapes ---------------------------------------------------------------------------------

def entry_json(name: str, attr: Attr) -> dict[str, Any]:
    """One entry of a folder listing."""
    return {"name": name, "type": attr.kind, "size": attr.size, "mode": attr.mode,
            "mtime_ns": attr.mtime_ns, "inode": attr.inode}


def describe(path: str, attr: Attr) -> dict[str, Any]:
    """What PUT, POST and rename answer about the entry they made."""
    name = path.rsplit("/", 1)[-1]
    return {"path": path, **entry_json(name, attr), "nlink": attr.nlink, "ctime_ns": attr.ctime_ns,
            "goal": attr.goal, "etag": etag(attr)}


def validators(attr: Attr) -> dict[str, str]:
    return {hdrs.ETAG: etag(attr), hdrs.LAST_MODIFIED: last_modified(attr)}


def content_type(path: str) -> str:
    kind, encoding = mimetypes.guess_type(path, strict=False)
    if kind is None or encoding is not None:  # x.tar.gz is gzip bytes, not a tar: no Content-Encoding here
        return "application/octet-stream"
    return kind


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


async def _existing(client: Client, path: str) -> Attr | None:
    try:
        return await client.stat(path, follow=False)
    except DfsError as err:
        if err.errno == errno.ENOENT:
            return None
        raise


# ---- GET / HEAD ----------------------------------------------------------------------------------

async def get(request: web.Request) -> web.StreamResponse:
    path = fs_path(request)
    client = client_of(request)
    attr = await client.stat(path)
    if attr.is_dir:
        return await _listing(request, path, attr)
    if not attr.is_file:
        raise DfsError(errno.EINVAL, f"not a regular file: {path}")
    return await _send_file(request, client, path, attr)


async def _listing(request: web.Request, path: str, attr: Attr) -> web.Response:
    params = Params(request.query)
    limit = params.int("limit", LIST_DEFAULT, minimum=1, maximum=LIST_MAX)
    after = params.str("after", None, max_length=1024) or None  # "?after=" starts at the beginning
    if after is not None:
        validate_name(after)
    reply = await client_of(request).master.call("readdir", inode=attr.inode, after=after, limit=limit)
    entries = [entry_json(e["name"], Attr.from_json(e["attr"])) for e in reply["entries"]]
    return web.json_response({"path": path, "entries": entries, "next": reply.get("next") or None})


async def _send_file(request: web.Request, client: Client, path: str, attr: Attr) -> web.StreamResponse:
    headers = {**validators(attr), hdrs.ACCEPT_RANGES: "bytes"}
    if not_modified(attr, request.headers.get(hdrs.IF_NONE_MATCH), request.headers.get(hdrs.IF_MODIFIED_SINCE)):
        return web.Response(status=304, headers=headers)
    size = attr.size
    try:
        wanted = byte_range(request.headers.get(hdrs.RANGE), size) \
            if range_applies(attr, request.headers.get(hdrs.IF_RANGE)) else None
    except RangeNotSatisfiable:
        err = DfsError(errno.ERANGE, f"range {request.headers.get(hdrs.RANGE)!r} is outside the file ({size} bytes)")
        return web.json_response(err.to_json(), status=416,
                                 headers={**headers, hdrs.CONTENT_RANGE: f"bytes */{size}"})
    start, end = wanted or (0, size)
    response = web.StreamResponse(status=206 if wanted else 200, headers=headers)
    response.content_type = content_type(path)
    response.content_length = end - start
    if wanted:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{size}"
    if request.method == hdrs.METH_HEAD or start == end:
        await response.prepare(request)
        return response
    handle = FileHandle(client, attr)
    pieces = _slices(handle.read_stream(start, end - start))
    first = await anext(pieces, b"")  # a failure before any byte still gets a JSON error
    await response.prepare(request)
    sent = 0
    try:
        await response.write(first)
        sent += len(first)
        async for piece in pieces:
            await response.write(piece)
            sent += len(piece)
    except ConnectionError:  # the client went away (chunk-read failures arrive as DfsError)
        log.debug("GET %s: client gone after %d of %d bytes", path, sent, end - start)
    except (DfsError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("GET %s: read failed after %d of %d bytes were sent (%s); cutting the connection",
                    path, sent, end - start, exc)
        if request.transport is not None:
            request.transport.close()
    finally:
        DOWNLOADED_BYTES.inc(sent)
        await pieces.aclose()
    return response


async def _slices(pieces: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Regroup the pieces read from chunkservers into writes of about STREAM_SLICE bytes."""
    pending: list[bytes] = []
    held = 0
    async for piece in pieces:
        if not pending and len(piece) >= STREAM_SLICE // 2:
            yield piece
            continue
        pending.append(piece)
        held += len(piece)
        if held >= STREAM_SLICE:
            yield b"".join(pending)
            pending.clear()
            held = 0
    if pending:
        yield b"".join(pending)


# ---- PUT -----------------------------------------------------------------------------------------

async def put(request: web.Request) -> web.Response:
    path = fs_path(request)
    if path == "/":
        raise DfsError(errno.EISDIR, "the root is a directory")
    goal = Params(request.query).int("goal", None, minimum=1, maximum=MAX_GOAL)
    budget = Budget(request.app[MAX_UPLOAD])
    budget.check_announced(request.content_length)
    client = client_of(request)
    before = await _existing(client, path)
    if before is not None and before.is_dir:
        raise DfsError(errno.EISDIR, f"is a directory: {path}")
    async with contextlib.aclosing(read_ahead(body_stream(request, budget))) as source:
        attr = await client.upload(path, source, goal=goal)
    status = 200 if before is not None else 201
    headers = validators(attr)
    if status == 201:
        headers[hdrs.LOCATION] = PREFIX + quote(path)
    return web.json_response(describe(path, attr), status=status, headers=headers)


# ---- POST ----------------------------------------------------------------------------------------

async def post(request: web.Request) -> web.Response:
    path = fs_path(request)
    op = request.query.get("op")
    if op is None:
        if request.content_type == "multipart/form-data":
            return await _form_upload(request, path)
        raise DfsError(errno.EINVAL, "POST needs ?op=mkdir or ?op=rename, or a multipart/form-data body")
    action = OPS.get(op)
    if action is None:
        raise DfsError(errno.EINVAL, f"unknown op {op!r}; expected one of {', '.join(sorted(OPS))}")
    name_operation(f"{operation_of(request)}?op={op}")  # a known op: bounded
    return await action(request, path)


async def _mkdir(request: web.Request, path: str) -> web.Response:
    parents = Params(request.query).bool("parents", False)
    attr = await client_of(request).makedir(path, parents=parents)
    return web.json_response(describe(path, attr), status=201)


async def _rename(request: web.Request, path: str) -> web.Response:
    params = Params(request.query)
    target = other_path(params.str("to"))
    noreplace = params.bool("noreplace", False)
    client = client_of(request)
    await client.rename(path, target, noreplace=noreplace)
    attr = await client.stat(target, follow=False)
    return web.json_response({"from": path, **describe(target, attr)})


OPS: dict[str, Callable[[web.Request, str], Awaitable[web.Response]]] = {"mkdir": _mkdir, "rename": _rename}


async def _form_upload(request: web.Request, folder: str) -> web.Response:
    goal = Params(request.query).int("goal", None, minimum=1, maximum=MAX_GOAL)
    budget = Budget(request.app[MAX_UPLOAD])
    budget.check_announced(request.content_length)
    client = client_of(request)
    target = await client.stat(folder)
    if not target.is_dir:
        raise DfsError(errno.ENOTDIR, f"not a directory: {folder}")
    created: list[dict[str, Any]] = []
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise DfsError(errno.EINVAL, "nested multipart bodies are not supported")
            if part.filename is None:  # a plain form field: skipped, but it counts against the limit
                async for _ in part_stream(part, budget):
                    pass
                continue
            path = _join(folder, validate_name(part.filename))
            async with contextlib.aclosing(read_ahead(part_stream(part, budget))) as source:
                attr = await client.upload(path, source, goal=goal)
            created.append(describe(path, attr))
    except BODY_ERRORS as exc:
        raise DfsError(errno.EINVAL, f"malformed multipart body: {exc}") from None
    if not created:
        raise DfsError(errno.EINVAL, "the form holds no file (send parts with a filename, e.g. curl -F f=@x)")
    return web.json_response(created, status=201)


# ---- DELETE --------------------------------------------------------------------------------------

async def delete(request: web.Request) -> web.Response:
    path = fs_path(request)
    recursive = Params(request.query).bool("recursive", False)
    await client_of(request).remove(path, recursive=recursive)
    return web.json_response({"deleted": path})


def add_routes(app: web.Application, max_upload: int) -> None:
    """`/fs` (the root) and `/fs/...`; HEAD comes with GET."""
    expect = expect_handler(max_upload)
    for pattern in ("/fs", "/fs/{path:.*}"):
        app.router.add_get(pattern, get)
        app.router.add_put(pattern, put, expect_handler=expect)
        app.router.add_post(pattern, post, expect_handler=expect)
        app.router.add_delete(pattern, delete)
