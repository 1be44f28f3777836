"""Settings of one chunkserver process (filled from the command line by `dfs chunkserver`)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dfs.protocol import CHUNKSERVER_PORT, DEFAULT_MASTER_URL
from dfs.tokens import ClusterKeys

#: Longest path a Unix socket may have (sun_path holds 108 bytes with the final NUL).
MAX_SOCKET_PATH = 108


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
    short_circuit: bool = True  # serve short-circuit reads on socket_path (chunkserver/localread.py)

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket of short-circuit reads: `local.sock` in the first data dir, or, when that path
        is too long for a Unix socket, `dfs-<hash of it>.sock` in $XDG_RUNTIME_DIR (else the temp dir)."""
        if not self.short_circuit or not self.data_dirs:
            return None
        path = self.data_dirs[0].absolute() / "local.sock"
        if len(os.fsencode(path)) < MAX_SOCKET_PATH:
            return path
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return Path(runtime) / f"dfs-{hashlib.sha256(os.fsencode(path)).hexdigest()[:16]}.sock"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"
