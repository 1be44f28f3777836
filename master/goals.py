"""Bringing chunks to their replication goal after `setrep` (and for `fsck --repair`).

`fix_chunk` looks at one chunk: extra live replicas are dropped, the most utilised server's first; missing
ones are copied to the least utilised servers in service (master/moves.py), never two on one server. A
chunk under a write lease is left for later. `GoalKeeper` is the background job that runs `fix_chunk`
over the files handed to it by `setrep` until each is at its goal or cannot get there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dfs.master.layout import ChunkPlace, Layout, live_copies, load_layout
from dfs.master.moves import Mover

if TYPE_CHECKING:
    from dfs.master.app import Master

log = logging.getLogger("master.goals")

PASS_INTERVAL = 1.0
PARALLEL = 4


@dataclass(slots=True)
class Fix:
    added: int = 0
    dropped: int = 0
    problem: str | None = None  # why the chunk is not at its goal after the fix
    later: bool = False  # blocked for now (lease, chunk in flight): try again


@dataclass(slots=True)
class Budget:
    """What the fixes of one pass have promised to servers, so that they spread over the targets."""

    placed: dict[int, int]
    taken: dict[int, int] = field(default_factory=dict)


async def fix_chunk(mover: Mover, place: ChunkPlace, layout: Layout, budget: Budget) -> Fix:
    m = mover.m
    fix = Fix()
    if mover.leased(place.inode, place.index) or place.chunk_id in mover.inflight:
        fix.later, fix.problem = True, "busy (write lease or another move)"
        return fix
    live = live_copies(place, m.registry)
    if not live:
        fix.problem = "no live replica: cannot be copied"
        return fix
    if len(live) > place.goal:
        servers = m.registry.servers
        fullest = sorted(live, key=lambda sid: (-servers[sid].utilisation(), sid))
        for sid in fullest[:len(live) - place.goal]:
            if await mover.drop(place.chunk_id, place.version, sid, keep_at_least=place.goal):
                fix.dropped += 1
        return fix
    holders = set(place.servers) | {sid for sid, _ in place.stale}
    for _ in range(place.goal - len(live)):
        target = mover.pick_target(place.chunk_id, holders, place.length, budget.placed, budget.taken,
                                   layout.garbage)
        if target is None:
            have = len(live) + fix.added
            fix.problem = f"no server in service can take another copy (goal {place.goal}, {have} live)"
            break
        outcome = await mover.move(place.chunk_id, place.version, None, target, length_hint=place.length)
        if outcome.ok:
            fix.added += 1
            holders.add(target)
        else:
            fix.problem, fix.later = outcome.reason or "copy failed", outcome.skipped
            break
    return fix


class GoalKeeper:
    """Background job: the inodes given by setrep, fixed pass after pass until at goal or stuck."""

    def __init__(self, master: Master, mover: Mover) -> None:
        self.m = master
        self.mover = mover
        self.pending: set[int] = set()
        self.blocked: dict[int, str] = {}  # inode -> why some chunk cannot reach its goal
        self.busy = False
        self._wake = asyncio.Event()

    def add(self, inodes: list[int]) -> None:
        self.pending.update(inodes)
        for inode in inodes:
            self.blocked.pop(inode, None)
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PASS_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            if not self.pending:
                continue
            self.busy = True
            try:
                await self._pass()
            except Exception:  # one failed pass must not end the job
                log.exception("goal pass failed")
            finally:
                self.busy = False

    async def _pass(self) -> None:
        inodes = sorted(self.pending)
        layout = await load_layout(self.m.db, self.m.config.chunk_size, inodes)
        budget = Budget(layout.placed_bytes())
        by_inode: dict[int, list[ChunkPlace]] = {i: [] for i in inodes}
        for c in layout.chunks.values():
            by_inode[c.inode].append(c)
        slots = asyncio.Semaphore(PARALLEL)
        results: dict[int, list[Fix]] = {i: [] for i in inodes}

        async def one(c: ChunkPlace) -> None:
            if len(live_copies(c, self.m.registry)) == c.goal:
                return
            async with slots:
                results[c.inode].append(await fix_chunk(self.mover, c, layout, budget))

        started = time.monotonic()
        await asyncio.gather(*(one(c) for c in layout.chunks.values()))
        for inode in inodes:
            fixes = results[inode]
            if any(f.later for f in fixes):
                continue  # try again next pass
            stuck = next((f.problem for f in fixes if f.problem), None)
            if stuck:
                self.blocked[inode] = stuck
            self.pending.discard(inode)
        changed = sum(f.added + f.dropped for fs in results.values() for f in fs)
        if changed:
            log.info("goal pass: %d replicas added or dropped over %d files in %.1f s", changed, len(inodes),
                     time.monotonic() - started)
            self._wake.set()  # look again: the pass may have left work (new layout)
            self.pending.update(i for i in inodes if results[i])

    def state_of(self, inodes: list[int]) -> dict[str, Any]:
        wanted = set(inodes)
        return {"pending": len(wanted & self.pending),
                "blocked": {str(i): why for i, why in self.blocked.items() if i in wanted}}
