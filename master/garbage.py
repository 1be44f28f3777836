"""The garbage queue: replicas to delete on chunkservers, told to them in heartbeat replies.

Every helper runs inside the caller's transaction, so that forgetting a replica and queueing its
deletion are one change.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Float, and_, bindparam, delete, insert, select, tuple_

from dfs.master.prepared import Prepared
from dfs.master.schema import chunks, garbage, replicas

_BATCH = 500


_DOOMED = (chunks.c.inode == bindparam("inode"), chunks.c.idx >= bindparam("first"))
_doomed_ids = select(chunks.c.chunk_id).where(*_DOOMED)
_ANY_DOOMED = Prepared(select(chunks.c.chunk_id).where(*_DOOMED).limit(1))
_QUEUE_DOOMED = Prepared(insert(garbage).from_select(
    ["chunk_id", "server_id", "version", "not_before"],
    select(replicas.c.chunk_id, replicas.c.server_id, replicas.c.version, bindparam("not_before", type_=Float))
    .where(replicas.c.chunk_id.in_(_doomed_ids)),
))
_FORGET_DOOMED_REPLICAS = Prepared(delete(replicas).where(replicas.c.chunk_id.in_(_doomed_ids)))
_FORGET_DOOMED = Prepared(delete(chunks).where(*_DOOMED))


def delete_file_chunks(conn: Connection, inode: int, first_index: int, not_before: float) -> None:
    """Forget the chunks of `inode` at slots >= first_index; queue every replica of them. A file
    without such chunks (a new empty file: most of those an unlink removes) costs one lookup."""
    params = {"inode": inode, "first": first_index, "not_before": not_before}
    if _ANY_DOOMED.first(conn, params) is None:
        return
    _QUEUE_DOOMED.run(conn, params)
    _FORGET_DOOMED_REPLICAS.run(conn, params)
    _FORGET_DOOMED.run(conn, params)


def drop_replicas(conn: Connection, items: Iterable[tuple[int, int, int]], not_before: float) -> None:
    """Forget replicas `(chunk_id, server_id, version)` and queue them for deletion at that version."""
    rows = [{"chunk_id": c, "server_id": s, "version": v, "not_before": not_before} for c, s, v in items]
    if not rows:
        return
    conn.execute(insert(garbage), rows)
    forget_replicas(conn, [(r["chunk_id"], r["server_id"]) for r in rows])


def forget_replicas(conn: Connection, keys: list[tuple[int, int]]) -> None:
    """Delete replica rows `(chunk_id, server_id)` (nothing is queued)."""
    for start in range(0, len(keys), _BATCH):
        batch = keys[start:start + _BATCH]
        conn.execute(delete(replicas).where(tuple_(replicas.c.chunk_id, replicas.c.server_id).in_(batch)))


def queue(conn: Connection, items: Iterable[tuple[int, int, int]], not_before: float) -> None:
    """Queue `(chunk_id, server_id, version)` for deletion without touching the replicas table."""
    rows = [{"chunk_id": c, "server_id": s, "version": v, "not_before": not_before} for c, s, v in items]
    if rows:
        conn.execute(insert(garbage), rows)


def take_due(conn: Connection, server_id: int, now: float, limit: int) -> list[dict[str, int]]:
    """Garbage due on `server_id`, removed from the queue: the caller is about to tell the server."""
    rows = (conn.execute(
        select(garbage.c.id, garbage.c.chunk_id, garbage.c.version)
        .where(and_(garbage.c.server_id == server_id, garbage.c.not_before <= now))
        .order_by(garbage.c.id).limit(limit)
    )).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    for start in range(0, len(ids), _BATCH):
        conn.execute(delete(garbage).where(garbage.c.id.in_(ids[start:start + _BATCH])))
    # Several queued versions of one chunk: the newest deletes them all (DELETE removes <= version).
    newest: dict[int, int] = {}
    for r in rows:
        newest[r.chunk_id] = max(newest.get(r.chunk_id, 0), r.version)
    return [{"chunk_id": c, "version": v} for c, v in newest.items()]


def pending_for(conn: Connection, server_id: int) -> set[int]:
    """Chunk ids queued for deletion on `server_id` (due or not)."""
    result = conn.execute(select(garbage.c.chunk_id).where(garbage.c.server_id == server_id))
    return {r[0] for r in result}
