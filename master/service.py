"""`dfs master`: run the metadata master in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

from dfs.web import serve
from master.app import create_app
from master.config import MasterConfig


async def run_master(config: MasterConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    await serve(create_app(config), config.host, config.port, name="master")
