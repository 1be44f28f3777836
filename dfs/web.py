"""What every aiohttp service of ours shares: error translation, JSON input checks, /health, running.

Handlers raise `DfsError`; `error_middleware` is the one place that turns it (and any bug) into a
JSON response. `Params` reads and checks request fields so that malformed input is a 400 with a
message, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dfs.errors import DfsError
from dfs.limits import MAX_HEADER_FIELD, MAX_HEADERS, MAX_JSON_BODY, MAX_JSON_DEPTH, MAX_REQUEST_LINE

log = logging.getLogger("dfs.web")

#: aiohttp request-parser limits applied by `serve` (dfs/limits.py).
PARSER_LIMITS: dict[str, int] = {"max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_HEADER_FIELD,
                                 "max_headers": MAX_HEADERS}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(err: DfsError) -> web.Response:
    return web.json_response(err.to_json(), status=err.status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DfsError as err:
        return json_error(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: errno.ENOENT, 405: errno.EINVAL, 413: errno.EFBIG}.get(exc.status, errno.EINVAL)
        body = {"error": errno.errorcode[code], "message": exc.reason}
        return web.json_response(body, status=exc.status, headers={"Allow": exc.headers.get("Allow", "")}
                                 if "Allow" in exc.headers else None)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        # The route's pattern, not the URL: a query string or a path may carry what is not ours to log.
        log.exception("internal error on %s %s", request.method, _route(request))
        return web.json_response({"error": "EIO", "message": "internal server error"}, status=500)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


async def read_json(request: web.Request, limit: int = MAX_JSON_BODY) -> Params:
    """The request's JSON object body as `Params`; 400 for anything else, 413 past `limit` bytes."""
    return parse_json(await read_body(request, limit))


async def read_body(request: web.Request, limit: int = MAX_JSON_BODY) -> bytes:
    """The whole (small) request body; 413 past `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise DfsError(errno.EFBIG, f"JSON body larger than {limit} bytes")
    # StreamReader.read(n) returns what is buffered, up to n: a large body arrives in several
    raw = bytearray()
    while len(raw) <= limit:
        piece = await request.content.read(limit + 1 - len(raw))
        if not piece:
            return bytes(raw)
        raw += piece
    raise DfsError(errno.EFBIG, f"JSON body larger than {limit} bytes")


def parse_json(raw: bytes) -> Params:
    """A JSON object body as `Params`; 400 for anything else."""
    if not raw:
        return Params({}, typed=True)
    try:
        body = json.loads(raw)
    except RecursionError:  # the decoder recurses per level: thousands of '[' end here
        raise DfsError(errno.EINVAL, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise DfsError(errno.EINVAL, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise DfsError(errno.EINVAL, "request body must be a JSON object")
    # a body with no more opening brackets than the limit cannot nest deeper (the walk costs a
    # namespace call over the channel ~4% of the master's time; the count, a scan in C)
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise DfsError(errno.EINVAL, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return Params(body, typed=True)


_MISSING = object()


class Params:
    """Typed, validated access to a JSON object or a query string: `p.int("offset", minimum=0)`.

    With `declared` (dfs/apispec.py `checked`), reading any other field is a bug in the request
    table, not the client's fault: it raises LookupError (a 500 in the log, found by the tests).
    """

    def __init__(self, data: Mapping[str, Any], declared: frozenset[str] | None = None, *,
                 typed: bool = False) -> None:
        self.data = data
        self.declared = declared
        self.typed = typed  # a JSON body: numbers and booleans must be JSON's, not strings

    def _get(self, key: str, default: Any) -> Any:
        if self.declared is not None and key not in self.declared:
            raise LookupError(f"field {key!r} is read but not declared in the request table")
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise DfsError(errno.EINVAL, f"missing field '{key}'")
            return default
        return value

    def int(self, key: str, default: Any = _MISSING, *, minimum: int | None = None,
            maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str) and not self.typed:  # query strings
            try:
                value = int(value, 10)
            except ValueError:
                raise DfsError(errno.EINVAL, f"'{key}' must be an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise DfsError(errno.EINVAL, f"'{key}' must be an integer")
        if minimum is not None and value < minimum:
            raise DfsError(errno.EINVAL, f"'{key}' must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise DfsError(errno.EINVAL, f"'{key}' must be at most {maximum}")
        return value

    def str(self, key: str, default: Any = _MISSING, *, max_length: int = 4096) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise DfsError(errno.EINVAL, f"'{key}' must be a string")
        if len(value) > max_length:
            raise DfsError(errno.EINVAL, f"'{key}' is longer than {max_length} characters")
        return value

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if isinstance(value, str) and not self.typed:
            lowered = value.lower()
            if lowered in ("1", "true", "yes"):
                return True
            if lowered in ("0", "false", "no", ""):
                return False
        if not isinstance(value, bool):
            raise DfsError(errno.EINVAL, f"'{key}' must be true or false")
        return value

    def list(self, key: str, default: Any = _MISSING, *, max_items: int = 100_000) -> Any:
        value = self._get(key, default)
        if not isinstance(value, list):
            raise DfsError(errno.EINVAL, f"'{key}' must be a list")
        if len(value) > max_items:
            raise DfsError(errno.EINVAL, f"'{key}' has more than {max_items} items")
        return value

    def int_list(self, key: str, default: Any = _MISSING, *, max_items: int = 100_000) -> list[int]:
        items = self.list(key, default, max_items=max_items)
        if any(isinstance(i, bool) or not isinstance(i, int) for i in items):
            raise DfsError(errno.EINVAL, f"'{key}' must be a list of integers")
        return items

    def has(self, key: str) -> bool:
        return self._get(key, None) is not None


def add_health(app: web.Application, service: str, extra: Callable[[], dict[str, Any]] | None = None) -> None:
    started = time.time()

    async def health(_: web.Request) -> web.Response:
        body = {"status": "ok", "service": service, "uptime_s": round(time.time() - started, 1)}
        if extra:
            body.update(extra())
        return web.json_response(body)

    app.router.add_get("/health", health)


class ParserErrorFilter(logging.Filter):
    """aiohttp logs a request its parser refused (a header too long, a bad character) as an ERROR with
    a traceback and the offending bytes, which may be someone's key. That is the client's fault: one
    WARNING line naming the kind of error, without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "refused a malformed HTTP request (%s %s)", (exc.code, type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_parser_errors() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrorFilter) for f in server.filters):
        server.addFilter(ParserErrorFilter())


def setup_logging(service: str, level: str = "INFO") -> None:
    """One line per event: time, service, level, message."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_parser_errors()


async def serve(app: web.Application, host: str, port: int, *, name: str,
                ssl_context: ssl.SSLContext | None = None) -> None:
    """Run `app` until SIGINT/SIGTERM, then shut down cleanly (cleanup contexts run); HTTPS with a context."""
    quiet_parser_errors()
    runner = web.AppRunner(app, handle_signals=False, access_log=None, **PARSER_LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"dfs {name}: cannot listen on {host}:{port}: {exc.strerror}") from None
    log.info("%s listening on %s://%s:%d", name, "https" if ssl_context else "http", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("%s stopping", name)
        await runner.cleanup()


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task]:
    """Run `coro` as a task for the life of the block (e.g. a cleanup_ctx), then cancel and await it."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
