"""The scrubber: re-verifies every block of every chunk at a bounded rate, as Swift's auditor does.

One pass reads each complete chunk of the store through `ChunkStore.read`, which checks every block
against its digest and, on a mismatch, quarantines the chunk and queues it as `bad` for the next
heartbeat (the master then drops the replica and re-replicates it from a good copy). Reads are paced
by a token bucket at `scrub_rate` bytes per second; a pass starts at most every `scrub_interval`
seconds. Progress (the next chunk id and when the last pass ended) is kept in `scrub.json` in the
first data dir, so a restart resumes the pass instead of starting over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from typing import Any

from dfs.chunkserver import diskio
from dfs.chunkserver.store import ChunkStore
from dfs.errors import DfsError
from dfs.jobs import Job, Throttle, failsafe

log = logging.getLogger("chunkserver.scrubber")

STATE_FILE = "scrub.json"
SAVE_EVERY = 5.0  # seconds between saves of the cursor during a pass


class Scrubber(Job):
    name = "scrubber"

    def __init__(self, store: ChunkStore, rate: float, interval: float) -> None:
        super().__init__(interval=min(interval, 5.0))
        self.store = store
        self.rate = rate
        self.pass_interval = interval
        self.throttle = Throttle(rate)
        self.state_path = store.dirs[0] / STATE_FILE
        self.cursor = 0  # chunks with ids >= cursor are still to do in this pass
        self.last_pass_end = 0.0  # wall clock
        self.stats: dict[str, Any] = {"passes": 0, "chunks": 0, "bytes": 0, "corrupt": 0, "pass_seconds": None}
        self.pass_todo = 0  # chunks the running pass (or its resumption) set out to verify, and those done
        self.pass_done = 0
        self._loaded = False
        self._saved = 0.0

    # -- state ------------------------------------------------------------------------------------

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            state = json.loads(self.state_path.read_text())
            self.cursor = int(state["cursor"])
            self.last_pass_end = float(state["last_pass_end"])
        self._loaded = True

    def _save_sync(self) -> None:
        tmp = self.state_path.with_name(STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"cursor": self.cursor, "last_pass_end": self.last_pass_end}))
        os.replace(tmp, self.state_path)

    async def _save(self) -> None:
        self._saved = time.monotonic()
        with failsafe(self.name, f"saving {self.state_path}"):
            await diskio.run(self._save_sync)

    # -- work -------------------------------------------------------------------------------------

    async def run_once(self) -> None:
        if not self._loaded:
            await diskio.run(self._load)
        if self.cursor == 0 and time.time() - self.last_pass_end < self.pass_interval:
            return
        started = time.monotonic()
        todo = sorted(cid for cid in self.store.index if cid >= self.cursor)
        self.pass_todo, self.pass_done = len(todo), 0
        for chunk_id in todo:
            with failsafe(self.name, f"chunk {chunk_id}"):
                await self.scrub(chunk_id)
            self.cursor = chunk_id + 1
            self.pass_done += 1
            if time.monotonic() - self._saved > SAVE_EVERY:
                await self._save()
        self.cursor = 0
        self.last_pass_end = time.time()
        self.stats["passes"] += 1
        self.stats["pass_seconds"] = round(time.monotonic() - started, 3)
        self.pass_todo = self.pass_done = 0
        await self._save()
        log.debug("scrub pass done: %d chunks", len(todo))

    async def scrub(self, chunk_id: int) -> bool:
        """Verify one chunk; False if it was found corrupt (and quarantined by the store)."""
        entry = self.store.index.get(chunk_id)
        if entry is None or entry.pending or entry.writing or entry.length == 0:
            return True
        try:
            async with contextlib.aclosing(self.store.read(chunk_id, entry.version, 0, entry.length)) as pieces:
                async for piece in pieces:
                    self.stats["bytes"] += len(piece)
                    await self.throttle.consume(len(piece))
        except DfsError as err:
            if err.errno == errno.EBADMSG:
                self.stats["corrupt"] += 1
                log.warning("scrubber: chunk %d v%d is corrupt: %s", chunk_id, entry.version, err.message)
                return False
            if err.errno not in (errno.ENOENT, errno.ESTALE, errno.EAGAIN):
                raise
            return True  # deleted, rewritten or being written meanwhile: the next pass will see it
        self.stats["chunks"] += 1
        return True

    def progress(self) -> float:
        """Share of the running pass done; 0 between passes."""
        return self.pass_done / self.pass_todo if self.pass_todo else 0.0

    def status(self) -> dict[str, Any]:
        return {"rate": self.rate, "interval": self.pass_interval, "cursor": self.cursor, **self.stats}
