"""Safe replica moves and copies, shared by the balancer, the drain, setrep and fsck --repair.

A move of chunk C from server S to server D never lowers redundancy:

1. check that C is still at version V with a replica on S, that D holds nothing of C (no replica, no
   queued deletion, no copy dropped in the last few seconds whose deletion may still be on its way)
   and that no write lease is out on C's slot;
2. D pulls C from a live replica and verifies its checksum (`copy_replica`, master/replication.py),
   which records D's replica;
3. in one transaction: if C is still at version V, drop S's replica and queue its deletion; if a
   write bumped the version meanwhile, D's copy is stale and is dropped instead, S keeps its own.

So at every moment the chunk has at least as many current replicas as before, and an interrupted move
leaves either the old placement or the new one plus an extra copy that the garbage queue removes.
Two jobs never work on one chunk at a time (`inflight`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from sqlalchemy import Connection, insert, select

from dfs.errors import DfsError
from dfs.master import garbage, replication
from dfs.master.replication import replicate_order
from dfs.master.schema import chunks, replicas
from dfs.master.schema import garbage as garbage_table
from dfs.master.servers import ServerInfo

if TYPE_CHECKING:
    from dfs.master.app import Master

log = logging.getLogger("master.moves")

#: A copy dropped from a server this recently may still be deleted there by a heartbeat reply in flight:
#: do not copy the same chunk back onto it meanwhile (only without master/replication.py's replicator,
#: which guards against that itself).
RECENT_DROP_SECONDS = 15.0
COPY_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=120.0)


class Skip(Exception):
    """A move that must not happen now (lease, changed chunk, busy target); not a failure."""


@dataclass(slots=True)
class Outcome:
    chunk_id: int
    source: int | None
    target: int
    length: int = 0
    ok: bool = False
    skipped: bool = False
    reason: str = ""


class Throttle:
    """Keeps the bytes started by time t under `rate * (t - start)`: each copy waits for its slot."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate if rate and rate > 0 else None
        self._next = 0.0

    async def take(self, nbytes: int) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        self._next = max(self._next, now) + nbytes / self.rate
        await asyncio.sleep(self._next - now)


