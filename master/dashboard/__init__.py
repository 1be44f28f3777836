"""The master's web dashboard: a static page (index.html, app.js, style.css, favicon.png shipped beside
this module as package data) that polls the master's JSON APIs from the browser.

    GET /                 302 to /dashboard/
    GET /dashboard/       the page; /dashboard/<asset> its script, style sheet and icon
    GET /api/dashboard    {"gateway_url": URL or null}: where the page's download links point

The files are public; the JSON calls need an access key (master/auth.py), which the page asks for in a
sign-in panel and keeps in the tab's sessionStorage (app.js). No build step and no external URL: the
page works offline, served by the master alone. File data never
passes through the master: download links point at the HTTP gateway named by `dfs master --gateway-url`.
Assets are read once at start and served with an ETag and `Cache-Control: no-cache` (the browser
revalidates each load and gets 304 while the master's version is unchanged), and a Content-Security-Policy
that allows only this origin's own script, style, images and API calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import hdrs, web

#: Served files and their content types; nothing else under /dashboard/ exists.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
PREFIX = "/dashboard/"
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page's files from the installed package (a wheel ships them: pyproject package-data)."""
    folder = resources.files(__name__)
    out = {}
    for name, kind in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        out[name] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return out


def add_dashboard_routes(app: web.Application, gateway_url: str | None) -> None:
    assets = load_assets()

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX)

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info.get("name") or "index.html")
        if found is None:
            raise web.HTTPNotFound(reason=f"no such dashboard file: {request.path}")
        headers = {hdrs.ETAG: found.etag, hdrs.CACHE_CONTROL: "no-cache", **SECURITY_HEADERS}
        if found.etag in request.headers.get(hdrs.IF_NONE_MATCH, ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, headers={**headers, hdrs.CONTENT_TYPE: found.content_type})

    async def config(_: web.Request) -> web.Response:
        return web.json_response({"gateway_url": gateway_url}, headers={hdrs.CACHE_CONTROL: "no-store"})

    app.router.add_get("/", redirect)
    app.router.add_get("/dashboard", redirect)
    app.router.add_get(PREFIX, asset)
    app.router.add_get(PREFIX + "{name}", asset)
    app.router.add_get("/api/dashboard", config)
