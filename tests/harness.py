"""Real processes on 127.0.0.1 for tests: a master, chunkservers and a gateway on ephemeral ports.

`Cluster` starts `python -m dfs ...` subprocesses, waits for their /health, and stops every one of
them (SIGTERM, then SIGKILL) on `stop()`, whatever state the test left them in. Tests use 1 MiB
chunks so that files cross chunk boundaries. With `DFS_TEST_DB=postgresql` every cluster's master
gets a fresh database on the session's PostgreSQL server (tests/pgserver.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from dfs import launcher
from dfs.launcher import STARTUP_TIMEOUT, Service, free_port, http_json
from tests.pgserver import fresh_database_url

__all__ = ["STARTUP_TIMEOUT", "Cluster", "Service", "free_port", "http_json"]


@dataclass
class Cluster(launcher.Cluster):
    chunk_size: int = 1024 * 1024

    def start_master(self) -> Service:
        if self.master is None and self.db_url is None:
            self.db_url = fresh_database_url()
        return super().start_master()
