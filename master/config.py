"""Settings of one master process (filled from the command line by `dfs master`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfs.protocol import DEFAULT_CHUNK_SIZE, DEFAULT_GOAL, MASTER_PORT


@dataclass(slots=True)
class MasterConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = MASTER_PORT
    db_url: str | None = None  # default: sqlite+aiosqlite:///<data_dir>/meta.db
    chunk_size: int = DEFAULT_CHUNK_SIZE
    goal: int = DEFAULT_GOAL
    dead_timeout: float = 30.0
    lease_seconds: float = 60.0
    heartbeat_interval: float = 2.0
    gc_grace: float = 0.0  # seconds a deleted chunk waits before chunkservers are told to delete it
    maintenance_timeout: float = 300.0  # seconds a gracefully stopped chunkserver is waited for
    repair_bandwidth: int = 256 * 1024 * 1024  # bytes/s of re-replication copies, cluster-wide; 0: unlimited
    repair_concurrency: int = 2  # copies one chunkserver takes part in at once (source or target)
    repair_interval: float = 2.0  # seconds between re-replication scans (sooner on events)
    insecure: bool = False  # no access keys required (master/auth.py): local experiments only

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite+aiosqlite:///{self.data_dir / 'meta.db'}"
