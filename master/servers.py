"""The chunkserver registry: registration with a chunk report, heartbeats, liveness, statfs figures.

Liveness is kept in memory on the monotonic clock: a heartbeat time stored in the database would
survive a master restart and say nothing about the present. After a restart every known server is
"unknown" (not live) until it heartbeats or registers again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from master import garbage
from master.config import MasterConfig
from master.db import Database
from master.schema import chunks, inodes, replicas, servers

log = logging.getLogger("master.servers")

_BATCH = 500
#: At most this many deletions go out in one heartbeat reply; the rest wait for the next.
MAX_DELETES_PER_HEARTBEAT = 10_000
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

    def utilisation(self) -> float:
        if self.capacity <= 0:
            return float("inf")
        return (self.used + self.reserved) / self.capacity

    @property
    def state(self) -> str:
        if self.dead:
            return "dead"
        return "live" if self.last_seen is not None else "unknown"


class Registry:
    def __init__(self, db: Database, config: MasterConfig) -> None:
        self.db = db
        self.config = config
        self.servers: dict[int, ServerInfo] = {}
        self._uuids: dict[str, int] = {}

    async def load(self) -> None:
        """Know every server of the database (none live yet)."""
        rows = await self.db.run_read(lambda conn: conn.execute(select(servers)).all())
        for row in rows:
            self._remember(ServerInfo(row.id, row.uuid, row.url, row.capacity, row.used, row.free))

    def _remember(self, info: ServerInfo) -> None:
        self.servers[info.id] = info
        self._uuids[info.uuid] = info.id

    # -- liveness -------------------------------------------------------------------------------

    def is_live(self, server_id: int, now: float | None = None) -> bool:
        info = self.servers.get(server_id)
        return info is not None and self._live(info, time.monotonic() if now is None else now)

    def _live(self, info: ServerInfo, now: float) -> bool:
        return not info.dead and info.last_seen is not None and now - info.last_seen <= self.config.dead_timeout

    def live(self) -> list[ServerInfo]:
        now = time.monotonic()
        return [info for info in self.servers.values() if self._live(info, now)]

    def url(self, server_id: int) -> str | None:
        info = self.servers.get(server_id)
        return info.url if info else None

    async def check_dead(self) -> list[ServerInfo]:
        """Declare dead the servers silent past the dead timeout; returns the newly dead ones."""
        now = time.monotonic()
        newly = [info for info in self.servers.values()
                 if not info.dead and info.last_seen is not None and now - info.last_seen > self.config.dead_timeout]
        for info in newly:
            info.dead = True
            log.warning("chunkserver %d (%s) is dead: no heartbeat for %.0f s", info.id, info.url,
                        now - info.last_seen if info.last_seen else 0)
        if newly:
            ids = [i.id for i in newly]
            await self.db.run_write(
                lambda conn: conn.execute(update(servers).where(servers.c.id.in_(ids)).values(state="dead")))
        return newly

    # -- registration ---------------------------------------------------------------------------

    async def register(self, uuid: str, url: str, capacity: int, used: int, free: int,
                       report: list[tuple[int, int, bool]]) -> dict[str, Any]:
        """Upsert the server and reconcile its chunk report `(chunk_id, version, pending)`."""

        def txn(conn: Connection) -> tuple[int, dict[str, int]]:
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
        self._remember(info)
        log.info("chunkserver %d (%s) registered with %d chunks (%d confirmed, %d to delete, %d lost)",
                 server_id, url, len(report), counts["confirmed"], counts["delete"], counts["lost"])
        return {"server_id": server_id, "chunk_size": self.config.chunk_size,
                "heartbeat_interval": self.config.heartbeat_interval}

    def _reconcile(self, conn: Connection, server_id: int, report: list[tuple[int, int, bool]],
                         wall: float) -> dict[str, int]:
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
        for cid, version, pending in report:
            seen.add(cid)
            chunk_version = current.get(cid)
            if chunk_version is None or pending or version < chunk_version:
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
        return {"confirmed": confirmed + len(adopt), "delete": len(to_delete), "lost": len(lost)}

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
                        bad: list[tuple[int, int, str]]) -> dict[str, Any]:
        info = self.servers.get(server_id)
        now = time.monotonic()
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

        def txn(conn: Connection) -> list[dict[str, int]]:
            wall = time.time()
            conn.execute(update(servers).where(servers.c.id == server_id).values(
          capacity=capacity, used=used, free=free, state="live", last_heartbeat=wall))
            if bad:
                drop_bad(conn, [(cid, server_id, version) for cid, version, _ in bad], wall)
            return garbage.take_due(conn, server_id, wall, MAX_DELETES_PER_HEARTBEAT)

        delete = await self.db.run_write(txn)
        for cid, version, problem in bad:
            log.warning("chunkserver %d (%s) reports chunk %d v%d %s", server_id, info.url, cid, version, problem)
        if delete:
            log.info("chunkserver %d (%s) told to delete %d chunks", server_id, info.url, len(delete))
        return {"delete": delete, "reregister": False}

    # -- figures --------------------------------------------------------------------------------

    async def statfs(self) -> dict[str, Any]:
        live = self.live()
        files = await self.db.run_read(lambda conn: conn.scalar(select(func.count()).select_from(inodes)),
                                       snapshot=False)
        return {"total": sum(s.capacity for s in live), "used": sum(s.used for s in live),
                "free": sum(s.free for s in live), "files": int(files or 0),
                "chunk_size": self.config.chunk_size, "servers_live": len(live)}

    def summary(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"id": s.id, "uuid": s.uuid, "url": s.url, "state": "live" if self._live(s, now) else s.state,
                 "capacity": s.capacity, "used": s.used, "free": s.free,
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
