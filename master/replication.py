"""The copy primitive: one more replica of a chunk, copied chunkserver to chunkserver, then recorded.

`copy_replica(master, chunk_id, version, source, target)` is what re-replication (master/repair.py),
the balancer, decommission and fsck --repair use; the bytes never pass through the master:

1. the chunk must be at `version`, with no write lease out on its slot (a writer under a lease keeps
   writing at the same version: a copy taken meanwhile would be silently incomplete); any deletion
   of the chunk queued for `target` is cancelled, and a deletion already sent to `target` in its
   last heartbeat reply is waited out (its next heartbeat), so it cannot remove the new copy;
2. `POST target/chunks/{id}/replicate {source, version, rate}`: the target pulls the chunk from the
   source, verifies the copy against the source's digest and installs it (chunkserver/copier.py);
3. in one transaction: if the chunk is still at `version`, the target's replica is recorded (and any
   deletion queued for it meanwhile cancelled); if a write bumped the version meanwhile, the copy is
   stale and queued for deletion instead (ESTALE).

At most `repair_concurrency` copies run per server (as source or target); more wait their turn.
Copies of one chunk never overlap (EBUSY).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import Connection, delete, insert, select, update

from dfs.client.rpc import json_reply
from dfs.errors import DfsError
from dfs.master import garbage
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.schema import chunks, replicas
from dfs.master.schema import garbage as garbage_table
from dfs.master.servers import Registry, ServerInfo

if TYPE_CHECKING:
    from dfs.master.app import Master

log = logging.getLogger("master.replication")

#: The slowest rate a copy is given time for (a copy of a 64 MiB chunk may take 60 s + 4 s).
MIN_COPY_RATE = 16 * 1024 * 1024
COPY_SLACK = 60.0


class Replicator:
    """Runs copies, bounded per server; one per master (`Master.replicator`)."""

    def __init__(self, db: Database, config: MasterConfig, registry: Registry, leases: LeaseTable,
                 session: aiohttp.ClientSession) -> None:
        self.db = db
        self.config = config
        self.registry = registry
        self.leases = leases
        self.session = session
        self.active: dict[int, int] = {}  # server id -> copies it takes part in now
        self.copying: set[int] = set()  # chunk ids being copied
        self._turn = asyncio.Condition()
        self.stats: dict[str, Any] = {"copies": 0, "failed": 0, "bytes": 0, "seconds": 0.0}

    def busy(self, server_id: int, extra: int = 0) -> bool:
        """True if the server already takes part in as many copies as allowed."""
        return self.active.get(server_id, 0) + extra >= self.config.repair_concurrency

    @contextlib.asynccontextmanager
    async def _slots(self, chunk_id: int, source: int, target: int) -> AsyncIterator[None]:
        if chunk_id in self.copying:
            raise DfsError(errno.EBUSY, f"chunk {chunk_id} is already being copied")
        self.copying.add(chunk_id)
        try:
            async with self._turn:
                await self._turn.wait_for(lambda: not self.busy(source) and not self.busy(target))
                for sid in (source, target):
                    self.active[sid] = self.active.get(sid, 0) + 1
            try:
                yield
            finally:
                async with self._turn:
                    for sid in (source, target):
                        self.active[sid] -= 1
                        if not self.active[sid]:
                            del self.active[sid]
                    self._turn.notify_all()
        finally:
            self.copying.discard(chunk_id)

    async def copy(self, chunk_id: int, version: int, source: ServerInfo, target: ServerInfo, *,
                   rate: float | None = None) -> int:
        """Copy the chunk from `source` to `target` and record it; the chunk's length in bytes.

        `rate` caps this copy in bytes/s (None: the master's --repair-bandwidth; 0: unlimited).
        Raises DfsError: ESTALE (the chunk changed or is gone), EBUSY (a lease is out, or a copy of
        the chunk is running), EAGAIN (a server is not live, or a deletion on the target is still on
        its way), and the target's own errors (ENOSPC, EIO for a failed verification...).
        """
        if source.id == target.id:
            raise DfsError(errno.EINVAL, f"chunk {chunk_id}: source and target are both server {source.id}")
        started = time.monotonic()
        async with self._slots(chunk_id, source.id, target.id):
            for info in (source, target):
                if not self.registry.is_live(info.id):
                    raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: server {info.id} ({info.url}) is not live")
            await self._prepare(chunk_id, version, target)
            cap = self.config.repair_bandwidth if rate is None else rate
            estimate = self.config.chunk_size
            target.reserved += estimate
            try:
                reply = await self._pull(chunk_id, version, source, target, cap)
            except DfsError as err:
                self.stats["failed"] += 1
                log.warning("chunk %d v%d: copy %d (%s) -> %d (%s) failed: %s %s", chunk_id, version, source.id,
                            source.url, target.id, target.url, err.code, err.message)
                raise
            finally:
                target.reserved = max(0, target.reserved - estimate)
            length = int(reply.get("length", 0))
            target.reserved += length  # until its next heartbeat counts it
            recorded = await self.db.run_write(lambda conn: self._record(conn, chunk_id, version, target.id))
        seconds = time.monotonic() - started
        if not recorded:
            self.stats["failed"] += 1
            log.warning("chunk %d: changed during the copy %d -> %d; copy at v%d dropped", chunk_id, source.id,
                        target.id, version)
            raise DfsError(errno.ESTALE, f"chunk {chunk_id} changed during the copy; the copy was dropped")
        self.stats["copies"] += 1
        self.stats["bytes"] += int(reply.get("copied", length))
        self.stats["seconds"] += seconds
        log.info("chunk %d v%d copied %d (%s) -> %d (%s): %d bytes in %.2fs", chunk_id, version, source.id,
                 source.url, target.id, target.url, length, seconds)
        return length

    async def _prepare(self, chunk_id: int, version: int, target: ServerInfo) -> None:
        def read(conn: Connection) -> tuple[int, int]:
            row = conn.execute(select(chunks.c.inode, chunks.c.idx, chunks.c.version)
                               .where(chunks.c.chunk_id == chunk_id)).first()
            if row is None:
                raise DfsError(errno.ESTALE, f"chunk {chunk_id} no longer exists")
            if row.version != version:
                raise DfsError(errno.ESTALE, f"chunk {chunk_id} is at v{row.version}, not v{version}")
            return row.inode, row.idx

        inode, index = await self.db.run_read(read)
        if self.leases.get(inode, index) is not None:
            raise DfsError(errno.EBUSY, f"chunk {chunk_id} (inode {inode} slot {index}) has a write lease out")
        cleared = await self.db.run_write(lambda conn: conn.execute(
            delete(garbage_table).where(garbage_table.c.chunk_id == chunk_id,
                                        garbage_table.c.server_id == target.id)).rowcount)
        if cleared:
            log.info("chunk %d: deletion queued on server %d cancelled for a copy", chunk_id, target.id)
        if chunk_id in target.deleting:  # told to delete it in the last reply: wait until that is applied
            beats = target.beats
            deadline = time.monotonic() + 3 * self.config.heartbeat_interval + 1
            while target.beats == beats and time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, self.config.heartbeat_interval / 4))
            if target.beats == beats:
                raise DfsError(errno.EAGAIN, f"chunk {chunk_id}: a deletion on server {target.id} may still be "
                               "on its way")

    async def _pull(self, chunk_id: int, version: int, source: ServerInfo, target: ServerInfo,
                    rate: float) -> dict[str, Any]:
        slowest = max(rate, MIN_COPY_RATE) if rate else MIN_COPY_RATE
        timeout = aiohttp.ClientTimeout(total=COPY_SLACK + self.config.chunk_size / slowest, sock_connect=5.0)
        body = {**replicate_order(self.config, chunk_id, version, source.url), "rate": int(rate or 0)}
        try:
            async with self.session.post(f"{target.url}/chunks/{chunk_id}/replicate", json=body,
                                         headers=self.config.token_header("replicate", chunk_id, version),
                                         timeout=timeout) as resp:
                reply = await json_reply(resp)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DfsError(errno.EIO, f"chunk {chunk_id}: target {target.url} unreachable: "
                           f"{exc or type(exc).__name__}") from None
        if not isinstance(reply, dict) or reply.get("version") != version:
            raise DfsError(errno.EIO, f"chunk {chunk_id}: target {target.url} gave a bad reply {reply!r}")
        return reply

    def _record(self, conn: Connection, chunk_id: int, version: int, target: int) -> bool:
        row = conn.execute(select(chunks.c.version).where(chunks.c.chunk_id == chunk_id)).first()
        if row is None or row.version != version:
            garbage.queue(conn, [(chunk_id, target, version)], time.time())
            return False
        held = conn.scalar(select(replicas.c.version).where(replicas.c.chunk_id == chunk_id,
                                                            replicas.c.server_id == target))
        if held is None:
            conn.execute(insert(replicas).values(chunk_id=chunk_id, server_id=target, version=version))
        else:
            conn.execute(update(replicas).where(replicas.c.chunk_id == chunk_id, replicas.c.server_id == target)
                         .values(version=version))
        conn.execute(delete(garbage_table).where(garbage_table.c.chunk_id == chunk_id,
                                                 garbage_table.c.server_id == target))
        return True

    def status(self) -> dict[str, Any]:
        seconds = self.stats["seconds"]
        return {**self.stats, "seconds": round(seconds, 3), "in_flight": len(self.copying),
                "rate": round(self.stats["bytes"] / seconds) if seconds else None}


def replicate_order(config: MasterConfig, chunk_id: int, version: int, source_url: str) -> dict[str, Any]:
    """The body of `POST target/chunks/{id}/replicate`: the source and a read token for it (the target's
    own permission, a replicate token, goes in the request's header)."""
    return {"source": source_url, "version": version, "source_token": config.token("read", chunk_id, version)}


async def copy_replica(master: Master, chunk_id: int, version: int, source: ServerInfo, target: ServerInfo, *,
                       rate: float | None = None) -> int:
    """Copy chunk `chunk_id` at `version` from `source` to `target` (chunkserver to chunkserver), verify
    it, record the new replica and cancel any deletion queued for it there; the chunk's length.

    See `Replicator.copy` for the errors. Safe to call from several jobs at once.
    """
    return await master.replicator.copy(chunk_id, version, source, target, rate=rate)
