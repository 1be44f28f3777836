"""Data placement (docs/PROTOCOL.md "Master: data placement"): chunk locations, write leases,
commits of a write's size, and reports of bad replicas.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import stat
import time
from typing import Any

import aiohttp
from sqlalchemy import Connection, and_, bindparam, delete, insert, select, update

from dfs.client.chunkio import ChunkIO
from dfs.errors import DfsError
from dfs.master import garbage, resident
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import Grant, LeaseTable
from dfs.master.namespace import get_inode, to_attr
from dfs.master.permissions import R_OK, ROOT, W_OK, Caller, kill_suid, require
from dfs.master.prepared import Prepared
from dfs.master.schema import chunks, inodes, replicas
from dfs.master.servers import BAD_PROBLEMS, Registry, ServerInfo, drop_bad
from dfs.protocol import MAX_FILE_SIZE, Attr, ChunkLocation, Lease, Replica

log = logging.getLogger("master.placement")

MAX_CHUNKS_PER_REQUEST = 100_000

# The statements of every small file's write (lease, commit), prepared once (master/prepared.py).
_SLOT = Prepared(select(chunks.c.chunk_id, chunks.c.version)
                 .where(chunks.c.inode == bindparam("inode"), chunks.c.idx == bindparam("idx")))
_NEW_CHUNK = Prepared(insert(chunks).values(inode=bindparam("inode"), idx=bindparam("idx"), version=1)
                      .returning(chunks.c.chunk_id))
_NEW_REPLICA = Prepared(insert(replicas).values(chunk_id=bindparam("chunk_id"), server_id=bindparam("server_id"),
                                                version=1))
# Every open for reading asks for its first chunks' locations (with its getattr): building this select
# anew cost ~150 µs a call.
_LOCATIONS = Prepared(
    select(chunks.c.idx, chunks.c.chunk_id, chunks.c.version, replicas.c.server_id)
    .select_from(chunks.outerjoin(replicas, and_(replicas.c.chunk_id == chunks.c.chunk_id,
                                                 replicas.c.version == chunks.c.version)))
    .where(chunks.c.inode == bindparam("inode"), chunks.c.idx >= bindparam("first"), chunks.c.idx < bindparam("end"))
    .order_by(chunks.c.idx))
_COMMIT = Prepared(update(inodes).where(inodes.c.id == bindparam("inode")).values(
    size=bindparam("size"), mtime_ns=bindparam("mtime_ns"), ctime_ns=bindparam("ctime_ns"), mode=bindparam("mode"),
    atime_ns=bindparam("atime_ns")))


async def _no_report(loc: ChunkLocation, replica: Replica, problem: str) -> None:
    """The master's own chunk writes report nothing to itself: a failure is logged where it happens."""


#: chunk slot index -> (chunk id, version, ids of the servers with a replica at that version)
Slots = dict[int, tuple[int, int, list[int]]]


def _slots(conn: Connection, inode: int, first: int, count: int) -> Slots:
    slots: Slots = {}
    for r in _LOCATIONS.rows(conn, {"inode": inode, "first": first, "end": first + count}):
        slot = slots.setdefault(r.idx, (r.chunk_id, r.version, []))
        if r.server_id is not None:
            slot[2].append(r.server_id)
    return slots


def _writable(row: Any) -> None:
    if stat.S_ISDIR(row.mode):
        raise DfsError(errno.EISDIR, f"inode {row.id} is a directory")
    if not stat.S_ISREG(row.mode):
        raise DfsError(errno.EINVAL, f"inode {row.id} is not a regular file")


