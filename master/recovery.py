"""Lease recovery: a chunk whose writer vanished must not stay unreadable.

A write breaks off when its client dies mid-write: the replicas that got part of it are left
*pending* at the lease's version, and a pending replica refuses reads. Two things bring such chunks
here: a write lease that expires without being given back (`LeaseTable.expired`), and a chunkserver
that registers with a pending replica which is the chunk's last copy at its version
(`Registry.suspects`; acted on a lease lifetime later, since a writer may still be at work).

For each, once no lease is out on the chunk's slot and the chunk is still at that version V, the
master asks every replica for its info (`GET /chunks/{id}/info`):

* some replica is complete at V: the write did finish there; the pending (or missing) ones are
  dropped (stale: queued for deletion) and re-replication restores the goal;
* all are pending at V: the first in chain order (it received the most data; by length when the
  chain is unknown) is made complete at V+1 (`POST /chunks/{id}/recover?from=V&to=V+1`, which takes
  every digest again from the data as it is), the chunk moves to V+1, the others are dropped, and
  re-replication restores the goal. The bytes of the broken write that reached that replica stay,
  as after a crash of a local writer; the file's size is what the writer last committed;
* no replica answers: tried again later (a few times, then given up until a server registers it
  again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy import Connection, select, update

from dfs.errors import DfsError, describe
from dfs.jobs import Job, failsafe
from dfs.master import garbage
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.schema import chunks, replicas
from dfs.master.servers import Registry

log = logging.getLogger("master.recovery")

INFO_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
MAX_ATTEMPTS = 10
RETRY_DELAY = 5.0


@dataclass(slots=True)
class Case:
    chunk_id: int
    version: int | None  # the lease's version; None: whatever the chunk is at
    order: list[int] = field(default_factory=list)  # chain order of the servers, if known
    not_before: float = 0.0
    attempts: int = 0


class LeaseRecovery(Job):
    name = "lease recovery"

    def __init__(self, db: Database, config: MasterConfig, registry: Registry, leases: LeaseTable,
                 session: aiohttp.ClientSession) -> None:
        super().__init__(interval=1.0)
        self.db = db
        self.config = config
        self.registry = registry
        self.leases = leases
        self.session = session
        self.queue: dict[int, Case] = {}
        self.stats = {"checked": 0, "recovered": 0, "dropped": 0, "given_up": 0}

    def _take_new(self) -> None:
        now = time.monotonic()
        for grant in self.leases.take_expired():
            self.queue[grant.chunk_id] = Case(grant.chunk_id, grant.version, [sid for sid, _ in grant.servers], now)
        suspects, self.registry.suspects = self.registry.suspects, {}
        for chunk_id in suspects:
            if chunk_id not in self.queue:
                self.queue[chunk_id] = Case(chunk_id, None, [], now + self.config.lease_seconds)

    async def run_once(self) -> None:
        self._take_new()
        now = time.monotonic()
        due = [case for case in self.queue.values() if case.not_before <= now]
        for case in due:
            done = True
            with failsafe(self.name, f"chunk {case.chunk_id}"):
                done = await self.recover(case)
            if done:
                self.queue.pop(case.chunk_id, None)
            else:
                case.attempts += 1
                case.not_before = time.monotonic() + RETRY_DELAY
                if case.attempts >= MAX_ATTEMPTS:
                    self.stats["given_up"] += 1
                    log.warning("chunk %d: no replica answered for lease recovery after %d attempts; given up",
                                case.chunk_id, case.attempts)
                    self.queue.pop(case.chunk_id, None)

    # -- one chunk ----------------------------------------------------------------------------------

    async def recover(self, case: Case) -> bool:
        """Settle one chunk; False to try again later."""
        chunk_id = case.chunk_id

        def read(conn: Connection) -> tuple[Any, list[int]] | None:
            row = conn.execute(select(chunks.c.inode, chunks.c.idx, chunks.c.version)
                               .where(chunks.c.chunk_id == chunk_id)).first()
            if row is None:
                return None
            held = [r.server_id for r in conn.execute(select(replicas.c.server_id).where(
                replicas.c.chunk_id == chunk_id, replicas.c.version == row.version))]
            return row, held

        found = await self.db.run_read(read)
        if found is None:
            return True  # deleted meanwhile
        row, held = found
        version = row.version
        if case.version is not None and version != case.version:
            return True  # a newer lease took over: its writer settles the chunk
        if self.leases.get(row.inode, row.idx) is not None:
            case.version = None
            return False  # a writer is at work again; look later
        self.stats["checked"] += 1
        infos = await asyncio.gather(*(self._info(sid, chunk_id) for sid in held))
        states = dict(zip(held, infos, strict=True))
        complete = [sid for sid, info in states.items() if info and info["version"] == version and not info["pending"]]
        pending = [sid for sid, info in states.items() if info and info["version"] == version and info["pending"]]
        silent = [sid for sid, info in states.items() if info is None]
        gone = [sid for sid in held if sid not in complete and sid not in pending and sid not in silent]
        if complete:
            doomed = pending + gone
            if doomed:
                await self._drop(chunk_id, version, doomed)
                log.info("chunk %d v%d: complete on servers %s; unfinished or missing copies on %s dropped",
                         chunk_id, version, _ids(complete), _ids(doomed))
            return True
        if not pending:
            if gone and not silent:
                log.warning("chunk %d v%d: no server has it any more (%s)", chunk_id, version, _ids(gone))
                return True
            return False
        rank = {sid: i for i, sid in enumerate(case.order)}
        chosen = min(pending, key=lambda sid: (rank.get(sid, len(rank)), -int(states[sid]["length"]), sid))
        if silent and chosen not in case.order:
            return False  # a silent server may hold the longest copy: wait for it
        url = self.registry.url(chosen)
        try:
            async with self.session.post(f"{url}/chunks/{chunk_id}/recover",
                                         params={"from": str(version), "to": str(version + 1)},
                                         headers=self.config.token_header("recover", chunk_id, version + 1),
                                         timeout=INFO_TIMEOUT) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise DfsError.from_json(resp.status, body)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, DfsError) as exc:
            log.warning("chunk %d v%d: recovery on server %d failed: %s", chunk_id, version, chosen, describe(exc))
            return False
        others = [sid for sid in held if sid != chosen]

        def commit(conn: Connection) -> bool:
            current = conn.scalar(select(chunks.c.version).where(chunks.c.chunk_id == chunk_id))
            if current != version:
                return False
            conn.execute(update(chunks).where(chunks.c.chunk_id == chunk_id).values(version=version + 1))
            conn.execute(update(replicas).where(replicas.c.chunk_id == chunk_id, replicas.c.server_id == chosen)
                         .values(version=version + 1))
            garbage.drop_replicas(conn, [(chunk_id, sid, version) for sid in others], time.time())
            return True

        if await self.db.run_write(commit):
            self.stats["recovered"] += 1
            self.stats["dropped"] += len(others)
            log.warning("chunk %d: a write at v%d broke off on every replica; recovered as v%d from server %d "
                        "(%d bytes)%s", chunk_id, version, version + 1, chosen, int(body.get("length", 0)),
                        f", copies on {_ids(others)} dropped" if others else "")
            self.registry.changed()
        return True

    async def _info(self, server_id: int, chunk_id: int) -> dict[str, Any] | None:
        """The replica's info; {} if the server answered that it has no such chunk; None: no answer."""
        if not self.registry.is_live(server_id):
            return None
        url = self.registry.url(server_id)
        try:
            async with self.session.get(f"{url}/chunks/{chunk_id}/info", timeout=INFO_TIMEOUT,
                                        headers=self.config.token_header("read", chunk_id)) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 404:
                    return {}
                if resp.status != 200 or not isinstance(body, dict):
                    return None
                return body
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None

    async def _drop(self, chunk_id: int, version: int, servers: list[int]) -> None:
        def txn(conn: Connection) -> None:
            still = [r.server_id for r in conn.execute(select(replicas.c.server_id).where(
                replicas.c.chunk_id == chunk_id, replicas.c.version == version, replicas.c.server_id.in_(servers)))]
            garbage.drop_replicas(conn, [(chunk_id, sid, version) for sid in still], time.time())

        await self.db.run_write(txn)
        self.stats["dropped"] += len(servers)
        self.registry.changed()

    def status(self) -> dict[str, Any]:
        return {**self.stats, "queued": len(self.queue)}


def _ids(servers: list[int]) -> str:
    return ",".join(map(str, servers)) or "-"
