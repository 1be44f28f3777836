"""`GET /api/channel`: the master's namespace calls over one WebSocket, for a client that makes many
small calls one after the other (the mount: a FUSE thread per connection).

Each text message is one call and gets one answer, in order:

    -> {"id": 7, "op": "lookup", "headers": {"Authorization": "Bearer ...", ...}, "body": {...}}
    <- {"id": 7, "status": 200, "body": {...}}     (an error: its HTTP status and {"error", "message"})

A call is checked as the same call over HTTP is: the key and identity its `headers` carry
(master/auth.py), the op's request table (master/api_schema.py), then the same handler. What it
saves is the HTTP request around it: a call costs the master a JSON decode instead of a request to
parse and a response to build, and the client a frame on a socket it already holds.

A channel's calls carry the same few `headers` again and again (one set per user a mount acts
for), so each channel remembers what they authenticated as (`Callers`): a later call with the same
headers and op costs a dictionary lookup and a check that the key's record is still the one in
force (not revoked, not expired) instead of a SHA-256 and the header parsing.
"""

from __future__ import annotations

import errno
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict

from dfs.apispec import checked
from dfs.errors import DfsError
from dfs.master import api_schema
from dfs.master.auth import KEYS, authenticate
from dfs.master.delegations import connection_alive
from dfs.master.keys import KeyRecord
from dfs.master.permissions import Caller
from dfs.metrics import REQUEST_SECONDS, REQUESTS
from dfs.protocol import SESSION_HEADER
from dfs.web import MAX_JSON_BODY, Params, parse_json

log = logging.getLogger("master.channel")

PATH = "/api/channel"
#: Calls a channel may not carry: the chunkservers' own (signed) calls.
_REFUSED_PREFIX = "cs/"

Dispatch = Callable[[str, Params, Caller, str], Awaitable[dict[str, Any]]]


def _headers(value: Any) -> CIMultiDict[str]:
    if value is None:
        return CIMultiDict()
    if not isinstance(value, dict) or len(value) > 32 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= 8192 for k, v in value.items()):
        raise DfsError(errno.EINVAL, "'headers' must be an object of at most 32 short strings")
    return CIMultiDict(value)


class Callers:
    """One channel's (op, headers) -> (key record, caller) already authenticated."""

    MAX = 64  # distinct header sets remembered (a mount acting for many users just checks more often)

    def __init__(self) -> None:
        self._known: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[KeyRecord | None, Caller]] = {}

    def caller(self, app: web.Application, op: str, headers: Any) -> Caller:
        key = (op, tuple(headers.items())) if isinstance(headers, dict) else None
        try:
            known = self._known.get(key) if key is not None else None
        except TypeError:  # a value that is not hashable: _headers refuses it below
            key = known = None
        if known is not None and (known[0] is None or app[KEYS].in_force(known[0])):
            return known[1]
        record, caller = authenticate(app, _headers(headers), op)
        if key is not None:
            if len(self._known) >= self.MAX:
                self._known.clear()
            self._known[key] = (record, caller)
        return caller


#: (op, status class) -> (counter, histogram) children, looked up once each.
_series: dict[tuple[str, int], tuple[Any, Any]] = {}


def _observe(op: str, status: int, seconds: float) -> None:
    series = _series.get((op, status))
    if series is None:
        series = _series[(op, status)] = (REQUESTS.labels(op, "WS", f"{status // 100}xx"),
                                          REQUEST_SECONDS.labels(op, "WS"))
    series[0].inc()
    series[1].observe(seconds)


async def answer(app: web.Application, raw: str, dispatch: Dispatch, callers: Callers | None = None) -> str:
    """The answer (a JSON text) to one call message (`callers`: what the channel's headers were)."""
    started = time.perf_counter()
    call_id: int | None = None
    op = "unmatched"
    try:
        message = parse_json(raw.encode("utf-8", "surrogatepass"))
        call_id = message.int("id", minimum=0, maximum=2**53)
        name = str(message.str("op", max_length=64))
        if name not in api_schema.OPS or name.startswith(_REFUSED_PREFIX):
            raise DfsError(errno.EINVAL, f"no such call on a channel: {name!r}")
        op = f"/api/{name}"
        caller = (callers or Callers()).caller(app, op, message.data.get("headers"))
        body = message.data.get("body")
        if body is not None and not isinstance(body, dict):
            raise DfsError(errno.EINVAL, "'body' must be a JSON object")
        params = checked(Params(body or {}, typed=True), api_schema.OPS[name].fields)
        headers = message.data.get("headers")
        session = headers.get(SESSION_HEADER, "") if isinstance(headers, dict) else ""
        if not isinstance(session, str):
            raise DfsError(errno.EINVAL, f"{SESSION_HEADER} must be a string")
        reply: dict[str, Any] = {"id": call_id, "status": 200, "body": await dispatch(name, params, caller, session)}
    except DfsError as err:
        reply = {"id": call_id, "status": err.status, "body": err.to_json()}
    except Exception:
        log.exception("internal error on channel call %s", op)
        reply = {"id": call_id, "status": 500, "body": {"error": "EIO", "message": "internal server error"}}
    _observe(op, reply["status"], time.perf_counter() - started)
    return json.dumps(reply)


def add_channel(app: web.Application, dispatch: Dispatch) -> None:
    """`GET /api/channel` (authenticated like any request: a key of any scope opens it)."""
    open_channels: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    async def channel(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_JSON_BODY, compress=False)
        if not ws.can_prepare(request).ok:
            raise DfsError(errno.EINVAL, f"{PATH} is a WebSocket: send an Upgrade request (docs/PROTOCOL.md)")
        await ws.prepare(request)
        transport = request.transport
        connection_alive.set(lambda: transport is not None and not transport.is_closing() and not ws.closed)
        open_channels.add(ws)
        callers = Callers()
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text messages only")
                break
            reply = await answer(request.app, message.data, dispatch, callers)
            try:
                await ws.send_str(reply)
            except ConnectionResetError:  # the client went away while its call ran (a long `recalls`)
                break
        return ws

    async def close_channels(_: web.Application) -> None:
        """On shutdown: idle channels would hold the server open until its shutdown timeout."""
        for ws in list(open_channels):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"master stopping")

    app.router.add_get(PATH, channel)
    app.on_shutdown.append(close_channels)