class Mover:
    def __init__(self, master: Master, session: aiohttp.ClientSession) -> None:
        self.m = master
        self.session = session
        self.inflight: set[int] = set()
        self._dropped: dict[tuple[int, int], float] = {}

    # -- bookkeeping ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _claim(self, chunk_id: int) -> AsyncIterator[None]:
        if chunk_id in self.inflight:
            raise Skip(f"chunk {chunk_id} is being moved by another job")
        self.inflight.add(chunk_id)
        try:
            yield
        finally:
            self.inflight.discard(chunk_id)

    def recently_dropped(self, chunk_id: int, server_id: int) -> bool:
        if getattr(self.m, "replicator", None) is not None:
            return False  # copy_replica itself waits out a deletion on its way to the target
        when = self._dropped.get((chunk_id, server_id))
        if when is None:
            return False
        if time.monotonic() - when > RECENT_DROP_SECONDS:
            del self._dropped[(chunk_id, server_id)]
            return False
        return True

    def note_dropped(self, chunk_id: int, server_id: int) -> None:
        self._dropped[(chunk_id, server_id)] = time.monotonic()
        if len(self._dropped) > 100_000:  # forget the old ones now and then
            cutoff = time.monotonic() - RECENT_DROP_SECONDS
            self._dropped = {k: t for k, t in self._dropped.items() if t >= cutoff}

    def leased(self, inode: int, index: int) -> bool:
        return self.m.leases.get(inode, index) is not None

    def pick_target(self, chunk_id: int, holders: set[int], length: int, placed: dict[int, int],
                    taken: dict[int, int] | None = None,
                    garbage_keys: set[tuple[int, int]] | None = None) -> int | None:
        """The least utilised live server in service that holds nothing of the chunk and has room for it.

        `placed` is estimated bytes per server (master/layout.py), `taken` bytes already promised to
        servers by the caller's other moves; the choice adds `length` to `taken`.
        """
        taken = {} if taken is None else taken
        candidates = [s for s in self.m.registry.live()
                      if s.accepts_chunks and s.id not in holders
                      and (garbage_keys is None or (chunk_id, s.id) not in garbage_keys)
                      and not self.recently_dropped(chunk_id, s.id)
                      and s.free - taken.get(s.id, 0) >= length
                      and placed.get(s.id, 0) + taken.get(s.id, 0) + length <= s.capacity]
        if not candidates:
            return None
        best = min(candidates, key=lambda s: ((placed.get(s.id, 0) + taken.get(s.id, 0)) / max(1, s.capacity), s.id))
        taken[best.id] = taken.get(best.id, 0) + length
        return best.id

    # -- one move or copy ----------------------------------------------------------------------------

    async def move(self, chunk_id: int, version: int, source: int | None, target: int,
                   throttle: Throttle | None = None, length_hint: int = 0,
                   stopping: Callable[[], bool] | None = None) -> Outcome:
        """Copy chunk `chunk_id` to `target`, then drop the replica on `source` (None: only add a copy).

        `stopping()` is asked after waiting for the throttle: a job being stopped starts no new copy.
        """
        outcome = Outcome(chunk_id, source, target)
        try:
            async with self._claim(chunk_id):
                origin = await self._check(chunk_id, version, source, target)
                if throttle is not None:
                    await throttle.take(length_hint or self.m.config.chunk_size)
                    if stopping is not None and stopping():
                        raise Skip("the job is stopping")
                    origin = await self._check(chunk_id, version, source, target)
                outcome.length, recorded = await self._copy(chunk_id, version, origin, target)
                await self._finish(chunk_id, version, source, target, recorded)
        except Skip as why:
            outcome.skipped, outcome.reason = True, str(why)
            log.info("chunk %d: move %s -> %d skipped: %s", chunk_id, source, target, why)
            return outcome
        except DfsError as err:
            outcome.reason = err.message
            log.warning("chunk %d v%d: copy %s -> %d failed: %s %s", chunk_id, version, source, target, err.code,
                        err.message)
            return outcome
        except Exception as exc:  # one bad chunk never stops the job that asked
            outcome.reason = f"{type(exc).__name__}: {exc}"
            log.exception("chunk %d v%d: move %s -> %d failed", chunk_id, version, source, target)
            return outcome
        outcome.ok = True
        verb = "moved" if source is not None else "copied"
        log.info("chunk %d v%d %s %s-> %d (%d bytes)", chunk_id, version, verb,
                 f"{source} " if source is not None else "", target, outcome.length)
        return outcome

    async def _check(self, chunk_id: int, version: int, source: int | None, target: int) -> int:
        """The server to copy from if the move may go ahead; Skip otherwise."""
        registry = self.m.registry
        dest = registry.servers.get(target)
        if dest is None or not registry.is_live(target) or not dest.accepts_chunks:
            raise Skip(f"target {target} is not a live server in service")
        if self.recently_dropped(chunk_id, target):
            raise Skip(f"a copy on {target} was dropped moments ago")

        def txn(conn: Connection) -> tuple[int, int, dict[int, int], bool]:
            row = conn.execute(select(chunks.c.inode, chunks.c.idx, chunks.c.version)
                               .where(chunks.c.chunk_id == chunk_id)).first()
            if row is None:
                raise Skip("the chunk no longer exists")
            if row.version != version:
                raise Skip(f"the chunk is now at v{row.version}")
            reps = {r.server_id: r.version for r in conn.execute(
                select(replicas.c.server_id, replicas.c.version).where(replicas.c.chunk_id == chunk_id))}
            queued = conn.scalar(select(garbage_table.c.id).where(garbage_table.c.chunk_id == chunk_id,
                                                                  garbage_table.c.server_id == target).limit(1))
            return row.inode, row.idx, reps, queued is not None

        inode, index, reps, queued = await self.m.db.run_read(txn)
        if target in reps:
            raise Skip(f"server {target} already holds the chunk")
        if queued:
            raise Skip(f"server {target} has a copy of the chunk queued for deletion")
        if source is not None and reps.get(source) != version:
            raise Skip(f"server {source} no longer holds v{version}")
        if self.leased(inode, index):
            raise Skip(f"inode {inode} slot {index} has an active write lease")
        current = [sid for sid, v in reps.items() if v == version and registry.is_live(sid)]
        if not current:
            raise Skip("no live replica to copy from")
        origin = source if source in current else min(
            current, key=lambda sid: (registry.servers[sid].utilisation(), sid))
        return origin

    async def _copy(self, chunk_id: int, version: int, origin: int, target: int) -> tuple[int, bool]:
        registry = self.m.registry
        source_info, target_info = registry.servers[origin], registry.servers[target]
        return await copy_via(replication, self.m, self.session, chunk_id, version, source_info, target_info)

    async def _finish(self, chunk_id: int, version: int, source: int | None, target: int, recorded: bool) -> None:
        """Commit the new placement and drop the source (or, if a write got in, drop the new copy).

        `recorded`: the copy step recorded the target's replica itself; if that record is gone by now
        (dropped by another job), the source stays.
        """
        wall = time.time()
        grace = self.m.config.gc_grace

        def txn(conn: Connection) -> str:
            row = conn.execute(select(chunks.c.version).where(chunks.c.chunk_id == chunk_id)).first()
            reps = {r.server_id: r.version for r in conn.execute(
                select(replicas.c.server_id, replicas.c.version).where(replicas.c.chunk_id == chunk_id))}
            if row is None or row.version != version:
                if target not in reps:  # the copy landed unrecorded: delete it
                    garbage.queue(conn, [(chunk_id, target, version)], wall + grace)
                elif row is None or reps[target] < row.version:  # recorded, then left behind by a write
                    garbage.drop_replicas(conn, [(chunk_id, target, reps[target])], wall + grace)
                else:  # a lease granted after the copy took it into its chain: a full replica, keep it
                    return "kept"
                return "changed"
            if target not in reps:
                if recorded:
                    return "lost"
                conn.execute(insert(replicas).values(chunk_id=chunk_id, server_id=target, version=version))
            if source is not None and reps.get(source) == version:
                garbage.drop_replicas(conn, [(chunk_id, source, version)], wall + grace)
            return "ok"

        state = await self.m.db.run_write(txn)
        if state == "lost":
            raise Skip("the new copy was dropped by another job before the move committed; the source stays")
        if state == "kept":
            raise Skip("a write began right after the copy; the source stays too")
        if state == "changed":
            self.note_dropped(chunk_id, target)
            raise Skip("a write changed the chunk during the copy; the new copy was dropped")
        if source is not None:
            self.note_dropped(chunk_id, source)

    async def drop(self, chunk_id: int, version: int, server_id: int, *, keep_at_least: int = 1) -> bool:
        """Drop one replica (queue its deletion) if at least `keep_at_least` other live current copies remain."""
        registry = self.m.registry
        wall = time.time()

        def txn(conn: Connection) -> bool:
            row = conn.execute(select(chunks.c.version).where(chunks.c.chunk_id == chunk_id)).first()
            if row is None or row.version != version:
                return False
            reps = {r.server_id: r.version for r in conn.execute(
                select(replicas.c.server_id, replicas.c.version).where(replicas.c.chunk_id == chunk_id))}
            if reps.get(server_id) != version:
                return False
            others = [sid for sid, v in reps.items() if v == version and sid != server_id and registry.is_live(sid)]
            if len(others) < keep_at_least:
                return False
            garbage.drop_replicas(conn, [(chunk_id, server_id, version)], wall + self.m.config.gc_grace)
            return True

        if chunk_id in self.inflight:
            return False
        dropped = await self.m.db.run_write(txn)
        if dropped:
            self.note_dropped(chunk_id, server_id)
            log.info("chunk %d v%d: replica on server %d dropped", chunk_id, version, server_id)
        return dropped


