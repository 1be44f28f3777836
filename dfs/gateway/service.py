"""`dfs gateway`: serve the HTTP file API until SIGINT/SIGTERM."""

from __future__ import annotations

import ssl

from dfs.gateway.app import create_app
from dfs.web import serve


async def run_gateway(master_url: str, host: str, port: int, *, max_upload: int, insecure: bool = False,
                      key: str = "", ssl_context: ssl.SSLContext | None = None) -> None:
    await serve(create_app(master_url, max_upload, insecure=insecure, key=key), host, port, name="gateway",
                ssl_context=ssl_context)
