"""Real processes on 127.0.0.1 for tests: a master, chunkservers and a gateway on ephemeral ports.

`Cluster` starts `python -m dfs ...` subprocesses, waits for their /health, and stops every one of
them (SIGTERM, then SIGKILL) on `stop()`, whatever state the test left them in. Tests use 1 MiB
chunks so that files cross chunk boundaries. Chunkservers need chunk tokens: `cs_json` and
`request_token` mint them from the cluster secret (`Cluster.chunk_tokens()`).

Access keys: every cluster of a test run starts with one admin key (TEST_ADMIN_KEY, seeded as the
master's admin.key), which is also $DFS_KEY of this process and so of every CLI run, gateway and
mount the tests start, and the default key of `http_json` and of the client library.

With `DFS_TEST_DB=postgresql` every cluster's master gets a fresh database on the session's PostgreSQL
server (tests/pgserver.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dfs import launcher
from dfs.auth import KEY_ENV
from dfs.client import Client
from dfs.client.sync import LoopThread
from dfs.launcher import STARTUP_TIMEOUT, Service, free_port, http_json, session_admin_key
from dfs.tokens import ChunkTokens, ClusterKeys
from tests.pgserver import fresh_database_url

__all__ = ["STARTUP_TIMEOUT", "TEST_ADMIN_KEY", "Cluster", "Service", "cs_json", "free_port", "http_json",
           "inline_client", "request_token", "service_tokens"]

os.environ.pop(KEY_ENV, None)  # never a key of the developer's shell
TEST_ADMIN_KEY = session_admin_key()


@dataclass
class Cluster(launcher.Cluster):
    chunk_size: int = 1024 * 1024
    admin_key: str | None = TEST_ADMIN_KEY

    def start_master(self) -> Service:
        if self.master is None and self.db_url is None:
            self.db_url = fresh_database_url()
        return super().start_master()


def request_token(tokens: ChunkTokens, method: str, url: str, body: Any = None) -> dict[str, str]:
    """The X-DFS-Token header a chunkserver request needs, minted as the master would issue it: tests call
    chunkservers directly. The op, chunk and version come from the request itself."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    segments = parts.path.strip("/").split("/")
    if segments == ["chunks"]:
        return tokens.header("list", 0, 0, 600)
    chunk_id = int(segments[1]) if len(segments) > 1 and segments[1].isdigit() else 0
    action = segments[2] if len(segments) > 2 else method.upper()
    op, version = {
        "GET": ("read", query.get("version")), "HEAD": ("read", query.get("version")),
        "PUT": ("write", query.get("version")), "DELETE": ("delete", query.get("version")),
        "info": ("read", 0), "truncate": ("truncate", query.get("version")), "recover": ("recover", query.get("to")),
        "replicate": ("replicate", (body or {}).get("version")),
    }[action]
    return tokens.header(op, chunk_id, int(version) if str(version).isdigit() else 0, 600)


def service_tokens(service: Service) -> ChunkTokens:
    """Chunk tokens a chunkserver started by `Cluster` accepts (from the join token it was given)."""
    return ClusterKeys.from_join_token(service.env["DFS_JOIN_TOKEN"]).tokens


def cs_json(tokens: ChunkTokens, method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """`http_json` to a chunkserver, with the token the request needs."""
    return http_json(method, url, body, timeout, headers=request_token(tokens, method, url, body))


@contextlib.contextmanager
def inline_client(master_url: str, loop: LoopThread) -> Iterator[Client]:
    """A client with the test admin key whose namespace calls run in the calling thread (`run_inline`)."""
    client = loop.run(Client(master_url, key=TEST_ADMIN_KEY, retry_for=5).start())
    client.open_channels()
    try:
        yield client.inline()
    finally:
        loop.run(client.close())
