"""The balancer: bring every server's utilisation within a threshold of the cluster mean, as the HDFS
balancer does, by moving replicas from the fullest servers to the emptiest (master/moves.py).

It runs in the master as a background job, so it survives the CLI that started it; the CLI starts it,
polls `status()` and asks it to `stop()`. A stop lets the moves in flight finish (each is committed or
discarded whole) and starts no new one; running it again plans afresh from the placement of the moment,
so an interrupted balance simply continues.

Utilisation here is estimated replica bytes (master/layout.py) over capacity, over the live servers in
service; draining, decommissioned, dead and unknown servers take no part.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dfs.errors import DfsError
from dfs.master.layout import ChunkPlace, Layout, eligible, load_layout
from dfs.master.moves import Mover, Outcome, Throttle
from dfs.master.servers import ServerInfo

if TYPE_CHECKING:
    from dfs.master.app import Master

log = logging.getLogger("master.balance")

#: Moves in flight at once.
PARALLEL = 4
#: Plans at most this many moves per round; the next round plans again from what was achieved.
ROUND_MOVES = 500
RECENT = 20


@dataclass(slots=True)
class PlannedMove:
    chunk_id: int
    inode: int
    index: int
    version: int
    length: int
    source: int
    target: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Spread:
    mean: float  # percent
    low: float
    high: float
    deviation: float  # largest distance from the mean, percentage points
    utilisation: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mean": round(self.mean, 3), "min": round(self.low, 3), "max": round(self.high, 3),
                "deviation": round(self.deviation, 3),
                "utilisation": {str(k): round(v, 3) for k, v in sorted(self.utilisation.items())}}


def spread_of(used: dict[int, int], capacity: dict[int, int]) -> Spread:
    ids = [sid for sid in capacity if capacity[sid] > 0]
    if not ids:
        return Spread(0.0, 0.0, 0.0, 0.0)
    mean = 100.0 * sum(used.get(s, 0) for s in ids) / sum(capacity[s] for s in ids)
    util = {s: 100.0 * used.get(s, 0) / capacity[s] for s in ids}
    return Spread(mean, min(util.values()), max(util.values()), max(abs(u - mean) for u in util.values()), util)


def plan_moves(layout: Layout, servers: dict[int, ServerInfo], threshold: float, max_moves: int,
               skip: Callable[[ChunkPlace, int], bool] = lambda c, t: False) -> list[PlannedMove]:
    """Moves that bring every server of `servers` within `threshold` percentage points of the mean.

    Greedy, as the HDFS balancer pairs nodes: the fullest server above the mean gives to the emptiest
    below it, provided one of the two lies outside the band; the largest chunk that fits without the
    pair crossing over moves. `skip(chunk, target)` vetoes a candidate (leases, chunks in flight).
    """
    capacity = {sid: s.capacity for sid, s in servers.items() if s.capacity > 0}
    placed = layout.placed_bytes()
    used = {sid: placed.get(sid, 0) for sid in capacity}
    total_cap = sum(capacity.values())
    if not total_cap or len(capacity) < 2:
        return []
    mean = sum(used.values()) / total_cap
    band = threshold / 100.0
    holders: dict[int, set[int]] = {c.chunk_id: set(c.servers) | {sid for sid, _ in c.stale}
                                    for c in layout.chunks.values()}
    by_server: dict[int, list[ChunkPlace]] = {sid: [] for sid in capacity}
    for c in sorted(layout.chunks.values(), key=lambda c: (-c.length, c.chunk_id)):
        for sid in c.servers:
            if sid in by_server and c.length > 0:
                by_server[sid].append(c)
    moved: set[int] = set()
    moves: list[PlannedMove] = []

    def util(sid: int) -> float:
        return used[sid] / capacity[sid]

    def pick(src: int, dst: int) -> ChunkPlace | None:
        for c in by_server[src]:
            if c.chunk_id in moved or dst in holders[c.chunk_id] or (c.chunk_id, dst) in layout.garbage:
                continue
            if used[dst] + c.length > capacity[dst] or servers[dst].free < c.length:
                continue
            if (used[src] - c.length) / capacity[src] < (used[dst] + c.length) / capacity[dst]:
                continue  # the pair would cross over: no gain
            if skip(c, dst):
                continue
            return c
        return None

    while len(moves) < max_moves:
        sources = sorted((s for s in capacity if util(s) > mean), key=lambda s: (-util(s), s))
        targets = sorted((s for s in capacity if util(s) < mean), key=lambda s: (util(s), s))
        found = None
        for src in sources:
            for dst in targets:
                if util(src) <= mean + band and util(dst) >= mean - band:
                    continue  # both inside the band already
                chunk = pick(src, dst)
                if chunk is not None:
                    found = (src, dst, chunk)
                    break
            if found:
                break
        if found is None:
            break
        src, dst, chunk = found
        why = []
        if util(src) > mean + band:
            why.append(f"server {src} at {util(src) * 100:.1f}% is over {100 * (mean + band):.1f}%")
        if util(dst) < mean - band:
            why.append(f"server {dst} at {util(dst) * 100:.1f}% is under {100 * (mean - band):.1f}%")
        moves.append(PlannedMove(chunk.chunk_id, chunk.inode, chunk.index, chunk.version, chunk.length, src, dst,
                                 "; ".join(why) + f" (mean {mean * 100:.1f}%)"))
        moved.add(chunk.chunk_id)
        holders[chunk.chunk_id].add(dst)
        used[src] -= chunk.length
        used[dst] += chunk.length
    return moves


class Balancer:
    """At most one balance at a time; its figures stay readable after it ends."""

    def __init__(self, master: Master, mover: Mover) -> None:
        self.m = master
        self.mover = mover
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.state: dict[str, Any] = {"state": "idle"}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _skip(self, chunk: ChunkPlace, target: int) -> bool:
        return (chunk.chunk_id in self.mover.inflight or self.mover.leased(chunk.inode, chunk.index)
                or self.mover.recently_dropped(chunk.chunk_id, target))

    async def _layout(self) -> tuple[Layout, dict[int, ServerInfo]]:
        return await load_layout(self.m.db, self.m.config.chunk_size), eligible(self.m.registry)

    def _spread(self, layout: Layout, servers: dict[int, ServerInfo]) -> Spread:
        placed = layout.placed_bytes()
        return spread_of({s: placed.get(s, 0) for s in servers}, {s: i.capacity for s, i in servers.items()})

    async def plan(self, threshold: float, max_moves: int) -> dict[str, Any]:
        """What a balance would do now (`--dry-run`): changes nothing."""
        layout, servers = await self._layout()
        moves = plan_moves(layout, servers, threshold, max_moves, self._skip)
        before = self._spread(layout, servers)
        return {"threshold": threshold, "servers": sorted(servers), "spread": before.to_json(),
                "balanced": before.deviation <= threshold, "moves": [m.to_json() for m in moves],
                "bytes": sum(m.length for m in moves)}

    def start(self, threshold: float, max_bandwidth: int | None, max_moves: int) -> dict[str, Any]:
        if self.running:
            raise DfsError(errno.EBUSY, "a balance is already running")
        self._stop = asyncio.Event()
        self.state = {
            "state": "running", "threshold": threshold, "max_bandwidth": max_bandwidth, "max_moves": max_moves,
            "started_at": time.time(), "finished_at": None, "moves_planned": 0, "moves_done": 0,
            "moves_failed": 0, "moves_skipped": 0, "bytes_planned": 0, "bytes_moved": 0, "rounds": 0,
            "spread_before": None, "spread_after": None, "message": "planning", "in_flight": [], "recent": [],
        }
        self._task = asyncio.create_task(self._run(threshold, max_bandwidth, max_moves), name="balance")
        log.info("balance started: threshold %.1f points, bandwidth %s, at most %d moves", threshold,
                 f"{max_bandwidth} B/s" if max_bandwidth else "unlimited", max_moves)
        return self.status()

    def stop(self) -> dict[str, Any]:
        if self.running:
            self._stop.set()
            self.state["state"] = "stopping"
            self.state["message"] = "stopping: letting the moves in flight finish"
            log.info("balance stop requested")
        return self.status()

    def status(self) -> dict[str, Any]:
        out = dict(self.state)
        if out.get("started_at"):
            end = out.get("finished_at") or time.time()
            elapsed = max(0.0, end - out["started_at"])
            out["elapsed"] = round(elapsed, 3)
            out["rate"] = round(out["bytes_moved"] / elapsed, 1) if elapsed > 0 else 0.0
            left = max(0, out["bytes_planned"] - out["bytes_moved"])
            out["eta"] = round(left / out["rate"], 1) if out["rate"] > 0 and self.running else None
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, threshold: float, max_bandwidth: int | None, max_moves: int) -> None:
        st = self.state
        throttle = Throttle(max_bandwidth)
        try:
            layout, servers = await self._layout()
            st["spread_before"] = self._spread(layout, servers).to_json()
            while not self._stop.is_set() and st["moves_done"] < max_moves:
                moves = plan_moves(layout, servers, threshold, min(ROUND_MOVES, max_moves - st["moves_done"]),
                                   self._skip)
                if not moves:
                    spread = self._spread(layout, servers)
                    st["message"] = ("balanced" if spread.deviation <= threshold
                                     else "no further move can narrow the spread")
                    break
                st["rounds"] += 1
                st["moves_planned"] += len(moves)
                st["bytes_planned"] += sum(m.length for m in moves)
                st["message"] = f"round {st['rounds']}: {len(moves)} moves"
                log.info("balance round %d: %d moves, %d bytes", st["rounds"], len(moves), sum(m.length for m in moves))
                done_before = st["moves_done"]
                await self._execute(moves, throttle, max_moves)
                if st["moves_done"] == done_before:
                    st["message"] = "no move of the last round succeeded"
                    break
                layout, servers = await self._layout()
            else:
                if self._stop.is_set():
                    st["message"] = "stopped"
                else:
                    st["message"] = f"reached --max-moves {max_moves}"
            st["state"] = "stopped" if self._stop.is_set() else "done"
        except asyncio.CancelledError:
            st["state"], st["message"] = "stopped", "the master is shutting down"
            raise
        except Exception as exc:  # the job ends, the master goes on
            log.exception("balance failed")
            st["state"], st["message"] = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            st["finished_at"] = time.time()
            st["in_flight"] = []
            with contextlib.suppress(Exception):
                layout, servers = await self._layout()
                st["spread_after"] = self._spread(layout, servers).to_json()
            log.info("balance %s: %d moves, %d bytes, %d failed, %d skipped", st["state"], st["moves_done"],
                     st["bytes_moved"], st["moves_failed"], st["moves_skipped"])

    async def _execute(self, moves: list[PlannedMove], throttle: Throttle, max_moves: int) -> None:
        st = self.state
        slots = asyncio.Semaphore(PARALLEL)
        pending: set[asyncio.Task] = set()

        async def one(move: PlannedMove) -> None:
            entry = {"chunk_id": move.chunk_id, "source": move.source, "target": move.target, "length": move.length}
            st["in_flight"].append(entry)
            try:
                outcome = await self.mover.move(move.chunk_id, move.version, move.source, move.target, throttle,
                                                move.length, self._stop.is_set)
            finally:
                st["in_flight"].remove(entry)
                slots.release()
            self._record(move, outcome)

        for move in moves:
            await slots.acquire()
            if self._stop.is_set() or st["moves_done"] + len(st["in_flight"]) >= max_moves:
                slots.release()
                break
            task = asyncio.create_task(one(move))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    def _record(self, move: PlannedMove, outcome: Outcome) -> None:
        st = self.state
        if outcome.ok:
            st["moves_done"] += 1
            st["bytes_moved"] += outcome.length or move.length
        elif outcome.skipped:
            st["moves_skipped"] += 1
            st["bytes_planned"] -= move.length
        else:
            st["moves_failed"] += 1
            st["bytes_planned"] -= move.length
        result = "moved" if outcome.ok else ("skipped" if outcome.skipped else "failed")
        st["recent"] = [*st["recent"][-(RECENT - 1):],
                        {"chunk_id": move.chunk_id, "source": move.source, "target": move.target,
                         "length": outcome.length or move.length, "result": result, "reason": outcome.reason}]