async def copy_via(replication: object | None, master: Master, session: aiohttp.ClientSession, chunk_id: int,
                   version: int, source: ServerInfo, target: ServerInfo) -> tuple[int, bool]:
    """Have `target` pull the chunk from `source` and verify it: (bytes copied, whether it was recorded).

    Uses `copy_replica` of master/replication.py when the master runs its replicator, else asks the target
    directly (`POST /chunks/{id}/replicate`, chunkserver/copier.py). Either way the caller records the
    placement (`Mover._finish` accepts a replica that `copy_replica` already recorded).
    """
    copy = getattr(replication, "copy_replica", None) if replication is not None else None
    if copy is not None and getattr(master, "replicator", None) is not None:
        try:  # rate 0: no cap of its own, the admin jobs pace themselves (Throttle)
            return int(await copy(master, chunk_id, version, source, target, rate=0)), True
        except DfsError as err:
            if err.errno in (errno.EBUSY, errno.ESTALE, errno.EAGAIN):
                raise Skip(err.message) from None  # a lease, a write, a deletion in flight: not now
            raise
    url = f"{target.url}/chunks/{chunk_id}/replicate"
    try:
        async with session.post(url, json=replicate_order(master.config, chunk_id, version, source.url),
                                headers=master.config.token_header("replicate", chunk_id, version),
                                timeout=COPY_TIMEOUT) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise DfsError.from_json(resp.status, body)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise DfsError(errno.EIO, f"chunk {chunk_id}: copy to {target.url} failed: {exc or type(exc).__name__}") \
            from None
    if body.get("version") != version:
        raise DfsError(errno.ESTALE, f"chunk {chunk_id}: {target.url} installed v{body.get('version')}, not v{version}")
    return int(body.get("length") or 0), False
