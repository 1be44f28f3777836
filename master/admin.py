"""Administrative queries: cluster status, nodes, df, per-file info, and goal changes (setrep).

Plain functions over the master's parts; master/admin_api.py gives them their HTTP face.
"""

from __future__ import annotations

import asyncio
import errno
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import Connection, func, select, update

from dfs.errors import DfsError
from dfs.master import resident
from dfs.master.goals import GoalKeeper
from dfs.master.layout import Layout, live_copies, load_layout
from dfs.master.schema import dentries, inodes, replicas, servers
from dfs.master.schema import resident as resident_table
from dfs.master.servers import ServerInfo
from dfs.protocol import MAX_GOAL

if TYPE_CHECKING:
    from dfs.master.app import Master

_BATCH = 500
INFO_PARALLEL = 16
S_IFMT = 0o170000


@dataclass(slots=True)
class Entry:
    path: str
    inode: int
    mode: int
    size: int
    goal: int

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def node_state(info: ServerInfo, registry_live: bool) -> str:
    if info.admin_state != "normal":
        return info.admin_state
    if registry_live:
        return "live"
    return "dead" if info.state == "live" else info.state  # silent past the dead timeout, not yet declared


async def walk(m: Master, path: str) -> list[Entry]:
    """`path` itself and, for a folder, everything below it (each inode once, by its first path)."""
    attr = await m.namespace.resolve(path, follow=True)
    top = "/" + "/".join(p for p in path.split("/") if p)

    def txn(conn: Connection) -> list[Entry]:
        out = [Entry(top, attr.inode, attr.mode, attr.size, attr.goal)]
        seen = {attr.inode}
        folders = [(attr.inode, top)] if attr.is_dir else []
        while folders:
            batch, folders = folders[:_BATCH], folders[_BATCH:]
            names = dict(batch)
            query = (select(dentries.c.parent, dentries.c.name, inodes.c.id, inodes.c.mode, inodes.c.size,
                            inodes.c.goal)
                     .select_from(dentries.join(inodes, inodes.c.id == dentries.c.inode))
                     .where(dentries.c.parent.in_(list(names))).order_by(dentries.c.parent, dentries.c.name))
            for r in conn.execute(query):
                if r.id in seen:
                    continue
                seen.add(r.id)
                child = names[r.parent].rstrip("/") + "/" + r.name
                out.append(Entry(child, r.id, r.mode, r.size, r.goal))
                if stat.S_ISDIR(r.mode):
                    folders.append((r.id, child))
        return out

    return await m.db.run_read(txn, background=True)


# -- status, nodes, df --------------------------------------------------------------------------------

def chunk_health(m: Master, layout: Layout) -> dict[str, Any]:
    corrupt_reported = {cid for cid, _, _, problem in m.registry.recent_bad if problem == "corrupt"}
    counts = {"total": len(layout.chunks), "healthy": 0, "under_replicated": 0, "over_replicated": 0,
              "missing": 0, "corrupt": 0}
    for c in layout.chunks.values():
        n = len(live_copies(c, m.registry))
        if n < c.goal and c.chunk_id in corrupt_reported:
            counts["corrupt"] += 1
        elif n == 0:
            counts["missing"] += 1
        elif n < c.goal:
            counts["under_replicated"] += 1
        else:
            counts["healthy"] += 1
            if n > c.goal:
                counts["over_replicated"] += 1
    return counts


