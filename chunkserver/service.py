"""`dfs chunkserver`: the application, its heartbeat task, and serving until SIGINT/SIGTERM."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from dfs import tls
from dfs.chunkserver.app import CONFIG, LINK, LOAD, SCRUBBER, SESSION, STORE, create_app
from dfs.chunkserver.config import ChunkserverConfig
from dfs.chunkserver.heartbeat import Heartbeat
from dfs.chunkserver.scrubber import Scrubber
from dfs.web import background, serve


async def heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep the server registered while the app runs (after the store and session are open)."""
    heartbeat = Heartbeat(app[CONFIG], app[STORE], app[SESSION], app[LINK], load=lambda: app[LOAD].active)
    async with background(heartbeat.run(), "heartbeat"):
        yield
    await heartbeat.goodbye()  # a graceful stop: the master keeps our replicas for a restart


async def scrubber_ctx(app: web.Application) -> AsyncIterator[None]:
    """Re-verify every chunk in the background at --scrub-rate (none at 0)."""
    config = app[CONFIG]
    if config.scrub_rate <= 0:
        yield
        return
    scrubber = app[SCRUBBER] = Scrubber(app[STORE], config.scrub_rate, config.scrub_interval)
    async with background(scrubber.run_forever(), "scrubber"):
        yield


def build_app(config: ChunkserverConfig) -> web.Application:
    app = create_app(config)
    app.cleanup_ctx.append(scrubber_ctx)
    app.cleanup_ctx.append(heartbeat_ctx)
    return app


async def run_chunkserver(config: ChunkserverConfig) -> None:
    """Run a chunkserver until SIGINT or SIGTERM."""
    if not config.data_dirs:
        raise SystemExit("dfs chunkserver: at least one --data folder is needed")
    for path in config.data_dirs:
        path.mkdir(parents=True, exist_ok=True)
    try:
        context = tls.server_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key \
            else None
    except tls.TlsError as exc:
        raise SystemExit(f"dfs chunkserver: {exc}") from None
    await serve(build_app(config), config.host, config.port, name="chunkserver", ssl_context=context)
