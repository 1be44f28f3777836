"""What the gateway keeps on its aiohttp application, under typed keys."""

from __future__ import annotations

from aiohttp import web

from dfs.client import Client

#: The one cluster client of the process (one pooled session), opened and closed with the app.
CLIENT: web.AppKey[Client] = web.AppKey("client", Client)

#: Largest request body accepted by PUT and by a multipart POST, in bytes (`--max-upload`).
MAX_UPLOAD: web.AppKey[int] = web.AppKey("max_upload", int)