async def status(m: Master, balance: dict[str, Any], drains: list[dict[str, Any]]) -> dict[str, Any]:
    layout = await load_layout(m.db, m.config.chunk_size)
    live = {s.id for s in m.registry.live()}
    nodes = {"total": len(m.registry.servers), "live": 0, "dead": 0, "unknown": 0, "draining": 0,
             "decommissioned": 0}
    for info in m.registry.servers.values():
        state = node_state(info, info.id in live)
        nodes[state] = nodes.get(state, 0) + 1
        if info.admin_state != "normal" and info.id in live:
            nodes["live"] += 1  # a draining node is still up
    in_service = [m.registry.servers[sid] for sid in live]
    capacity = {"total": sum(s.capacity for s in in_service), "used": sum(s.used for s in in_service),
                "free": sum(s.free for s in in_service)}
    health = chunk_health(m, layout)
    files = await m.db.run_read(lambda conn: conn.execute(
        select(func.count(), func.coalesce(func.sum(inodes.c.size), 0))
        .where(inodes.c.mode.op("&")(S_IFMT) == stat.S_IFREG)).one(), background=True)
    kept = await m.db.run_read(lambda conn: conn.execute(
        select(func.count(), func.coalesce(func.sum(func.length(resident_table.c.data)), 0))).one(), background=True)
    healthy = (nodes["dead"] == 0 and health["missing"] == 0 and health["under_replicated"] == 0
               and health["corrupt"] == 0)
    return {"healthy": healthy, "nodes": nodes, "capacity": capacity, "chunks": health,
            "files": int(files[0]), "bytes": int(files[1]), "leases": len(m.leases),
            "resident": {"files": int(kept[0]), "bytes": int(kept[1]), "max": m.config.resident_max},
            "chunk_size": m.config.chunk_size, "goal": m.config.goal,
            "balance": {k: balance.get(k) for k in ("state", "moves_done", "bytes_moved", "message")},
            "decommissions": drains}


async def nodes(m: Master) -> dict[str, Any]:
    def txn(conn: Connection) -> tuple[dict[int, int], dict[int, float]]:
        counts = {r[0]: int(r[1]) for r in conn.execute(
            select(replicas.c.server_id, func.count()).group_by(replicas.c.server_id))}
        beats = {r.id: float(r.last_heartbeat) for r in conn.execute(select(servers.c.id, servers.c.last_heartbeat))}
        return counts, beats

    counts, beats = await m.db.run_read(txn, background=True)
    live = {s.id for s in m.registry.live()}
    now = time.monotonic()
    out = []
    for info in sorted(m.registry.servers.values(), key=lambda s: s.id):
        out.append({
            "id": info.id, "url": info.url, "uuid": info.uuid, "state": node_state(info, info.id in live),
            "capacity": info.capacity, "used": info.used, "free": info.free,
            "utilisation": round(100.0 * info.used / info.capacity, 3) if info.capacity else None,
            "chunks": counts.get(info.id, 0),
            "heartbeat_age": None if info.last_seen is None else round(now - info.last_seen, 1),
            "last_heartbeat": beats.get(info.id) or None,
        })
    return {"nodes": out}


async def df(m: Master) -> dict[str, Any]:
    listing = (await nodes(m))["nodes"]
    up = [n for n in listing if n["state"] in ("live", "draining", "decommissioned")]
    in_service = [n for n in listing if n["state"] == "live"]
    files = await m.db.run_read(lambda conn: conn.scalar(
        select(func.coalesce(func.sum(inodes.c.size), 0)).where(inodes.c.mode.op("&")(S_IFMT) == stat.S_IFREG)),
        background=True)
    total = sum(n["capacity"] for n in in_service)
    used = sum(n["used"] for n in up)
    return {"size": total, "used": used, "free": sum(n["free"] for n in in_service),
            "use_percent": round(100.0 * used / total, 2) if total else None, "data": int(files or 0),
            "nodes": [{k: n[k] for k in ("id", "url", "state", "capacity", "used", "free", "utilisation")}
                      for n in listing]}


# -- info -----------------------------------------------------------------------------------------------

