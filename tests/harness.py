"""Real processes on 127.0.0.1 for tests: a master, chunkservers and a gateway on ephemeral ports.

`Cluster` starts `python -m dfs ...` subprocesses, waits for their /health, and stops every one of
them (SIGTERM, then SIGKILL) on `stop()`, whatever state the test left them in. Tests use 1 MiB
chunks so that files cross chunk boundaries.

Access keys: every cluster of a test run starts with one admin key (TEST_ADMIN_KEY, seeded as the
master's admin.key), which is also $DFS_KEY of this process and so of every CLI run, gateway and
mount the tests start, and the default key of `http_json` and of the client library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dfs import launcher
from dfs.auth import KEY_ENV
from dfs.launcher import STARTUP_TIMEOUT, Service, free_port, http_json, session_admin_key

__all__ = ["STARTUP_TIMEOUT", "TEST_ADMIN_KEY", "Cluster", "Service", "free_port", "http_json"]

os.environ.pop(KEY_ENV, None)  # never a key of the developer's shell
TEST_ADMIN_KEY = session_admin_key()


@dataclass
class Cluster(launcher.Cluster):
    chunk_size: int = 1024 * 1024
    admin_key: str | None = TEST_ADMIN_KEY
