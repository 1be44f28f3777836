"""Re-replication: a background job that brings every chunk back to its goal, fewest live copies first.

Each round scans the placement (chunks, their files' goals, their replicas) and counts, per chunk,
the replicas at the current version on live servers and on servers in maintenance (a graceful stop:
those count as present, so a restart starts no copy storm; they cannot be copied from). Then:

* a chunk with fewer copies than its goal gets copies (master/replication.py), those with the
  fewest live copies first, from its least busy live replica to the least utilised live server in
  service that holds nothing of it and has room; at most `repair_concurrency` copies per server,
  and copies start no faster than `repair_bandwidth` bytes/s allows (a token bucket over their
  lengths); each copy is also capped at that rate on the target;
* a chunk under a write lease waits for the writer (a copy would miss its later writes);
* a chunk with no live copy is counted `missing` (nothing can be done until one comes back);
* a goal above the number of servers that could hold a copy is counted `goal_unreachable` and
  logged once per change, and the chunk is kept at as many copies as there are such servers;
* a chunk with more live copies than its goal for OVERGOAL_DELAY seconds (a dead server came back,
  or a goal was lowered) loses its extra replicas, on the most utilised servers first.

Nothing waits for the round's copies: they run as tasks, and the job wakes when one ends, when a
server comes, goes or reports bad replicas (Registry.listeners), and every `repair_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from dfs.errors import DfsError
from dfs.jobs import Job, Throttle
from dfs.master import garbage
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.replication import Replicator
from dfs.master.schema import chunks, inodes, replicas
from dfs.master.servers import Registry, ServerInfo

log = logging.getLogger("master.repair")

OVERGOAL_DELAY = 10.0


@dataclass(slots=True)
class Chunk:
    chunk_id: int
    inode: int
    index: int
    version: int
    goal: int
    length: int
    current: list[int] = field(default_factory=list)  # servers with a replica at the current version
    stale: list[int] = field(default_factory=list)  # servers with an older replica


_PLACEMENT = (select(chunks.c.chunk_id, chunks.c.inode, chunks.c.idx, chunks.c.version, inodes.c.goal, inodes.c.size,
                     replicas.c.server_id, replicas.c.version)
              .select_from(chunks.join(inodes, inodes.c.id == chunks.c.inode)
                           .outerjoin(replicas, replicas.c.chunk_id == chunks.c.chunk_id)))


def _scan(conn: Connection, chunk_size: int) -> dict[int, Chunk]:
    """Every chunk with its replicas. Rows are unpacked as tuples: reading them by name cost twice as much."""
    found: dict[int, Chunk] = {}
    for chunk_id, inode, idx, version, goal, size, server_id, held in conn.execute(_PLACEMENT):
        chunk = found.get(chunk_id)
        if chunk is None:
            length = max(0, min(chunk_size, size - idx * chunk_size))
            chunk = found[chunk_id] = Chunk(chunk_id, inode, idx, version, goal, length)
        if server_id is not None:
            (chunk.current if held == version else chunk.stale).append(server_id)
    return found


class Repair(Job):
    name = "re-replication"
    max_share = 0.05  # a scan of every chunk: with a million chunks, seconds of the master's time

    def __init__(self, db: Database, config: MasterConfig, registry: Registry, leases: LeaseTable,
                 replicator: Replicator) -> None:
        super().__init__(config.repair_interval)
        self.db = db
        self.config = config
        self.registry = registry
        self.leases = leases
        self.replicator = replicator
        self.throttle = Throttle(config.repair_bandwidth, burst=config.chunk_size)
        self.tasks: set[asyncio.Task[None]] = set()
        self._over_since: dict[int, float] = {}
        self._unreachable_said: tuple[int, int] = (0, 0)
        self.counts: dict[str, Any] = {"under_replicated": 0, "missing": 0, "goal_unreachable": 0,
                                       "waiting_for_maintenance": 0, "in_maintenance": 0, "leased": 0,
                                       "over_replicated": 0,
                                       "trimmed": 0, "scanned": 0, "scan_seconds": 0.0, "last_scan": None}
        registry.listeners.append(self.wake)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- one round --------------------------------------------------------------------------------

    async def run_once(self) -> None:
        if not self.registry.settled():  # servers are still coming back after a master start
            return
        started = time.monotonic()
        found = await self.db.run_read(lambda conn: _scan(conn, self.config.chunk_size), background=True)
        live = {s.id: s for s in self.registry.live()}
        maintenance = {s.id for s in self.registry.in_maintenance()}
        hosts = [s for s in live.values() if s.accepts_chunks]  # servers that may receive copies
        under: list[tuple[int, Chunk]] = []
        counts = dict.fromkeys(("under_replicated", "missing", "goal_unreachable", "waiting_for_maintenance",
                                "in_maintenance", "leased", "over_replicated"), 0)
        unreachable_goal = 0
        over: list[Chunk] = []
        now = time.monotonic()
        for chunk in found.values():
            holders = [sid for sid in chunk.current if sid in live]
            resting = [sid for sid in chunk.current if sid in maintenance]
            present = len(holders) + len(resting)
            if resting:
                counts["in_maintenance"] += 1
            room = len({s.id for s in hosts} | set(holders) | set(resting))
            if chunk.goal > room:
                counts["goal_unreachable"] += 1
                unreachable_goal = max(unreachable_goal, chunk.goal)
            goal = min(chunk.goal, room)
            if present < goal:
                counts["under_replicated"] += 1
                if not holders:
                    counts["missing" if not resting else "waiting_for_maintenance"] += 1
                elif self.leases.get(chunk.inode, chunk.index) is not None:
                    counts["leased"] += 1
                elif chunk.chunk_id not in self.replicator.copying:
                    under.append((len(holders), chunk))
            if len(holders) > chunk.goal and not resting:
                counts["over_replicated"] += 1
                since = self._over_since.setdefault(chunk.chunk_id, now)
                if now - since >= OVERGOAL_DELAY:
                    over.append(chunk)
            else:
                self._over_since.pop(chunk.chunk_id, None)
        for cid in [c for c in self._over_since if c not in found]:
            del self._over_since[cid]
        self._say_unreachable(counts["goal_unreachable"], unreachable_goal, len(hosts))
        self.counts.update(counts, scanned=len(found), last_scan=round(time.time(), 3))
        under.sort(key=lambda item: (item[0], item[1].chunk_id))  # fewest live copies first
        self.cost = time.monotonic() - started  # the scan: launching copies waits on the bandwidth throttle
        await self._launch(under, live, hosts)
        for chunk in over:
            await self._trim(chunk, live)
        self.counts["scan_seconds"] = round(time.monotonic() - started, 3)

    def _say_unreachable(self, count: int, goal: int, hosts: int) -> None:
        said = (count, hosts)
        if said != self._unreachable_said and count:
            log.warning("%d chunks have a goal (up to %d) above the %d chunkservers that can hold them; they are "
                        "kept at %d copies until more servers join", count, goal, hosts, hosts)
        elif said != self._unreachable_said and self._unreachable_said[0]:
            log.info("every chunk's goal can be met again (%d chunkservers)", hosts)
        self._unreachable_said = said

    async def _launch(self, under: list[tuple[int, Chunk]], live: dict[int, ServerInfo],
                      hosts: list[ServerInfo]) -> None:
        planned: dict[int, int] = {}  # copies started this round, per server (tasks have not begun yet)

        def busy(sid: int) -> bool:
            return self.replicator.busy(sid, planned.get(sid, 0))

        blocked: int | None = None  # fewest-first: once a chunk waits for a busy server, no chunk with
        for copies, chunk in under:  # more live copies may take a slot before it
            if blocked is not None and copies > blocked:
                return
            if all(busy(s.id) for s in hosts):
                return
            holders = [live[sid] for sid in chunk.current if sid in live]
            taken = set(chunk.current)
            fitting = [s for s in hosts if s.id not in taken and chunk.chunk_id not in s.deleting
                       and s.free - s.reserved >= chunk.length]
            if not holders or not fitting:
                continue  # nothing to copy from, or nowhere to: counted, not waited for
            sources = [s for s in holders if not busy(s.id)]
            targets = [s for s in fitting if not busy(s.id)]
            if not sources or not targets:
                blocked = copies
                continue
            source = min(sources, key=lambda s: (self.replicator.active.get(s.id, 0) + planned.get(s.id, 0), s.load,
                                                  s.utilisation(), s.id))
            target = min(targets, key=lambda s: (s.utilisation(), s.id))
            await self.throttle.consume(chunk.length)
            for sid in (source.id, target.id):
                planned[sid] = planned.get(sid, 0) + 1
            self._start(chunk, copies, source, target)

    def _start(self, chunk: Chunk, copies: int, source: ServerInfo, target: ServerInfo) -> None:
        log.info("chunk %d v%d (inode %d slot %d) has %d live of %d copies: copying %d -> %d", chunk.chunk_id,
                 chunk.version, chunk.inode, chunk.index, copies, chunk.goal, source.id, target.id)
        self.replicator.copying.add(chunk.chunk_id)  # until the task begins: keeps the next round off it

        async def run() -> None:
            self.replicator.copying.discard(chunk.chunk_id)
            try:
                await self.replicator.copy(chunk.chunk_id, chunk.version, source, target)
            except DfsError:
                pass  # logged by the replicator; the next round tries again
            finally:
                self.wake()

        task = asyncio.create_task(run(), name=f"copy chunk {chunk.chunk_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _trim(self, chunk: Chunk, live: dict[int, ServerInfo]) -> None:
        """Drop the replicas above the goal, on the most utilised servers (those leaving service first)."""
        if chunk.chunk_id in self.replicator.copying:
            return
        holders = sorted((live[sid] for sid in chunk.current if sid in live),
                         key=lambda s: (s.accepts_chunks, -s.utilisation(), -s.id))
        extra = [s.id for s in holders[:len(holders) - chunk.goal]]

        def txn(conn: Connection) -> list[int]:
            row = conn.execute(select(chunks.c.version).where(chunks.c.chunk_id == chunk.chunk_id)).first()
            if row is None or row.version != chunk.version:
                return []
            held = {r.server_id for r in conn.execute(select(replicas.c.server_id).where(
                replicas.c.chunk_id == chunk.chunk_id, replicas.c.version == chunk.version))}
            keep = [sid for sid in held if sid in live and sid not in extra]
            if len(keep) < chunk.goal:
                return []
            doomed = [sid for sid in extra if sid in held]
            garbage.drop_replicas(conn, [(chunk.chunk_id, sid, chunk.version) for sid in doomed],
                                  time.time() + self.config.gc_grace)
            return doomed

        if self.leases.get(chunk.inode, chunk.index) is not None:
            return
        dropped = await self.db.run_write(txn)
        self._over_since.pop(chunk.chunk_id, None)
        if dropped:
            self.counts["trimmed"] += len(dropped)
            log.info("chunk %d v%d has %d copies for a goal of %d: replicas on servers %s dropped", chunk.chunk_id,
                     chunk.version, len(holders), chunk.goal, ",".join(map(str, dropped)))

    def status(self) -> dict[str, Any]:
        return {**self.counts, "copies": self.replicator.status()}
