"""Settings of one master process (filled from the command line by `dfs master`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dfs.protocol import DEFAULT_CHUNK_SIZE, DEFAULT_GOAL, DEFAULT_RESIDENT_MAX, MASTER_PORT
from dfs.tokens import ClusterKeys, load_or_create_secret, read_secret_file


@dataclass(slots=True)
class MasterConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = MASTER_PORT
    db_url: str | None = None  # default: sqlite+aiosqlite:///<data_dir>/meta.db
    chunk_size: int = DEFAULT_CHUNK_SIZE
    goal: int = DEFAULT_GOAL
    resident_max: int = DEFAULT_RESIDENT_MAX  # files written whole up to this size stay in the database
    dead_timeout: float = 30.0
    lease_seconds: float = 60.0
    heartbeat_interval: float = 2.0
    gc_grace: float = 0.0  # seconds a deleted chunk waits before chunkservers are told to delete it
    maintenance_timeout: float = 300.0  # seconds a gracefully stopped chunkserver is waited for
    repair_bandwidth: int = 256 * 1024 * 1024  # bytes/s of re-replication copies, cluster-wide; 0: unlimited
    repair_concurrency: int = 2  # copies one chunkserver takes part in at once (source or target)
    repair_interval: float = 2.0  # seconds between re-replication scans (sooner on events)
    gateway_url: str | None = None  # the HTTP gateway's public URL: the dashboard's download links point there
    secret_file: Path | None = None  # default: <data_dir>/cluster.secret, made on first start
    token_lifetime: float = 600.0  # seconds a chunk token the master issues stays valid (writes: the lease)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keys: ClusterKeys | None = field(default=None, repr=False)  # from the secret (load_keys)
    recall_timeout: float = 10.0  # seconds a client may take to give back a delegated folder (master/delegations.py)
    insecure: bool = False  # no access keys required (master/auth.py): local experiments only

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite+aiosqlite:///{self.data_dir / 'meta.db'}"

    def load_keys(self) -> ClusterKeys:
        """The keys derived from the cluster secret (made in the data folder on first start); SecretError."""
        if self.keys is None:
            secret = read_secret_file(self.secret_file) if self.secret_file else load_or_create_secret(self.data_dir)
            self.keys = ClusterKeys.from_secret(secret)
        return self.keys

    def token_header(self, op: str, chunk_id: int, version: int = 0) -> dict[str, str]:
        """The X-DFS-Token header of a request the master makes to a chunkserver."""
        return self.load_keys().tokens.header(op, chunk_id, version, self.token_lifetime)

    def token(self, op: str, chunk_id: int, version: int, lifetime: float | None = None) -> str:
        """A chunk token for a client (reads) or another chunkserver (copies)."""
        return self.load_keys().tokens.mint(op, chunk_id, version, self.token_lifetime if lifetime is None
                                            else lifetime)
