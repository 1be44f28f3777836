"""fsck: compare what the metadata says with what the chunkservers hold, and optionally repair.

For the files under a path it finds chunks that are missing (no good replica) or under-replicated,
replicas that are missing on their server, stale (older version or an unfinished write) or corrupt
(a full read through the chunkserver, which verifies every block checksum and quarantines a bad copy),
chunk rows past the end of their file and replicas holding data beyond it, and chunks shadowed by
resident bytes (master/resident.py: left in slot 0 by a move into it that did not finish; never read).
Checking "/" also lists orphans: chunks on a server that the master neither lists there nor has
queued for deletion.

`repair` then drops the bad replicas (their deletion is queued), copies under-replicated chunks to new
servers (master/goals.py), queues orphans for deletion, forgets chunks past EOF and shadowed chunks,
and truncates replicas that hold data past EOF. What cannot be repaired (a chunk with no good copy, no
server to copy to) is said so, and counts as a problem still.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import Connection, delete, select

from dfs.errors import DfsError
from dfs.master import garbage
from dfs.master.admin import walk
from dfs.master.goals import Budget, fix_chunk
from dfs.master.layout import ChunkPlace, est_length, load_layout
from dfs.master.moves import Mover
from dfs.master.schema import chunks, inodes, replicas
from dfs.master.schema import resident as resident_table
from dfs.master.servers import drop_bad

if TYPE_CHECKING:
    from dfs.master.app import Master

log = logging.getLogger("master.fsck")

READ_PARALLEL = 8
BAD_REPLICA = ("missing-replica", "stale-replica", "corrupt-replica", "unreadable-replica")
READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)


@dataclass(slots=True)
class Problem:
    kind: str  # missing-chunk, under-replicated, missing-replica, stale-replica, corrupt-replica,
    #            unreadable-replica (any other read error), past-eof, beyond-eof, shadowed-chunk, orphan,
    #            unreachable-server
    detail: str
    path: str | None = None
    inode: int | None = None
    index: int | None = None
    chunk_id: int | None = None
    server_id: int | None = None
    version: int | None = None
    repaired: bool | None = None  # None: not attempted
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


class Fsck:
    def __init__(self, master: Master, mover: Mover, session: aiohttp.ClientSession) -> None:
        self.m = master
        self.mover = mover
        self.session = session

    async def run(self, path: str, repair: bool, verify: bool = True) -> dict[str, Any]:
        started = time.monotonic()
        m = self.m
        entries = await walk(m, path)
        files = {e.inode: e for e in entries if e.is_file}
        layout = await load_layout(m.db, m.config.chunk_size, list(files))
        whole = path.strip("/") == ""
        problems: list[Problem] = []
        listings = await self._listings(problems)
        bad: dict[int, set[int]] = {}  # chunk -> servers whose replica is bad

        def note(kind: str, detail: str, c: ChunkPlace | None = None, **extra: Any) -> Problem:
            p = Problem(kind, detail, **extra)
            if c is not None:
                p.path, p.inode, p.index, p.chunk_id = files[c.inode].path, c.inode, c.index, c.chunk_id
            problems.append(p)
            return p

        places = sorted(layout.chunks.values(), key=lambda c: (files[c.inode].path, c.index))
        busy = {c.chunk_id for c in places if self.mover.leased(c.inode, c.index) or c.chunk_id in self.mover.inflight}
        kept = await m.db.run_read(lambda conn: set(conn.execute(select(resident_table.c.inode)).scalars()),
                                   background=True)
        shadowed = {c.chunk_id for c in places if c.index == 0 and c.inode in kept and c.chunk_id not in busy}
        to_read: list[tuple[ChunkPlace, int]] = []
        for c in places:
            size = files[c.inode].size
            if c.chunk_id in busy:
                continue
            if c.chunk_id in shadowed:
                note("shadowed-chunk", "slot 0 is resident (its bytes are kept by the master): this chunk is left "
                     "from a move into it that did not finish, and is never read", c)
                continue
            if c.index * m.config.chunk_size >= size:
                note("past-eof", f"chunk slot {c.index} lies past the end of the file ({size} bytes)", c)
                continue
            for sid, version in c.stale:
                note("stale-replica", f"server {sid} has v{version}, the chunk is at v{c.version}", c,
                     server_id=sid, version=version)
                bad.setdefault(c.chunk_id, set()).add(sid)
            limit = est_length(size, c.index, m.config.chunk_size)
            for sid in c.servers:
                held = listings.get(sid)
                if held is None:
                    continue  # server not live or unreachable: not this replica's fault
                have = held.get(c.chunk_id)
                if have is None:
                    note("missing-replica", f"server {sid} does not have the chunk", c, server_id=sid,
                         version=c.version)
                    bad.setdefault(c.chunk_id, set()).add(sid)
                elif have["version"] != c.version or have["pending"]:
                    state = "an unfinished write" if have["pending"] else f"v{have['version']}"
                    note("stale-replica", f"server {sid} has {state}, the chunk is at v{c.version}", c,
                         server_id=sid, version=c.version)  # the version of the replica row to drop
                    bad.setdefault(c.chunk_id, set()).add(sid)
                else:
                    if have["length"] > limit:
                        note("beyond-eof", f"server {sid} holds {have['length']} bytes, the file ends "
                             f"{limit} bytes into this chunk", c, server_id=sid, version=c.version)
                    if verify:
                        to_read.append((c, sid))
        for (c, sid), problem in zip(to_read, await self._verify(to_read), strict=True):
            if problem is not None:
                code = problem.split(" ", 1)[0]
                kind = {"ENOENT": "missing-replica", "EBADMSG": "corrupt-replica",
                        "ESTALE": "stale-replica"}.get(code, "unreadable-replica")
                note(kind, f"server {sid}: {problem}", c, server_id=sid, version=c.version)
                bad.setdefault(c.chunk_id, set()).add(sid)
        for c in places:
            if c.chunk_id in busy or c.chunk_id in shadowed or c.index * m.config.chunk_size >= files[c.inode].size:
                continue
            good = [s for s in c.servers if m.registry.is_live(s) and s not in bad.get(c.chunk_id, set())]
            if not good:
                note("missing-chunk", f"no good replica (goal {c.goal})", c)
            elif len(good) < c.goal:
                note("under-replicated", f"{len(good)} good of goal {c.goal}", c)
        if whole:  # against the whole placement, loaded after the listings so that new chunks are in it
            full = await load_layout(m.db, m.config.chunk_size)
            known = {(c.chunk_id, sid) for c in full.chunks.values() for sid in [*c.servers, *(s for s, _ in c.stale)]}
            await self._orphans(listings, known, full.garbage, note)
        if repair:
            await self._repair(problems, layout, files, bad)
        unresolved = [p for p in problems if p.repaired is not True]
        return {"path": path, "files": len(files), "chunks": len(layout.chunks), "skipped_busy": len(busy),
                "servers_checked": len(listings), "verified_replicas": len(to_read), "repair": repair,
                "problems": [p.to_json() for p in problems], "unresolved": len(unresolved),
                "healthy": not unresolved, "seconds": round(time.monotonic() - started, 3)}

    # -- gathering ---------------------------------------------------------------------------------

    async def _listings(self, problems: list[Problem]) -> dict[int, dict[int, dict[str, Any]]]:
        """GET /chunks of every live server: {server: {chunk_id: {version, length, pending}}}."""
        async def one(sid: int, url: str) -> tuple[int, dict[int, dict[str, Any]] | None, str]:
            try:
                async with self.session.get(f"{url}/chunks", timeout=READ_TIMEOUT,
                                            headers=self.m.config.token_header("list", 0)) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        return sid, None, f"HTTP {resp.status}"
                    return sid, {int(c["chunk_id"]): c for c in body["chunks"]}, ""
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                return sid, None, str(exc) or type(exc).__name__

        results = await asyncio.gather(*(one(s.id, s.url) for s in self.m.registry.live()))
        out = {}
        for sid, listing, why in results:
            if listing is None:
                problems.append(Problem("unreachable-server", f"cannot list chunks: {why}", server_id=sid))
            else:
                out[sid] = listing
        return out

    async def _verify(self, items: list[tuple[ChunkPlace, int]]) -> list[str | None]:
        """Read every replica whole (the chunkserver checks each block); None when good, else why not."""
        slots = asyncio.Semaphore(READ_PARALLEL)

        async def one(c: ChunkPlace, sid: int) -> str | None:
            url = self.m.registry.url(sid)
            async with slots:
                try:
                    async with self.session.get(f"{url}/chunks/{c.chunk_id}", params={"version": str(c.version)},
                                                headers=self.m.config.token_header("read", c.chunk_id, c.version),
                                                timeout=READ_TIMEOUT) as resp:
                        if resp.status != 200:
                            err = DfsError.from_json(resp.status, await _json(resp))
                            return f"{err.code} {err.message}"
                        async for _ in resp.content.iter_chunked(1 << 20):
                            pass
                        return None
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    return f"EIO read broke off: {exc or type(exc).__name__}"

        return list(await asyncio.gather(*(one(c, sid) for c, sid in items)))

    async def _orphans(self, listings: dict[int, dict[int, dict[str, Any]]], known: set[tuple[int, int]],
                       queued: set[tuple[int, int]], note: Any) -> None:
        candidates = [(sid, cid, item) for sid, held in listings.items() for cid, item in held.items()
                      if (cid, sid) not in known and (cid, sid) not in queued and cid not in self.mover.inflight]
        held_still = await asyncio.gather(*(self._still_held(sid, cid) for sid, cid, _ in candidates))
        for (sid, cid, item), held in zip(candidates, held_still, strict=True):
            if held:
                note("orphan", f"server {sid} holds chunk {cid} v{item['version']} that no file lists there",
                     chunk_id=cid, server_id=sid, version=int(item["version"]))

    async def _still_held(self, server_id: int, chunk_id: int) -> bool:
        """Whether the server still has the chunk. Its listing was taken before the garbage queue was
        read: a deletion handed to it in a heartbeat reply meanwhile left the queue, and the chunk is
        gone or going (not an orphan). Unknown (no answer): as listed."""
        url = self.m.registry.url(server_id)
        try:
            async with self.session.get(f"{url}/chunks/{chunk_id}/info", timeout=READ_TIMEOUT,
                                        headers=self.m.config.token_header("read", chunk_id)) as resp:
                return resp.status != 404 and chunk_id not in self._deleting(server_id)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return chunk_id not in self._deleting(server_id)

    def _deleting(self, server_id: int) -> frozenset[int]:
        server = self.m.registry.servers.get(server_id)
        return server.deleting if server is not None else frozenset()

    # -- repairs -------------------------------------------------------------------------------------

    async def _repair(self, problems: list[Problem], layout: Any, files: dict[int, Any],
                      bad: dict[int, set[int]]) -> None:
        m = self.m
        wall = time.time()
        grace = m.config.gc_grace
        drops = [(p.chunk_id, p.server_id, p.version) for p in problems
                 if p.kind in BAD_REPLICA]
        orphans = [(p.chunk_id, p.server_id, p.version) for p in problems if p.kind == "orphan"]
        past = [p.chunk_id for p in problems if p.kind == "past-eof"]

        def txn(conn: Connection) -> tuple[set[tuple[int, int]], set[int]]:
            drop_bad(conn, drops, wall + grace)
            left: set[tuple[int, int]] = set()  # orphans found to be current copies after all
            for cid, sid, version in orphans:
                row = conn.execute(select(chunks.c.version).where(chunks.c.chunk_id == cid)).first()
                listed = conn.scalar(select(replicas.c.version).where(replicas.c.chunk_id == cid,
                                                                      replicas.c.server_id == sid))
                if listed is not None or (row is not None and row.version <= version):
                    left.add((cid, sid))
                else:
                    garbage.queue(conn, [(cid, sid, version)], wall + grace)
            kept: set[int] = set()  # past-EOF chunks whose file grew meanwhile
            for cid in past:
                row = conn.execute(select(chunks.c.idx, inodes.c.size)
                                   .select_from(chunks.join(inodes, inodes.c.id == chunks.c.inode))
                                   .where(chunks.c.chunk_id == cid)).first()
                if row is not None and row.idx * m.config.chunk_size < row.size:
                    kept.add(cid)
                    continue
                garbage.drop_replicas(conn, [(cid, s, v) for s, v in self._replicas_of(layout, cid)], wall + grace)
                conn.execute(delete(chunks).where(chunks.c.chunk_id == cid))
            return left, kept

        left, kept = await m.db.run_write(txn)
        for p in problems:
            if p.kind in BAD_REPLICA:
                p.repaired, p.note = True, "replica dropped, deletion queued"
            elif p.kind == "orphan":
                if (p.chunk_id, p.server_id) in left:
                    p.repaired, p.note = False, "left alone: a current copy of the chunk (a copy in progress?)"
                else:
                    p.repaired, p.note = True, "deletion queued"
            elif p.kind == "past-eof":
                p.repaired = p.chunk_id not in kept
                p.note = "chunk dropped" if p.repaired else "left alone: the file grew meanwhile"
            if p.repaired and p.chunk_id is not None and p.server_id is not None:
                self.mover.note_dropped(p.chunk_id, p.server_id)
        for p in problems:
            if p.kind == "beyond-eof":
                await self._cut(p, files)
            elif p.kind == "shadowed-chunk":
                p.repaired = await m.placement.drop_shadowed(p.inode or 0, p.chunk_id or 0)
                p.note = "chunk dropped" if p.repaired else "left alone: its slot is being written or changed"
        # Copies: from the layout minus the replicas just dropped.
        fresh = await load_layout(m.db, m.config.chunk_size, list(files))
        budget = Budget(fresh.placed_bytes())
        for p in problems:
            if p.kind not in ("under-replicated", "missing-chunk"):
                continue
            c = fresh.chunks.get(p.chunk_id or 0)
            if c is None:
                p.repaired, p.note = False, "the chunk is gone"
                continue
            if p.kind == "missing-chunk":
                p.repaired, p.note = False, "cannot repair: no good replica left (data lost unless a server returns)"
                continue
            fix = await fix_chunk(self.mover, c, fresh, budget)
            p.repaired = fix.problem is None
            p.note = f"{fix.added} copies made" + (f"; cannot repair: {fix.problem}" if fix.problem else "")
        for p in problems:
            if p.repaired is False or p.kind == "unreachable-server":
                log.warning("fsck: cannot repair %s %s: %s", p.kind, p.path or p.server_id, p.note or p.detail)
            elif p.repaired:
                log.info("fsck repaired %s chunk %s on server %s (%s)", p.kind, p.chunk_id, p.server_id, p.note)

    @staticmethod
    def _replicas_of(layout: Any, chunk_id: int) -> list[tuple[int, int]]:
        c = layout.chunks.get(chunk_id)
        if c is None:
            return []
        return [(s, c.version) for s in c.servers] + list(c.stale)

    async def _cut(self, p: Problem, files: dict[int, Any]) -> None:
        """Truncate a replica holding data past the end of its file, at the chunk's own version."""
        size = files[p.inode].size
        length = est_length(size, p.index or 0, self.m.config.chunk_size)
        url = self.m.registry.url(p.server_id or 0)
        try:
            async with self.session.post(f"{url}/chunks/{p.chunk_id}/truncate",
                                         params={"version": str(p.version), "length": str(length)},
                                         headers=self.m.config.token_header("truncate", p.chunk_id or 0,
                                                                            p.version or 0)) as resp:
                if resp.status != 200:
                    err = DfsError.from_json(resp.status, await _json(resp))
                    p.repaired, p.note = False, f"truncate failed: {err.code} {err.message}"
                    return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            p.repaired, p.note = False, f"truncate failed: {exc or type(exc).__name__}"
            return
        p.repaired, p.note = True, f"cut to {length} bytes"



async def _json(resp: aiohttp.ClientResponse) -> Any:
    with contextlib.suppress(ValueError, aiohttp.ClientError):
        return await resp.json(content_type=None)
    return None
