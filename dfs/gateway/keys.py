"""What the gateway keeps on its aiohttp application, under typed keys."""

from __future__ import annotations

from aiohttp import web

from dfs.client import Client

#: The one cluster client of the process (one pooled session), opened and closed with the app.
CLIENT: web.AppKey[Client] = web.AppKey("client", Client)

#: Largest request body accepted by PUT and by a multipart POST, in bytes (`--max-upload`).
MAX_UPLOAD: web.AppKey[int] = web.AppKey("max_upload", int)

#: `--insecure`: callers without an access key are served, as this gateway's own key (if any).
INSECURE: web.AppKey[bool] = web.AppKey("insecure", bool)

#: The request's view of CLIENT, calling the master with the caller's access key (dfs/gateway/auth.py).
REQUEST_CLIENT = "dfs.client"
