"""Decommissioning: drain every replica off a server, then retire it (HDFS's decommission).

A server being drained is "draining": it gets no new replicas but still serves reads and writes of its
chunks until each has been moved (master/moves.py: copy to another server, commit, drop the source), so
redundancy never drops. Once it holds nothing it is "decommissioned" and stays out of placement until
recommissioned. Both states live in the `server_states` table, so a master restart resumes the drain.

A drain is refused when the servers that would remain cannot hold the goals (too few servers for the
largest goal among its chunks, or too little free space), unless forced; a forced drain moves what it
can and then drops the copies that have no other home, as long as another live copy of the chunk exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select

from dfs.errors import DfsError
from dfs.master import garbage
from dfs.master.layout import ChunkPlace, Layout, eligible, load_layout
from dfs.master.moves import Mover
from dfs.master.schema import chunks, replicas, server_states
from dfs.master.servers import ServerInfo

if TYPE_CHECKING:
    from dfs.master.app import Master

log = logging.getLogger("master.decommission")

PASS_INTERVAL = 1.0
PARALLEL = 4
DRAINING, RETIRED, NORMAL = "draining", "decommissioned", "normal"


@dataclass(slots=True)
class Drain:
    server_id: int
    force: bool
    started_at: float
    initial_replicas: int = 0
    initial_bytes: int = 0
    moved: int = 0
    moved_bytes: int = 0
    dropped: int = 0
    failed: int = 0
    stuck: int = 0  # chunks with nowhere to go in the last pass
    message: str = "starting"


class Decommissioner:
    def __init__(self, master: Master, mover: Mover) -> None:
        self.m = master
        self.mover = mover
        self.drains: dict[int, Drain] = {}
        self._wake = asyncio.Event()

    # -- state ----------------------------------------------------------------------------------

    async def load(self) -> None:
        """Apply the stored states to the registry; resume drains (not forced) after a restart."""
        rows = await self.m.db.run_read(lambda conn: conn.execute(select(server_states)).all())
        for row in rows:
            info = self.m.registry.servers.get(row.server_id)
            if info is not None:
                info.admin_state = row.state
                if row.state == DRAINING:
                    self.drains[row.server_id] = Drain(row.server_id, False, time.time(), message="resumed")

    async def _set_state(self, server_id: int, state: str) -> None:
        def txn(conn: Connection) -> None:
            conn.execute(delete(server_states).where(server_states.c.server_id == server_id))
            if state != NORMAL:
                conn.execute(insert(server_states).values(server_id=server_id, state=state))

        await self.m.db.run_write(txn)
        self.m.registry.servers[server_id].admin_state = state
        log.info("chunkserver %d (%s) is now %s", server_id, self.m.registry.servers[server_id].url, state)

    def find(self, node: str) -> ServerInfo:
        """A server by id, URL or host:port; ENOENT naming what was asked for."""
        text = node.strip().rstrip("/")
        servers = self.m.registry.servers
        if text.isdigit() and int(text) in servers:
            return servers[int(text)]
        bare = text.split("://", 1)[-1]
        for info in servers.values():
            if info.url.rstrip("/") == text or info.url.split("://", 1)[-1].rstrip("/") == bare or info.uuid == text:
                return info
        raise DfsError(errno.ENOENT, f"no such node: {node} (give a server id, URL or host:port)")

    # -- requests -------------------------------------------------------------------------------

    async def start(self, node: str, force: bool) -> dict[str, Any]:
        info = self.find(node)
        if info.admin_state == RETIRED:
            raise DfsError(errno.EINVAL, f"server {info.id} ({info.url}) is already decommissioned")
        layout = await load_layout(self.m.db, self.m.config.chunk_size)
        mine = layout.on_server(info.id)
        problem = self._capacity_problem(info, layout, mine)
        if problem and not force:
            raise DfsError(errno.ENOSPC, f"cannot decommission server {info.id} ({info.url}): {problem}; "
                           "--force drains it anyway, leaving chunks under their goal")
        drain = self.drains.get(info.id)
        if drain is None or info.admin_state != DRAINING:
            drain = Drain(info.id, force, time.time())
            self.drains[info.id] = drain
        drain.force = drain.force or force
        drain.initial_replicas = len(mine)
        drain.initial_bytes = sum(c.length for c in mine)
        drain.message = "draining" + (f" (forced: {problem})" if problem else "")
        await self._set_state(info.id, DRAINING)
        self._wake.set()
        return self.status_of(info.id, layout)

    def _capacity_problem(self, info: ServerInfo, layout: Layout, mine: list) -> str | None:
        others = {sid: s for sid, s in eligible(self.m.registry).items() if sid != info.id}
        need = max((c.goal for c in mine), default=0)
        if need > len(others):
            return f"its chunks have goals up to {need} but only {len(others)} servers in service would remain"
        placed = layout.placed_bytes()
        room = sum(max(0, min(s.free, s.capacity - placed.get(sid, 0))) for sid, s in others.items())
        wanted = sum(c.length for c in mine)
        if wanted > room:
            return f"it holds {wanted} bytes but the other servers have room for {room}"
        return None

    async def cancel(self, node: str) -> dict[str, Any]:
        """Stop draining (what was moved stays moved); the server is in service again."""
        info = self.find(node)
        if info.admin_state != DRAINING:
            raise DfsError(errno.EINVAL, f"server {info.id} ({info.url}) is not being decommissioned")
        self.drains.pop(info.id, None)
        await self._set_state(info.id, NORMAL)
        return {"server_id": info.id, "url": info.url, "state": NORMAL}

    async def recommission(self, node: str) -> dict[str, Any]:
        info = self.find(node)
        if info.admin_state == NORMAL:
            raise DfsError(errno.EINVAL, f"server {info.id} ({info.url}) is in service already")
        self.drains.pop(info.id, None)
        await self._set_state(info.id, NORMAL)
        return {"server_id": info.id, "url": info.url, "state": NORMAL}

    def status_of(self, server_id: int, layout: Layout) -> dict[str, Any]:
        info = self.m.registry.servers[server_id]
        left = layout.on_server(server_id)
        drain = self.drains.get(server_id)
        out: dict[str, Any] = {"server_id": server_id, "url": info.url, "state": info.admin_state,
                               "replicas_left": len(left), "bytes_left": sum(c.length for c in left)}
        if drain is not None:
            out.update(force=drain.force, initial_replicas=drain.initial_replicas,
                       initial_bytes=drain.initial_bytes, moved=drain.moved, moved_bytes=drain.moved_bytes,
                       dropped=drain.dropped, failed=drain.failed, stuck=drain.stuck, message=drain.message,
                       started_at=drain.started_at)
        return out

    async def status(self) -> dict[str, Any]:
        layout = await load_layout(self.m.db, self.m.config.chunk_size)
        ids = sorted(sid for sid, s in self.m.registry.servers.items() if s.admin_state != NORMAL)
        return {"nodes": [self.status_of(sid, layout) for sid in ids]}

    # -- the job --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Background task: drain every draining server, pass after pass."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PASS_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            draining = [sid for sid, s in self.m.registry.servers.items() if s.admin_state == DRAINING]
            if not draining:
                continue
            try:
                await self._pass(draining)
            except Exception:  # one failed pass must not end the job
                log.exception("drain pass failed")

    async def _pass(self, draining: list[int]) -> None:
        layout = await load_layout(self.m.db, self.m.config.chunk_size)
        for sid in draining:
            drain = self.drains.setdefault(sid, Drain(sid, False, time.time(), message="draining"))
            mine = layout.on_server(sid)
            stale = await self._stale_rows(sid)
            if not mine and not stale:
                drain.message = "done"
                await self._set_state(sid, RETIRED)
                continue
            before = drain.moved + drain.dropped
            await self._drain_server(drain, layout, mine)
            if stale:  # replica rows left behind by writes: forget them, the garbage queue deletes the data
                await self._drop_stale(sid, stale)
            drain.message = f"draining: {len(mine)} replicas left in the last pass" + (
                f", {drain.stuck} with nowhere to go" if drain.stuck else "")
            if drain.moved + drain.dropped > before:
                self._wake.set()

    async def _drain_server(self, drain: Drain, layout: Layout, mine: list[ChunkPlace]) -> None:
        sid = drain.server_id
        drain.stuck = 0
        slots = asyncio.Semaphore(PARALLEL)
        taken: dict[int, int] = {}  # bytes sent to each target in this pass
        placed = layout.placed_bytes()

        async def one(c: ChunkPlace) -> None:
            holders = set(c.servers) | {s for s, _ in c.stale}
            async with slots:
                target = self.mover.pick_target(c.chunk_id, holders, c.length, placed, taken, layout.garbage)
                if target is None:
                    drain.stuck += 1
                    others = [s for s in holders if s != sid and self.m.registry.is_live(s)]
                    allowed = (drain.force and others) or len(others) >= c.goal
                    if allowed and await self.mover.drop(c.chunk_id, c.version, sid):
                        drain.dropped += 1
                    return
                outcome = await self.mover.move(c.chunk_id, c.version, sid, target, length_hint=c.length)
                if outcome.ok:
                    drain.moved += 1
                    drain.moved_bytes += outcome.length or c.length
                elif not outcome.skipped:
                    drain.failed += 1

        await asyncio.gather(*(one(c) for c in mine))

    async def _stale_rows(self, server_id: int) -> list[tuple[int, int]]:
        def txn(conn: Connection) -> list[tuple[int, int]]:
            query = (select(replicas.c.chunk_id, replicas.c.version)
                     .select_from(replicas.join(chunks, chunks.c.chunk_id == replicas.c.chunk_id))
                     .where(replicas.c.server_id == server_id, replicas.c.version != chunks.c.version))
            return [(r.chunk_id, r.version) for r in conn.execute(query)]

        return await self.m.db.run_read(txn, background=True)

    async def _drop_stale(self, server_id: int, stale: list[tuple[int, int]]) -> None:
        wall = time.time()
        await self.m.db.run_write(lambda conn: garbage.drop_replicas(
            conn, [(cid, server_id, v) for cid, v in stale], wall))
