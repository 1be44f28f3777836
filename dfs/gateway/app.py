"""The gateway's aiohttp application: one cluster client, JSON errors, /health, /fs/..., /openapi.json."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from dfs.client import Client
from dfs.gateway.auth import gateway_auth
from dfs.gateway.files import add_routes
from dfs.gateway.keys import CLIENT, INSECURE, MAX_UPLOAD
from dfs.gateway.openapi import add_openapi
from dfs.metrics import add_metrics, metrics_middleware
from dfs.web import add_health, error_middleware

log = logging.getLogger("dfs.gateway")

#: Bodies are streamed, never read whole (request.read()/post() are not used), so aiohttp's own cap on
#: buffered bodies stays small; --max-upload bounds what PUT and multipart POST stream through.
BUFFERED_BODY_MAX = 1024 * 1024

#: Socket read buffer of each connection; larger than aiohttp's 64 KiB default so uploads arrive in
#: big slices (fewer pause/resume cycles of the transport).
READ_BUFSIZE = 1024 * 1024


def create_app(master_url: str, max_upload: int, *, insecure: bool = False, key: str = "") -> web.Application:
    """`key`: the gateway's own access key, used only for callers without one under `insecure`."""
    app = web.Application(middlewares=[metrics_middleware, error_middleware, gateway_auth],
                          client_max_size=BUFFERED_BODY_MAX,
                          handler_args={"read_bufsize": READ_BUFSIZE})
    app[MAX_UPLOAD] = max_upload
    app[INSECURE] = insecure
    if insecure:
        log.warning("INSECURE: --insecure is on: callers without an access key are served%s; never use it "
                    "outside local experiments", " as this gateway's own key" if key else "")

    async def cluster_client(app: web.Application) -> AsyncIterator[None]:
        client = Client(master_url, key=key)
        await client.start()
        app[CLIENT] = client
        try:
            yield
        finally:
            await client.close()

    app.cleanup_ctx.append(cluster_client)
    add_health(app, "gateway")
    add_metrics(app)
    add_routes(app, max_upload)
    add_openapi(app)
    return app
