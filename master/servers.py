"""The chunkserver registry: registration with a chunk report, heartbeats, liveness, statfs figures.

Liveness is kept in memory on the monotonic clock: a heartbeat time stored in the database would
survive a master restart and say nothing about the present. After a restart every known server is
"unknown" (not live) until it heartbeats or registers again; one still unknown a dead timeout after
the master started is dead.

States: live; unknown (after a master restart); maintenance (it said goodbye on a graceful stop: not
live, but its replicas count as present, so no re-replication storm while it restarts; dead once
`maintenance_timeout` passes; kept across master restarts as servers.state + the goodbye time); dead.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from dfs.master import garbage
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.schema import chunks, inodes, replicas, servers

log = logging.getLogger("master.servers")

_BATCH = 500
#: At most this many deletions go out in one heartbeat reply; the rest wait for the next.
MAX_DELETES_PER_HEARTBEAT = 10_000
FILES_COUNT_TTL = 5.0  # seconds statfs reuses its count of inodes
BAD_PROBLEMS = ("corrupt", "missing", "stale", "unreachable")


@dataclass(slots=True)
class ServerInfo:
    id: int
    uuid: str
    url: str
    capacity: int = 0
    used: int = 0
    free: int = 0
    last_seen: float | None = None  # time.monotonic() of the last register/heartbeat
    dead: bool = False  # declared dead: must register again before it counts
    reserved: int = 0  # bytes of new chunks placed here since its last heartbeat (ordering only)
    admin_state: str = "normal"  # "normal", "draining" or "decommissioned" (master/decommission.py)
    maintenance_until: float | None = None  # time.monotonic() until which a graceful stop is waited for
    load: int = 0  # requests in progress, from its last heartbeat
    beats: int = 0  # heartbeats received since this master started
    deleting: frozenset[int] = field(default_factory=frozenset)  # chunk ids told to delete in the last reply

    @property
    def accepts_chunks(self) -> bool:
        """A draining or decommissioned server gets no new replicas (it may still serve reads)."""
        return self.admin_state == "normal"

    def utilisation(self) -> float:
        if self.capacity <= 0:
            return float("inf")
        return (self.used + self.reserved) / self.capacity

    @property
    def state(self) -> str:
        if self.dead:
            return "dead"
        if self.maintenance_until is not None:
            return "maintenance"
        return "live" if self.last_seen is not None else "unknown"


class Registry:
    def __init__(self, db: Database, config: MasterConfig) -> None:
        self.db = db
        self.config = config
        self.servers: dict[int, ServerInfo] = {}
        self._uuids: dict[str, int] = {}
        #: Recent bad-replica reports (chunk_id, server_id, version, problem), newest last, for `dfs admin status`.
        self.recent_bad: deque[tuple[int, int, int, str]] = deque(maxlen=10_000)
        self.started = time.monotonic()
        self._files = 0
        self._files_counted_at = -FILES_COUNT_TTL
        #: chunk id -> server ids that reported it pending at its current version while holding its last
        #: copy (kept, not dropped): master/recovery.py decides.
        self.suspects: dict[int, set[int]] = {}
        #: Called (no arguments) when placement health may have changed: a server came, went or reported
        #: bad replicas. Re-replication subscribes to start a round at once.
        self.listeners: list[Callable[[], None]] = []

    def changed(self) -> None:
        for listener in self.listeners:
            listener()

    async def load(self) -> None:
        """Know every server of the database (none live yet)."""
        rows = await self.db.run_read(lambda conn: conn.execute(select(servers)).all())
        for row in rows:
            info = ServerInfo(row.id, row.uuid, row.url, row.capacity, row.used, row.free)
            if row.state == "maintenance":  # said goodbye before our restart: wait for the rest of its time
                left = self.config.maintenance_timeout - (time.time() - row.last_heartbeat)
                info.maintenance_until = time.monotonic() + max(0.0, left)
            self._remember(info)

    def _remember(self, info: ServerInfo) -> None:
        self.servers[info.id] = info
        self._uuids[info.uuid] = info.id

    # -- liveness -------------------------------------------------------------------------------

    def is_live(self, server_id: int, now: float | None = None) -> bool:
        info = self.servers.get(server_id)
        return info is not None and self._live(info, time.monotonic() if now is None else now)

    def _live(self, info: ServerInfo, now: float) -> bool:
        return (not info.dead and info.maintenance_until is None and info.last_seen is not None
                and now - info.last_seen <= self.config.dead_timeout)

    def in_maintenance(self) -> list[ServerInfo]:
        return [info for info in self.servers.values() if not info.dead and info.maintenance_until is not None]

    def settled(self) -> bool:
        """False during the first dead timeout after a master start, while servers are still coming back."""
        return time.monotonic() - self.started > self.config.dead_timeout

    def live(self) -> list[ServerInfo]:
        now = time.monotonic()
        return [info for info in self.servers.values() if self._live(info, now)]

    def url(self, server_id: int) -> str | None:
        info = self.servers.get(server_id)
        return info.url if info else None

    async def check_dead(self) -> list[ServerInfo]:
        """Declare dead the servers silent past the dead timeout; returns the newly dead ones."""
        now = time.monotonic()
        newly = []
        for info in self.servers.values():
            if info.dead:
                continue
            if info.maintenance_until is not None:
                if now > info.maintenance_until:
                    log.warning("chunkserver %d (%s) is dead: not back from maintenance in %.0f s", info.id,
                                info.url, self.config.maintenance_timeout)
                    newly.append(info)
            elif info.last_seen is not None and now - info.last_seen > self.config.dead_timeout:
                log.warning("chunkserver %d (%s) is dead: no heartbeat for %.1f s", info.id, info.url,
                            now - info.last_seen)
                newly.append(info)
            elif info.last_seen is None and self.settled():
                log.warning("chunkserver %d (%s) is dead: not back since the master started", info.id, info.url)
                newly.append(info)
        for info in newly:
            info.dead, info.maintenance_until = True, None
        if newly:
            ids = [i.id for i in newly]
            await self.db.run_write(
                lambda conn: conn.execute(update(servers).where(servers.c.id.in_(ids)).values(state="dead")))
            self.changed()
        return newly

    async def goodbye(self, server_id: int) -> None:
        """A chunkserver stops gracefully: not live, but waited for `maintenance_timeout` seconds."""
        info = self.servers.get(server_id)
        if info is None or info.dead:
            return
        info.maintenance_until = time.monotonic() + self.config.maintenance_timeout
        wall = time.time()
        await self.db.run_write(lambda conn: conn.execute(
            update(servers).where(servers.c.id == server_id).values(state="maintenance", last_heartbeat=wall)))
        log.info("chunkserver %d (%s) stops for maintenance: waiting up to %.0f s for its return", server_id,
                 info.url, self.config.maintenance_timeout)
        self.changed()

    # -- registration ---------------------------------------------------------------------------

    async def register(self, uuid: str, url: str, capacity: int, used: int, free: int,
                       report: list[tuple[int, int, bool]]) -> dict[str, Any]:
        """Upsert the server and reconcile its chunk report `(chunk_id, version, pending)`."""

        def txn(conn: Connection) -> tuple[int, dict[str, Any]]:
            wall = time.time()
            server_id = conn.scalar(select(servers.c.id).where(servers.c.uuid == uuid))
            values = {"url": url, "capacity": capacity, "used": used, "free": free, "state": "live",
                      "last_heartbeat": wall}
            if server_id is None:
                result = conn.execute(insert(servers).values(uuid=uuid, **values))
                server_id = int(result.inserted_primary_key[0])
            else:
                conn.execute(update(servers).where(servers.c.id == server_id).values(**values))
            counts = self._reconcile(conn, server_id, report, wall)
            return server_id, counts

        server_id, counts = await self.db.run_write(txn)
        info = self.servers.get(server_id) or ServerInfo(server_id, uuid, url)
        info.url, info.capacity, info.used, info.free = url, capacity, used, free
        info.last_seen, info.dead, info.reserved = time.monotonic(), False, 0
        info.maintenance_until, info.deleting = None, frozenset()
        self._remember(info)
        for cid in counts.pop("kept_pending"):
            self.suspects.setdefault(cid, set()).add(server_id)
        log.info("chunkserver %d (%s) registered with %d chunks (%d confirmed, %d to delete, %d lost)",
                 server_id, url, len(report), counts["confirmed"], counts["delete"], counts["lost"])
        self.changed()
        return {"server_id": server_id, "chunk_size": self.config.chunk_size,
                "heartbeat_interval": self.config.heartbeat_interval}

    def _reconcile(self, conn: Connection, server_id: int, report: list[tuple[int, int, bool]],
                         wall: float) -> dict[str, Any]:
        known: dict[int, int] = {}  # chunk_id -> version the master has for this server's replica
        for row in conn.execute(select(replicas.c.chunk_id, replicas.c.version)
                                .where(replicas.c.server_id == server_id)):
            known[row.chunk_id] = row.version
        ids = [cid for cid, _, _ in report]
        current: dict[int, int] = {}  # chunk_id -> the chunk's version
        for start in range(0, len(ids), _BATCH):
            result = conn.execute(select(chunks.c.chunk_id, chunks.c.version)
                                  .where(chunks.c.chunk_id.in_(ids[start:start + _BATCH])))
            current.update({r.chunk_id: r.version for r in result})
        queued = garbage.pending_for(conn, server_id)

        to_delete: list[tuple[int, int, int]] = []
        adopt: list[dict[str, int]] = []
        newer: list[tuple[int, int]] = []
        confirmed = 0
        seen: set[int] = set()
        kept_pending: list[int] = []
        for cid, version, pending in report:
            seen.add(cid)
            chunk_version = current.get(cid)
            if pending and version == chunk_version and cid not in queued \
                    and not self._others_hold(conn, cid, server_id, version):
                # An unfinished write and no other copy at this version: it may be all that is left
                # (a writer died mid-write). Keep it; lease recovery (master/recovery.py) decides.
                kept_pending.append(cid)
                if known.get(cid) == version:
                    confirmed += 1
                else:
                    adopt.append({"chunk_id": cid, "server_id": server_id, "version": version})
            elif chunk_version is None or pending or version < chunk_version:
                to_delete.append((cid, server_id, version))
            elif version > chunk_version:
                # The master lost a version bump (e.g. restored database): the newest copy wins.
                newer.append((cid, version))
                adopt.append({"chunk_id": cid, "server_id": server_id, "version": version})
            elif known.get(cid) == version:
                confirmed += 1
            elif cid in queued:  # dropped earlier (reported bad): let the queued deletion happen
                to_delete.append((cid, server_id, version))
            else:  # a good copy the master did not list: count it
                adopt.append({"chunk_id": cid, "server_id": server_id, "version": version})
        lost = [(cid, server_id, version) for cid, version in known.items() if cid not in seen]

        stale_known = [item for item in to_delete if item[0] in known]
        garbage.drop_replicas(conn, stale_known, wall)
        garbage.queue(conn, [item for item in to_delete if item[0] not in known], wall)
        # Absent from the disk: forget them, there is nothing to delete.
        garbage.forget_replicas(conn, [(cid, sid) for cid, sid, _ in lost])
        for cid, version in newer:
            conn.execute(update(chunks).where(chunks.c.chunk_id == cid).values(version=version))
        if adopt:
            self._upsert_replicas(conn, adopt, known)
        return {"confirmed": confirmed + len(adopt), "delete": len(to_delete), "lost": len(lost),
                "kept_pending": kept_pending}

    @staticmethod
    def _others_hold(conn: Connection, chunk_id: int, server_id: int, version: int) -> bool:
        return conn.scalar(select(replicas.c.server_id).where(
            replicas.c.chunk_id == chunk_id, replicas.c.version == version,
            replicas.c.server_id != server_id).limit(1)) is not None

    def _upsert_replicas(self, conn: Connection, rows: list[dict[str, int]], known: dict[int, int]) -> None:
        fresh = [r for r in rows if r["chunk_id"] not in known]
        for r in rows:
            if r["chunk_id"] in known:
                conn.execute(update(replicas).where(replicas.c.chunk_id == r["chunk_id"],
                                                    replicas.c.server_id == r["server_id"])
                             .values(version=r["version"]))
        if fresh:
            conn.execute(insert(replicas), fresh)

    # -- heartbeats -----------------------------------------------------------------------------

    async def heartbeat(self, server_id: int, capacity: int, used: int, free: int,
                        bad: list[tuple[int, int, str]], load: int = 0) -> dict[str, Any]:
        info = self.servers.get(server_id)
        now = time.monotonic()
        if info is not None and info.maintenance_until is not None:  # back from a stop: a full report, please
            log.info("chunkserver %d (%s) is back from maintenance; asked to register again", server_id, info.url)
            return {"delete": [], "reregister": True}
        if info is None or info.dead or (info.last_seen is not None
                                         and now - info.last_seen > self.config.dead_timeout):
            if info is not None and not info.dead:
                info.dead = True
                log.warning("chunkserver %d (%s) was silent past the dead timeout", server_id, info.url)
            log.info("chunkserver %d asked to register again", server_id)
            return {"delete": [], "reregister": True}
        if info.last_seen is None:
            log.info("chunkserver %d (%s) is back after a master restart", server_id, info.url)
        info.capacity, info.used, info.free, info.last_seen, info.reserved = capacity, used, free, now, 0
        info.load, info.beats = load, info.beats + 1
        # The reply to the previous beat has been applied by now (a server beats one at a time).
        info.deleting = frozenset()

        def txn(conn: Connection) -> list[dict[str, int]]:
            wall = time.time()
            conn.execute(update(servers).where(servers.c.id == server_id).values(
          capacity=capacity, used=used, free=free, state="live", last_heartbeat=wall))
            if bad:
                drop_bad(conn, [(cid, server_id, version) for cid, version, _ in bad], wall)
            return garbage.take_due(conn, server_id, wall, MAX_DELETES_PER_HEARTBEAT)

        delete = await self.db.run_write(txn)
        info.deleting = frozenset(d["chunk_id"] for d in delete)
        if bad:
            self.changed()
        self.recent_bad.extend((cid, server_id, version, problem) for cid, version, problem in bad)
        for cid, version, problem in bad:
            log.warning("chunkserver %d (%s) reports chunk %d v%d %s", server_id, info.url, cid, version, problem)
        if delete:
            log.info("chunkserver %d (%s) told to delete %d chunks", server_id, info.url, len(delete))
        return {"delete": delete, "reregister": False}

    # -- figures --------------------------------------------------------------------------------

    async def statfs(self) -> dict[str, Any]:
        live = self.live()
        now = time.monotonic()
        if now - self._files_counted_at > FILES_COUNT_TTL:  # a count(*) is a scan: not for every df
            self._files = await self.db.run_read(lambda conn: conn.scalar(select(func.count()).select_from(inodes)),
                                                 snapshot=False, background=True)
            self._files_counted_at = now
        files = self._files
        return {"total": sum(s.capacity for s in live), "used": sum(s.used for s in live),
                "free": sum(s.free for s in live), "files": int(files or 0),
                "chunk_size": self.config.chunk_size, "servers_live": len(live)}

    def summary(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"id": s.id, "uuid": s.uuid, "url": s.url, "state": "live" if self._live(s, now) else s.state,
                 "capacity": s.capacity, "used": s.used, "free": s.free, "load": s.load,
                 "maintenance_left": None if s.maintenance_until is None or s.dead
                 else round(max(0.0, s.maintenance_until - now), 1),
                 "heartbeat_age": None if s.last_seen is None else round(now - s.last_seen, 1)}
                for s in sorted(self.servers.values(), key=lambda s: s.id)]


def drop_bad(conn: Connection, items: list[tuple[int, int, int]], wall: float) -> int:
    """Replicas `(chunk_id, server_id, version)` found bad: forget them and queue their deletion.

    A report about an older version than the master's replica is out of date and ignored.
    """
    doomed: list[tuple[int, int, int]] = []
    for cid, sid, version in items:
        current = conn.scalar(select(replicas.c.version).where(replicas.c.chunk_id == cid,
                                                                replicas.c.server_id == sid))
        if current is not None and version >= current:
            doomed.append((cid, sid, version))
    garbage.drop_replicas(conn, doomed, wall)
    return len(doomed)
