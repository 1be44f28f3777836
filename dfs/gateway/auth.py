"""The gateway's callers and their access keys.

Every request but /health, /metrics and /openapi.json must carry a key (`Authorization: Bearer KEY`,
or basic auth with the key as the password: `curl -u name:KEY`). The gateway does not judge it: it
calls the master with the caller's own key (`Client.with_key`, the same connections), and the master
checks the key (401), its scope (403) and the POSIX permissions of its uid on every step, as for any
other client. So the gateway holds no key that could act for others, and a revoked key stops working
at once. Identity headers (X-DFS-Uid...) sent by callers are never passed on. A 401 (no key, or one
the master refused) challenges with Basic, so that a browser following a plain download link (the
master's dashboard) asks its user for the key as a password.
"""

from __future__ import annotations

import errno

from aiohttp import web

from dfs.auth import key_from_headers
from dfs.client import Client
from dfs.errors import DfsError
from dfs.gateway.keys import CLIENT, INSECURE, REQUEST_CLIENT
from dfs.web import Handler, json_error

PUBLIC_PATHS = {"/health", "/metrics", "/openapi.json"}
#: One header each: browsers read one challenge per WWW-Authenticate header (Chromium skips a header whose
#: first scheme it does not know, Bearer), and Basic makes them ask their user for the key as a password.
CHALLENGES = ('Basic realm="dfs"', 'Bearer realm="dfs"')


def client_of(request: web.Request) -> Client:
    """The cluster client to serve `request` with: the caller's key, over the gateway's connections."""
    return request.get(REQUEST_CLIENT) or request.app[CLIENT]


def _challenged(err: DfsError) -> web.Response:
    response = json_error(err)
    for challenge in CHALLENGES:
        response.headers.add("WWW-Authenticate", challenge)
    return response


@web.middleware
async def gateway_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    try:
        key = key_from_headers(request.headers)
        if key is None and not request.app[INSECURE]:
            raise DfsError(errno.ENOKEY, "an access key is required: send 'Authorization: Bearer <key>' "
                                         "(or curl -u name:KEY)")
    except DfsError as err:
        return _challenged(err)
    if key is not None:
        request[REQUEST_CLIENT] = request.app[CLIENT].with_key(key)
    try:
        return await handler(request)
    except DfsError as err:
        if err.status != 401:
            raise
        return _challenged(err)  # a key the master refused: a browser asks its user again
