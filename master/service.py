"""`dfs master`: run the metadata master in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

from dfs import tls
from dfs.tokens import SecretError
from dfs.web import serve
from master.app import create_app
from master.config import MasterConfig


async def run_master(config: MasterConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        config.load_keys()
        context = tls.server_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key \
            else None
    except (SecretError, tls.TlsError) as exc:
        raise SystemExit(f"dfs master: {exc}") from None
    await serve(create_app(config), config.host, config.port, name="master", ssl_context=context)
