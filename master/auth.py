"""Who is calling the master: the access-key middleware, `/api/whoami` and `/api/admin/keys/...`.

Every request but the public ones (PUBLIC_PATHS: health, metrics, the dashboard's page, and the
chunkserver calls, which the cluster secret guards) must carry a key in force of a scope high enough
for its path (`required_scope`); the request then acts as the key's uid/gid/groups, or, for a key
of scope proxy or admin, as the end user named in X-DFS-Uid/-Gid/-Groups. The resulting `Caller`
is left on the request for the handlers (`caller_of`). With `--insecure` a request without a key
acts as root, or as the identity it claims.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from dfs.auth import identity_from_headers, key_from_headers
from dfs.errors import DfsError
from dfs.master.keys import RANK, SCOPES, KeyRecord, KeyStore
from dfs.master.permissions import ROOT, Caller
from dfs.web import Handler, Params, json_error

log = logging.getLogger("master.auth")

#: Answered without a key. The chunkserver calls are authenticated by the cluster secret.
PUBLIC_PATHS = {"/", "/health", "/metrics", "/openapi.json", "/api/cs/register", "/api/cs/heartbeat",
                "/api/cs/goodbye", "/dashboard"}
#: The dashboard's static files (master/dashboard): the page signs in with a key for its JSON calls.
PUBLIC_PREFIX = "/dashboard/"
#: Namespace and placement calls that change nothing: a read-only (ro) key may make them.
READ_OPS = {"resolve", "lookup", "getattr", "readdir", "readlink", "statfs", "getxattr", "listxattr", "chunks",
            "report", "status", "whoami", "dashboard", "channel", "recalls"}
INSECURE_WARNING = ("INSECURE: --insecure is on: requests need no access key and act as root (or as whoever "
                    "they claim to be); never use it outside local experiments")

KEYS = web.AppKey("keys", KeyStore)
INSECURE = web.AppKey("insecure", bool)
CALLER = "dfs.caller"
RECORD = "dfs.key"


def required_scope(path: str) -> str:
    if path.startswith("/api/admin/"):
        return "admin"
    if path.startswith("/api/") and path[len("/api/"):] not in READ_OPS:
        return "rw"
    return "ro"


def caller_of(request: web.Request) -> Caller:
    """The identity a request acts as (root for the public, cluster-internal calls)."""
    return request.get(CALLER, ROOT)


def authenticate(app: web.Application, headers: Mapping[str, str], path: str) -> tuple[KeyRecord | None, Caller]:
    """The key `headers` carry and the identity a request for `path` acts as (401/403 as DfsError);
    for HTTP requests (`auth_middleware`) and the calls of a channel (master/channel.py) alike."""
    key = key_from_headers(headers)
    claimed = identity_from_headers(headers)
    record: KeyRecord | None = None
    if key is not None:
        if KEYS not in app:
            raise DfsError(errno.EAGAIN, "the master is starting")
        record = app[KEYS].verify(key)
    elif not app[INSECURE]:
        raise DfsError(errno.ENOKEY, "an access key is required: send 'Authorization: Bearer <key>' "
                                     "(dfs admin keys create)")
    scope = record.scope if record else "admin"
    need = required_scope(path)
    if RANK[scope] < RANK[need]:
        raise DfsError(errno.EACCES, f"access key {record.name if record else ''!r} has scope {scope}; "
                                     f"{path} needs {need}")
    if claimed is None:
        return record, replace(record.caller if record else ROOT, proxy=RANK[scope] >= RANK["proxy"])
    if RANK[scope] < RANK["proxy"]:
        raise DfsError(errno.EACCES, f"access key {record.name if record else ''!r} (scope {scope}) may not act "
                                     "for other users: only proxy and admin keys send X-DFS-Uid")
    uid, gid, groups = claimed
    return record, Caller(uid, gid, frozenset(groups))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIX):
        return await handler(request)
    try:
        request[RECORD], request[CALLER] = authenticate(request.app, request.headers, request.path)
    except DfsError as err:
        response = json_error(err)
        if err.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="dfs"'
        return response
    return await handler(request)


# -- routes -------------------------------------------------------------------------------------------

async def whoami(request: web.Request) -> web.Response:
    """The key a request carries and the identity it acts as (mounts ask whether they may act for others)."""
    record: KeyRecord | None = request.get(RECORD)
    scope = record.scope if record else "admin"
    return web.json_response({
        "key": record.to_json() if record else None, "scope": scope, **caller_of(request).to_json(),
        "may_act_for_others": RANK[scope] >= RANK["proxy"], "insecure": request.app[INSECURE],
    })


# /api/admin/keys...: routes of master/admin_api.py ROUTES (fields declared in master/api_schema.py ADMIN)

async def keys_create(app: web.Application, _: Any, p: Params) -> dict[str, Any]:
    expires = p.data.get("expires")  # a number, checked against the table
    record, key = await app[KEYS].create(str(p.str("name")), int(p.int("uid")), int(p.int("gid")),
                                         p.int_list("groups", []), str(p.str("scope", "rw")),
                                         None if expires is None else float(expires))
    return {**record.to_json(), "key": key}


async def keys_list(app: web.Application, _: Any, p: Params) -> dict[str, Any]:
    now = time.time()
    return {"keys": [record.to_json(now) for record in app[KEYS].list()], "scopes": list(SCOPES)}


async def keys_revoke(app: web.Application, _: Any, p: Params) -> dict[str, Any]:
    return (await app[KEYS].revoke(str(p.str("name")))).to_json()


def add_auth(app: web.Application, insecure: bool) -> None:
    """The middleware's settings and the key routes; master/app.py puts `auth_middleware` in its list."""
    app[INSECURE] = insecure
    app.router.add_get("/api/whoami", whoami)
    app.router.add_post("/api/whoami", whoami)