async def info(m: Master, session: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    """mfsfileinfo: the chunks of one file, their versions, replicas with servers and checksums."""
    attr = await m.namespace.resolve(path, follow=True)
    if attr.is_dir:
        raise DfsError(errno.EISDIR, f"is a directory: {path}")
    layout = await load_layout(m.db, m.config.chunk_size, [attr.inode])
    slots = asyncio.Semaphore(INFO_PARALLEL)

    async def probe(chunk_id: int, server_id: int) -> dict[str, Any]:
        url = m.registry.url(server_id)
        if url is None or not m.registry.is_live(server_id):
            return {"error": "server not live"}
        async with slots:
            try:
                async with session.get(f"{url}/chunks/{chunk_id}/info",
                                       headers=m.config.token_header("read", chunk_id)) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        return {"error": DfsError.from_json(resp.status, body).code}
                    return body
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                return {"error": f"unreachable: {exc or type(exc).__name__}"}

    chunks_out = []
    places = sorted(layout.chunks.values(), key=lambda c: c.index)
    probes = [(c, sid, want) for c in places
              for sid, want in [*((s, c.version) for s in c.servers), *c.stale]]
    answers = await asyncio.gather(*(probe(c.chunk_id, sid) for c, sid, _ in probes))
    by_chunk: dict[int, list[dict[str, Any]]] = {}
    for (c, sid, want), answer in zip(probes, answers, strict=True):
        server = m.registry.servers.get(sid)
        rep = {"server_id": sid, "url": server.url if server else None,
               "server_state": node_state(server, m.registry.is_live(sid)) if server else "unknown",
               "version": want, "length": answer.get("length"), "digest": answer.get("digest"),
               "status": "ok"}
        if "error" in answer:
            rep["status"] = answer["error"]
        elif want != c.version:
            rep["status"] = "stale"
        elif answer.get("version") != c.version:
            rep["status"] = f"server has v{answer.get('version')}"
        elif answer.get("pending"):
            rep["status"] = "pending"
        by_chunk.setdefault(c.chunk_id, []).append(rep)
    for c in places:
        reps = by_chunk.get(c.chunk_id, [])
        digests = [r["digest"] for r in reps if r["status"] == "ok"]
        common = max(set(digests), key=digests.count) if digests else None
        for r in reps:
            if r["status"] == "ok" and r["digest"] != common:
                r["status"] = "checksum differs"
        chunks_out.append({"index": c.index, "chunk_id": c.chunk_id, "version": c.version, "length": c.length,
                           "goal": c.goal, "copies": sum(1 for r in reps if r["status"] == "ok"),
                           "replicas": reps})
    kept = await m.db.run_read(lambda conn: resident.read(conn, attr.inode))
    return {"path": path, "inode": attr.inode, "size": attr.size, "goal": attr.goal,
            "chunk_size": m.config.chunk_size, "chunks": chunks_out,
            "resident": None if kept is None else len(kept)}


# -- setrep ---------------------------------------------------------------------------------------------

async def setrep(m: Master, keeper: GoalKeeper, path: str, goal: int, recursive: bool) -> dict[str, Any]:
    if not 1 <= goal <= MAX_GOAL:
        raise DfsError(errno.EINVAL, f"goal must be between 1 and {MAX_GOAL}")
    entries = await walk(m, path)
    if not recursive:
        entries = entries[:1]
    ids = [e.inode for e in entries]

    def txn(conn: Connection) -> None:
        for i in range(0, len(ids), _BATCH):
            conn.execute(update(inodes).where(inodes.c.id.in_(ids[i:i + _BATCH])).values(goal=goal))

    await m.db.run_write(txn)
    files = [e.inode for e in entries if e.is_file]
    keeper.add(files)
    in_service = sum(1 for s in m.registry.live() if s.accepts_chunks)
    warning = (f"only {in_service} servers are in service: goal {goal} cannot be met"
               if goal > in_service and files else None)
    return {"path": path, "goal": goal, "files": len(files), "folders": len(entries) - len(files),
            "warning": warning}


async def setrep_progress(m: Master, keeper: GoalKeeper, path: str, recursive: bool) -> dict[str, Any]:
    entries = await walk(m, path)
    if not recursive:
        entries = entries[:1]
    files = [e.inode for e in entries if e.is_file]
    layout = await load_layout(m.db, m.config.chunk_size, files)
    under = over = at_goal = 0
    for c in layout.chunks.values():
        n = len(live_copies(c, m.registry))
        if n < c.goal:
            under += 1
        elif n > c.goal:
            over += 1
        else:
            at_goal += 1
    return {"path": path, "files": len(files), "chunks": len(layout.chunks), "at_goal": at_goal, "under": under,
            "over": over, "done": under == 0 and over == 0, **keeper.state_of(files)}


def file_inodes(entries: Iterable[Entry]) -> list[int]:
    return [e.inode for e in entries if e.is_file]
