"""Registration with the master and periodic heartbeats (docs/PROTOCOL.md "Master: chunkservers").

At start the server registers with a full chunk report, retrying with backoff until the master
answers; the reply gives its server id, the cluster's chunk size and the heartbeat interval. Then
every interval it sends capacity, use and the chunks found bad since the last beat, and applies the
reply: chunks to delete (garbage), or `reregister` for a full report again.

The server's identity is a uuid kept in `server.json` in the first data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from dfs.chunkserver import diskio
from dfs.chunkserver.config import ChunkserverConfig
from dfs.chunkserver.store import ChunkStore
from dfs.client.rpc import json_reply
from dfs.errors import DfsError, describe

log = logging.getLogger("chunkserver.heartbeat")

IDENTITY_FILE = "server.json"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30.0, sock_connect=5.0)
GOODBYE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
FIRST_RETRY = 0.2
MAX_RETRY = 5.0


@dataclass(slots=True)
class MasterLink:
    """What the master told us when we registered (None until then)."""

    server_id: int | None = None
    chunk_size: int | None = None
    heartbeat_interval: float = 5.0


def load_identity(data_dir: Path) -> str:
    """This server's uuid, created on first start (written temp, fsync, rename)."""
    path = data_dir / IDENTITY_FILE
    with contextlib.suppress(FileNotFoundError):
        try:
            value = json.loads(path.read_text())["uuid"]
            return str(uuid.UUID(str(value)))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s); taking a new server identity", path, exc)
    value = str(uuid.uuid4())
    tmp = path.with_name(IDENTITY_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"uuid": value}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return value


class Heartbeat:
    """Keeps this chunkserver registered with the master; run `run()` as a task."""

    def __init__(self, config: ChunkserverConfig, store: ChunkStore, session: aiohttp.ClientSession,
                 link: MasterLink, load: Callable[[], int] | None = None) -> None:
        self.config = config
        self.store = store
        self.session = session
        self.link = link
        self.load = load
        self.uuid: str | None = None
        self._failing = False

    def _signed(self, op: str, body: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of a request to the master, signed with the join token (dfs/tokens.py)."""
        url = f"{self.config.master_url}/api/cs/{op}"
        raw = json.dumps(body).encode()
        assert self.config.keys is not None, "a chunkserver needs the cluster's join token"
        headers = {"Content-Type": "application/json",
                   **self.config.keys.sign_request("POST", URL(url).path, raw)}
        return url, raw, headers

    async def _post(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        url, raw, headers = self._signed(op, body)
        async with self.session.post(url, data=raw, headers=headers, timeout=REQUEST_TIMEOUT) as resp:
            reply = await json_reply(resp)
            if not isinstance(reply, dict):
                raise DfsError(errno.EIO, f"master answered {op} with something other than a JSON object")
            return reply

    async def register(self) -> None:
        """Register with a full chunk report, retrying with backoff until the master answers."""
        if self.uuid is None:
            self.uuid = await diskio.run(load_identity, self.config.data_dirs[0])
        delay = FIRST_RETRY
        while True:
            body = {"uuid": self.uuid, "url": self.config.url, **self.store.usage(), "chunks": self.store.report()}
            try:
                reply = await self._post("register", body)
                server_id, chunk_size = reply["server_id"], reply["chunk_size"]
                interval = float(reply.get("heartbeat_interval") or self.link.heartbeat_interval)
                if not isinstance(server_id, int) or not isinstance(chunk_size, int) or chunk_size <= 0:
                    raise DfsError(errno.EIO, f"bad register reply {reply!r}")
            except (aiohttp.ClientError, OSError, DfsError, KeyError, ValueError, TypeError) as exc:
                log.warning("cannot register with the master at %s: %s; retrying in %.1fs",
                            self.config.master_url, describe(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            self.link.server_id, self.link.chunk_size = server_id, chunk_size
            self.link.heartbeat_interval = max(0.05, interval)
            self._failing = False
            log.info("registered with the master as server %d (%d chunks reported, chunk size %d)", server_id,
                     len(body["chunks"]), chunk_size)
            return

    async def beat(self) -> bool:
        """One heartbeat; applies its reply. False when the master asks us to register again."""
        bad = self.store.take_bad()
        body = {"server_id": self.link.server_id, **self.store.usage(), "bad": bad,
                "load": self.load() if self.load is not None else 0}
        try:
            reply = await self._post("heartbeat", body)
        except (aiohttp.ClientError, OSError, DfsError, ValueError) as exc:
            self.store.return_bad(bad)
            if not self._failing:
                log.warning("heartbeat to %s failed: %s (quiet until it works again)", self.config.master_url,
                            describe(exc))
            self._failing = True
            return True
        if self._failing:
            log.info("heartbeats to %s work again", self.config.master_url)
            self._failing = False
        for item in reply.get("delete") or []:
            await self._delete(item)
        return not reply.get("reregister")

    async def _delete(self, item: Any) -> None:
        try:
            chunk_id, version = int(item["chunk_id"]), int(item["version"])
            deleted = await self.store.delete(chunk_id, version)
        except Exception as exc:  # one bad item never stops the rest
            log.warning("cannot delete %r as the master asked: %s", item, describe(exc))
            return
        if not deleted:
            log.info("chunk %d v%d: garbage per the master, but not here or newer", chunk_id, version)

    async def goodbye(self) -> None:
        """Tell the master we stop on purpose (SIGTERM), so that it waits for our return for a while
        (maintenance) instead of re-replicating everything we hold. Best effort: a crash says nothing."""
        if self.link.server_id is None:
            return
        url, raw, headers = self._signed("goodbye", {"server_id": self.link.server_id})
        try:
            async with self.session.post(url, data=raw, headers=headers, timeout=GOODBYE_TIMEOUT) as resp:
                if resp.status != 200:
                    raise DfsError.from_json(resp.status, await resp.json(content_type=None))
            log.info("told the master at %s that we are stopping (maintenance)", self.config.master_url)
        except (aiohttp.ClientError, OSError, DfsError, ValueError, TimeoutError) as exc:
            log.warning("could not tell the master we are stopping: %s", describe(exc))

    async def run(self) -> None:
        """Register, then beat forever (registering again whenever the master asks)."""
        while True:
            await self.register()
            while True:
                await asyncio.sleep(self.link.heartbeat_interval)
                if not await self.beat():
                    log.info("the master asks for a new registration")
                    break

