"""`dfs master`: run the metadata master in the foreground until SIGINT/SIGTERM, or (`--upgrade-db`)
migrate its database to the newest schema revision and exit."""

from __future__ import annotations

import logging

from dfs import tls
from dfs.master.app import create_app
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.migrate import SchemaError
from dfs.tokens import SecretError
from dfs.web import serve

log = logging.getLogger("master.service")


async def run_master(config: MasterConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        config.load_keys()
        context = tls.server_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key \
            else None
    except (SecretError, tls.TlsError) as exc:
        raise SystemExit(f"dfs master: {exc}") from None
    try:
        await serve(create_app(config), config.host, config.port, name="master", ssl_context=context)
    except SchemaError as exc:  # one line for the operator, no traceback
        log.error("%s", exc)
        raise SystemExit(1) from None


async def upgrade_database(config: MasterConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url)
    try:
        before, after = await db.upgrade()
    finally:
        await db.close()
    where = db.url.render_as_string(hide_password=True)
    if before == after:
        log.info("metadata database %s is already at schema revision %s", where, after)
    else:
        log.info("metadata database %s upgraded from schema revision %s to %s", where, before or "(empty)", after)
