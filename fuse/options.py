"""Settings of one mount (filled from the command line by `dfs mount`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class MountOptions:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    write_buffer: int = 8 * 1024 * 1024
    read_ahead: int = 8 * 1024 * 1024
    memory_cap: int = 256 * 1024 * 1024
    read_only: bool = False
    metrics_port: int | None = None  # serve /metrics on 127.0.0.1 (fuse/metrics.py)
    short_circuit: bool = True  # read replicas on this host from their files (dfs/client/localread.py)
    delegations: bool = True  # create and unlink in folders it made on its own (dfs/client/dirops.py)
