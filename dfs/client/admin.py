"""Calls to the master's administrative API (`/api/admin/...`, docs/PROTOCOL.md), for `dfs admin`."""

from __future__ import annotations

from typing import Any

import aiohttp

from dfs import tls
from dfs.auth import auth_headers, find_key
from dfs.client.rpc import MasterClient

#: fsck reads every replica and setrep/decommission start work: allow long answers.
ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=3600)


class AdminClient:
    """`async with AdminClient(url) as admin: await admin.call("nodes")` -> the reply's JSON object."""

    def __init__(self, master_url: str, retry_for: float = 10.0, key: str | None = None) -> None:
        self.master_url = master_url.rstrip("/")
        self.key = find_key() if key is None else key
        self.retry_for = retry_for
        self._session: aiohttp.ClientSession | None = None
        self._rpc: MasterClient | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(timeout=ADMIN_TIMEOUT,
                                              connector=aiohttp.TCPConnector(ssl=tls.client_context()))
        self._rpc = MasterClient(self._session, self.master_url, self.retry_for, auth_headers(self.key))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, name: str, /, **fields: Any) -> dict[str, Any]:
        assert self._rpc is not None, "use AdminClient as an async context manager"
        return await self._rpc.call(f"admin/{name}", **fields)
