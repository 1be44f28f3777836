"""A read-only snapshot of where every chunk lives, for the admin jobs (status, balance, drain, fsck, setrep).

The master does not store chunk lengths; a chunk's length is estimated from its file's size (a chunk
holds `min(chunk_size, size - index * chunk_size)` bytes unless the file is sparse), which is exact for
files written front to back and an upper bound otherwise. The balancer and the drain plan with these
figures so that they never wait for heartbeats to learn what a move changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from dfs.master.db import Database
from dfs.master.schema import chunks, garbage, inodes, replicas
from dfs.master.servers import Registry, ServerInfo

_BATCH = 500


def est_length(size: int, index: int, chunk_size: int) -> int:
    """Bytes of chunk slot `index` of a file of `size` bytes (0 for a slot past the end)."""
    return max(0, min(chunk_size, size - index * chunk_size))


@dataclass(slots=True)
class ChunkPlace:
    chunk_id: int
    inode: int
    index: int
    version: int
    length: int  # estimated (see the module docstring)
    goal: int
    servers: list[int] = field(default_factory=list)  # replicas at the current version
    stale: list[tuple[int, int]] = field(default_factory=list)  # (server_id, version) of older replicas


@dataclass(slots=True)
class Layout:
    chunk_size: int
    chunks: dict[int, ChunkPlace]
    garbage: set[tuple[int, int]]  # (chunk_id, server_id) queued for deletion
    taken_at: float = field(default_factory=time.monotonic)

    def on_server(self, server_id: int) -> list[ChunkPlace]:
        return [c for c in self.chunks.values() if server_id in c.servers]

    def placed_bytes(self) -> dict[int, int]:
        """Estimated bytes of current replicas per server."""
        out: dict[int, int] = {}
        for c in self.chunks.values():
            for sid in c.servers:
                out[sid] = out.get(sid, 0) + c.length
        return out

    def replica_counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for c in self.chunks.values():
            for sid in c.servers:
                out[sid] = out.get(sid, 0) + 1
        return out


async def load_layout(db: Database, chunk_size: int, inode_ids: Iterable[int] | None = None) -> Layout:
    """Every chunk (or those of `inode_ids`) with its replicas, in one consistent snapshot."""
    wanted = None if inode_ids is None else sorted(set(inode_ids))

    def txn(conn: Connection) -> Layout:
        places: dict[int, ChunkPlace] = {}
        base = (select(chunks.c.chunk_id, chunks.c.inode, chunks.c.idx, chunks.c.version, inodes.c.size,
                       inodes.c.goal).select_from(chunks.join(inodes, inodes.c.id == chunks.c.inode)))
        batches = [None] if wanted is None else [wanted[i:i + _BATCH] for i in range(0, len(wanted), _BATCH)]
        for batch in batches:
            query = base if batch is None else base.where(chunks.c.inode.in_(batch))
            for r in conn.execute(query):
                places[r.chunk_id] = ChunkPlace(r.chunk_id, r.inode, r.idx, r.version,
                                                est_length(r.size, r.idx, chunk_size), r.goal)
        _add_replicas(conn, places, wanted is None)
        queued = {(r.chunk_id, r.server_id) for r in conn.execute(select(garbage.c.chunk_id, garbage.c.server_id))}
        return Layout(chunk_size, places, queued)

    return await db.run_read(txn, background=True)


def _add_replicas(conn: Connection, places: dict[int, ChunkPlace], everything: bool) -> None:
    query = select(replicas.c.chunk_id, replicas.c.server_id, replicas.c.version)
    if everything:
        rows: Iterable = conn.execute(query)
    else:
        ids = list(places)
        rows = [r for i in range(0, len(ids), _BATCH)
                for r in conn.execute(query.where(replicas.c.chunk_id.in_(ids[i:i + _BATCH])))]
    for r in rows:
        place = places.get(r.chunk_id)
        if place is None:
            continue
        if r.version == place.version:
            place.servers.append(r.server_id)
        else:
            place.stale.append((r.server_id, r.version))


def eligible(registry: Registry) -> dict[int, ServerInfo]:
    """Live servers that may receive replicas (not draining, not decommissioned)."""
    return {s.id: s for s in registry.live() if s.accepts_chunks}


def live_copies(place: ChunkPlace, registry: Registry) -> list[int]:
    """Servers holding a current replica that is readable now (live)."""
    return [sid for sid in place.servers if registry.is_live(sid)]
