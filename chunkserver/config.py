"""Settings of one chunkserver process (filled from the command line by `dfs chunkserver`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dfs.protocol import CHUNKSERVER_PORT, DEFAULT_MASTER_URL
from dfs.tokens import ClusterKeys


@dataclass(slots=True)
class ChunkserverConfig:
    data_dirs: list[Path] = field(default_factory=list)
    master_url: str = DEFAULT_MASTER_URL
    host: str = "127.0.0.1"
    port: int = CHUNKSERVER_PORT
    capacity: int | None = None  # bytes offered; default: the size of the disks
    public_url: str | None = None  # URL given to the master; default http://host:port
    scrub_rate: int = 50 * 1024 * 1024  # bytes per second the scrubber re-verifies; 0: no scrubbing
    scrub_interval: float = 600.0  # seconds from the start of one scrub pass to the start of the next, at least
    keys: ClusterKeys | None = field(default=None, repr=False)  # from the join token: signs and checks
    tls_cert: Path | None = None  # serve HTTPS with this certificate and tls_key
    tls_key: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"