class Placement:
    def __init__(self, db: Database, config: MasterConfig, registry: Registry, leases: LeaseTable,
                 session: aiohttp.ClientSession) -> None:
        self.db = db
        self.config = config
        self.registry = registry
        self.leases = leases
        self._lock = asyncio.Lock()  # one grant decision at a time
        self._chunkio = ChunkIO(session, _no_report, None)  # resident bytes moving into a chunk

    @staticmethod
    def _by_load(live: dict[int, ServerInfo], ids: list[int]) -> list[ServerInfo]:
        """Live servers among `ids`, least utilised first."""
        return sorted((live[i] for i in ids if i in live), key=lambda s: (s.utilisation(), s.id))

    def _live(self) -> dict[int, ServerInfo]:
        return {s.id: s for s in self.registry.live()}

    # -- reads ----------------------------------------------------------------------------------

    async def chunks(self, inode: int, first: int, count: int, *, caller: Caller = ROOT) -> dict[str, Any]:
        """Where slots [first, first + count) are; from slot 0 on, also the resident bytes (`resident_b64`)
        that stand for slot 0 while the file has them (master/resident.py)."""
        def txn(conn: Connection) -> tuple[int, Slots, bytes | None]:
            row = get_inode(conn, inode)
            if caller.uid:
                require(caller, row, R_OK)
            return row.size, _slots(conn, inode, first, count), resident.read(conn, inode) if first == 0 else None

        return self._where(*await self.db.run_read(txn, snapshot=False))

    async def open_attr(self, inode: int, slots: int, access: int, *,
                        caller: Caller = ROOT) -> tuple[Attr, dict[str, Any] | None]:
        """An open's getattr (EACCES unless the caller has `access`) and, for a regular file the caller
        may read, what `chunks` answers for its first `slots` slots, in one transaction."""
        def txn(conn: Connection) -> tuple[Attr, tuple[int, Slots, bytes | None] | None]:
            row = get_inode(conn, inode)
            if access:
                require(caller, row, access)
            attr = to_attr(row)
            if not attr.is_file:
                return attr, None
            if caller.uid:
                try:
                    require(caller, row, R_OK)
                except DfsError:  # the caller may not read it: the getattr answers all the same
                    return attr, None
            data = resident.read(conn, inode)
            # resident bytes stand for slot 0: with them, only a wider ask needs the chunks' places
            return attr, (row.size, {} if data is not None and slots == 1 else _slots(conn, inode, 0, slots), data)

        attr, where = await self.db.run_read(txn, snapshot=False)  # as `chunks` reads, and getattr before it
        return attr, None if where is None else self._where(*where)

    def _where(self, size: int, slots: Slots, data: bytes | None) -> dict[str, Any]:
        """A `chunks` answer: the slots' live replicas (least loaded first) with read tokens."""
        live = self._live()
        locations = [
            {"index": idx, "chunk_id": chunk_id, "version": version,
             "servers": [{"id": s.id, "url": s.url} for s in self._by_load(live, ids)],
             "token": self.config.token("read", chunk_id, version)}
            for idx, (chunk_id, version, ids) in slots.items()
        ]
        reply = {"size": size, "chunk_size": self.config.chunk_size, "chunks": locations}
        if data is not None:
            reply["resident_b64"] = base64.b64encode(data).decode("ascii")
        return reply

    # -- leases ---------------------------------------------------------------------------------

    async def lease(self, inode: int, index: int, client: str, exclude: list[int], *,
                    caller: Caller = ROOT) -> dict[str, Any]:
        if index * self.config.chunk_size >= MAX_FILE_SIZE:
            raise DfsError(errno.EFBIG, f"chunk {index} lies past the largest file size {MAX_FILE_SIZE}")
        async with self._lock:
            held = self.leases.get(inode, index)
            if caller.uid:  # every grant and renewal: a chmod since the last one counts
                await self.db.run_write(lambda conn: self._may_write(conn, inode, caller))
            if held is not None:
                if held.client != client:
                    raise DfsError(errno.EBUSY, f"chunk {index} of inode {inode} is being written by another client")
                if not exclude:
                    held.expiry = time.monotonic() + self.config.lease_seconds
                    return self._lease_reply(held)
            live = self._live()

            def txn(conn: Connection) -> tuple[Grant, list[ServerInfo], bytes | None]:
                grant, placed = self._grant(conn, inode, index, client, set(exclude), live)
                return grant, placed, resident.read(conn, inode) if index == 0 else None

            grant, placed, data = await self.db.run_write(txn)
            for s in placed:  # counts until the server's next heartbeat tells its real usage
                s.reserved += self.config.chunk_size
            if placed:
                # routine, one per new file: at INFO it made 98% of a busy master's log
                log.debug("chunk %d (inode %d slot %d) placed on servers %s", grant.chunk_id, inode, index,
                          ",".join(str(s.id) for s in placed))
            self.leases.put(grant)  # while the bytes move too: fsck and re-replication leave the chunk alone
            if data is not None:
                try:
                    await self._absorb(grant, data)
                except BaseException:
                    self.leases.drop_chunk(inode, index)  # the next ask moves them again
                    raise
            return self._lease_reply(grant)

    async def _absorb(self, grant: Grant, data: bytes) -> None:
        """Slot 0 of the file was resident: write its bytes into the chunk just leased for it, on
        every replica and synced, then drop the row, before the writer hears of its lease (its
        writes then land on those bytes, and no reader sees the slot without them). Any failure
        leaves the row, which readers keep using, and asks the writer to try again (EAGAIN)."""
        lease = Lease.from_json(self._lease_reply(grant))
        try:
            failed = await self._chunkio.write(lease, 0, data, sync=True)
        except DfsError as err:
            failed = [f"{lease.servers[0].url} ({err.message})"]
        if failed:
            log.warning("chunk %d v%d: could not move the %d resident bytes of inode %d into it: %s",
                        grant.chunk_id, grant.version, len(data), grant.inode, ", ".join(failed))
            raise DfsError(errno.EAGAIN, f"inode {grant.inode}: its data is moving to chunk {grant.chunk_id}; "
                                         "try again")
        if not await self.db.run_write(lambda conn: resident.drop_if_unchanged(conn, grant.inode, data)):
            raise DfsError(errno.EAGAIN, f"inode {grant.inode}: its data changed while moving to chunk "
                                         f"{grant.chunk_id}; try again")
        log.info("inode %d: %d resident bytes moved into chunk %d v%d", grant.inode, len(data), grant.chunk_id,
                 grant.version)

    async def drop_shadowed(self, inode: int, chunk_id: int) -> bool:
        """fsck's repair of a chunk left in slot 0 by a move of resident bytes that did not finish:
        the resident bytes stand for slot 0 and the chunk is never read, so it is forgotten (its
        replicas queued for deletion) unless it is leased or the file changed meanwhile."""
        async with self._lock:  # no grant (and so no move) of that slot meanwhile
            if self.leases.get(inode, 0) is not None:
                return False

            def txn(conn: Connection) -> bool:
                slot = _SLOT.first(conn, {"inode": inode, "idx": 0})
                if slot is None or slot.chunk_id != chunk_id or resident.read(conn, inode) is None:
                    return False
                held = conn.execute(select(replicas.c.server_id, replicas.c.version)
                                    .where(replicas.c.chunk_id == chunk_id)).all()
                garbage.drop_replicas(conn, [(chunk_id, sid, version) for sid, version in held],
                                      time.time() + self.config.gc_grace)
                conn.execute(delete(chunks).where(chunks.c.chunk_id == chunk_id))
                return True

            return bool(await self.db.run_write(txn))

    def _lease_reply(self, grant: Grant) -> dict[str, Any]:
        """The lease with its tokens: `token` to write the chunk at its version (for the lease's
        lifetime), `read_token` to read back what was written."""
        reply = grant.to_json(time.monotonic())
        reply["token"] = self.config.token("write", grant.chunk_id, grant.version, lifetime=reply["expires_in"])
        reply["read_token"] = self.config.token("read", grant.chunk_id, grant.version)
        return reply

    @staticmethod
    def _may_write(conn: Connection, inode: int, caller: Caller) -> None:
        """A user's write: needs write permission, and drops set-user-ID as Linux does."""
        row = get_inode(conn, inode)
        _writable(row)
        require(caller, row, W_OK)
        killed = kill_suid(caller, row.mode)
        if killed is not None:
            conn.execute(update(inodes).where(inodes.c.id == inode).values(mode=killed, ctime_ns=time.time_ns()))

    def _grant(self, conn: Connection, inode: int, index: int, client: str, exclude: set[int],
               live: dict[int, ServerInfo]) -> tuple[Grant, list[ServerInfo]]:
        """Runs in the database's thread: reads `live`, changes nothing in memory."""
        row = get_inode(conn, inode)
        _writable(row)
        wall = time.time()
        chunk = _SLOT.first(conn, {"inode": inode, "idx": index})
        expiry = time.monotonic() + self.config.lease_seconds
        if chunk is None:
            chosen = self._new_chunk_servers(live, row.goal or self.config.goal, exclude)
            chunk_id = int(_NEW_CHUNK.scalar(conn, {"inode": inode, "idx": index}))
            for s in chosen:
                _NEW_REPLICA.run(conn, {"chunk_id": chunk_id, "server_id": s.id})
            return Grant(client, inode, index, chunk_id, 1, [(s.id, s.url) for s in chosen], expiry), chosen

        version = chunk.version + 1
        current = [r.server_id for r in conn.execute(
            select(replicas.c.server_id).where(replicas.c.chunk_id == chunk.chunk_id,
                                         replicas.c.version == chunk.version))]
        dropped = [(chunk.chunk_id, sid, chunk.version) for sid in current if sid in exclude]
        if dropped:
            garbage.drop_replicas(conn, dropped, wall)
            log.info("chunk %d v%d: replicas on servers %s excluded by client", chunk.chunk_id, chunk.version,
                     ",".join(str(sid) for _, sid, _ in dropped))
        chosen = self._by_load(live, [sid for sid in current if sid not in exclude])
        if not chosen:
            self._check_starting()
            raise DfsError(errno.EIO, f"chunk {chunk.chunk_id} (inode {inode} slot {index}) has no live replica")
        conn.execute(update(chunks).where(chunks.c.chunk_id == chunk.chunk_id).values(version=version))
        conn.execute(update(replicas).where(replicas.c.chunk_id == chunk.chunk_id,
                                            replicas.c.server_id.in_([s.id for s in chosen]))
                     .values(version=version))
        return Grant(client, inode, index, chunk.chunk_id, version, [(s.id, s.url) for s in chosen], expiry), []

    def _check_starting(self) -> None:
        """EAGAIN (503, clients retry) while known chunkservers may still come back after a master restart."""
        if not self.registry.settled() and any(s.state == "unknown" for s in self.registry.servers.values()):
            raise DfsError(errno.EAGAIN, "the master restarted and chunkservers are still reporting back; "
                           "try again in a moment")

    def _new_chunk_servers(self, live: dict[int, ServerInfo], goal: int, exclude: set[int]) -> list[ServerInfo]:
        roomy = [s for s in live.values()
                 if s.id not in exclude and s.accepts_chunks and s.free >= self.config.chunk_size]
        if not roomy:
            if not live:
                self._check_starting()
                raise DfsError(errno.ENOSPC, "no live chunkserver to place a new chunk on")
            raise DfsError(errno.ENOSPC, f"no chunkserver has room for a new chunk ({len(live)} live, all full)")
        roomy.sort(key=lambda s: (s.utilisation(), s.id))
        return roomy[:goal]

    # -- commits and reports --------------------------------------------------------------------

    async def commit(self, inode: int, client: str, size: int | None, mtime_ns: int | None, release: bool, *,
                     atime_ns: int | None = None, mode: int | None = None,
                     resident_data: list[tuple[int, bytes]] | None = None, caller: Caller = ROOT) -> Attr:
        """Record a finished write (size, mtime; the atime and permission bits set since); without
        `size` only give the client's leases back. `resident_data`: the written bytes themselves, to
        keep in the database (master/resident.py; EXDEV when the file is not one to keep so)."""
        if size is None:
            if release:
                self.leases.release(inode, client)
            return to_attr(await self.db.run_read(lambda conn: get_inode(conn, inode)))
        if size > MAX_FILE_SIZE:
            raise DfsError(errno.EFBIG, f"size {size} is larger than the limit {MAX_FILE_SIZE}")

        attr = await self.db.run_write(
            lambda conn: self.commit_in(conn, inode, size, mtime_ns, atime_ns, mode, resident_data, caller))
        if release:
            self.leases.release(inode, client)
        return attr

    def commit_in(self, conn: Connection, inode: int, size: int, mtime_ns: int | None, atime_ns: int | None,
                  mode: int | None, resident_data: list[tuple[int, bytes]] | None, caller: Caller,
                  now: int | None = None) -> Attr:
        """commit's transaction (with a size); `now`: the ctime a client chose (master/batch.py)."""
        row = get_inode(conn, inode)
        _writable(row)
        if caller.uid:
            require(caller, row, W_OK)
            if (mode is not None or atime_ns is not None) and caller.uid != row.uid:
                raise DfsError(errno.EPERM, f"inode {inode}: only its owner may set its mode or atime")
        old_mode = row.mode
        if resident_data is not None:  # the write itself, with no lease before it (_may_write)
            resident.patch(conn, inode, resident_data, self.config.resident_max, size)
            old_mode = kill_suid(caller, row.mode) or row.mode
        now = time.time_ns() if now is None else now
        new = {"size": max(row.size, size), "mtime_ns": now if mtime_ns is None else mtime_ns, "ctime_ns": now,
               "mode": old_mode if mode is None else stat.S_IFMT(row.mode) | mode,
               "atime_ns": row.atime_ns if atime_ns is None else atime_ns}
        _COMMIT.run(conn, {"inode": inode, **new})
        return Attr(inode, new["mode"], row.uid, row.gid, new["size"], row.nlink, new["atime_ns"], new["mtime_ns"],
                    new["ctime_ns"], row.goal, row.rdev)

    async def report(self, chunk_id: int, server_id: int, version: int, problem: str) -> None:
        if problem not in BAD_PROBLEMS:
            raise DfsError(errno.EINVAL, f"problem must be one of {', '.join(BAD_PROBLEMS)}")

        if problem == "unreachable":
            # A client's view of the network is no proof: a server really gone is declared dead by its
            # missing heartbeats, and one that only stalled (or a client cut off) keeps its replicas.
            log.info("chunk %d v%d: a client could not reach chunkserver %d", chunk_id, version, server_id)
            return
        live = {s.id for s in self.registry.live()}

        def txn(conn: Connection) -> int:
            # A client's report never drops the last live copy at the current version: if it is truly bad,
            # the chunkserver quarantines it and says so in its heartbeat (which is authoritative).
            if conn.scalar(select(replicas.c.version).where(replicas.c.chunk_id == chunk_id,
                                                            replicas.c.server_id == server_id)) is None:
                return 0
            others = conn.execute(select(replicas.c.server_id).select_from(replicas.join(
                chunks, and_(chunks.c.chunk_id == replicas.c.chunk_id, chunks.c.version == replicas.c.version)))
                .where(replicas.c.chunk_id == chunk_id, replicas.c.server_id != server_id)).scalars().all()
            if not any(sid in live for sid in others):
                return -1
            return drop_bad(conn, [(chunk_id, server_id, version)], time.time())

        dropped = await self.db.run_write(txn)
        if dropped == -1:
            log.warning("chunk %d v%d on chunkserver %d reported %s: kept, it is the last live copy", chunk_id,
                        version, server_id, problem)
        elif dropped:
            self.registry.recent_bad.append((chunk_id, server_id, version, problem))
            log.warning("chunk %d v%d on chunkserver %d reported %s: replica dropped", chunk_id, version,
                        server_id, problem)
            self.registry.changed()
