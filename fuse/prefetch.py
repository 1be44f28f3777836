"""Small files' bytes fetched with their folder's listing, for the opens that follow.

Reading a folder of small files cold (`grep -r`, a build reading its sources) costs one master
call per file: the open's, which brings a resident file's bytes (master/resident.py). A file made
by this mount in a folder still delegated to it (dfs/client/dirops.py) is known to nobody else, so
its open needs no call for fresh attributes; the mount's listing of a busy folder then brings its
bytes too (`readdir` with `data`), and such opens and reads need no round trip at all, as Lustre's
statahead and NFS's READDIRPLUS save theirs. Entries live until their open takes them, or at most
TTL seconds, and are charged to the mount's memory budget: past its cap nothing more is kept.
"""

from __future__ import annotations

import threading
import time

from dfs.fuse.openfiles import MemoryBudget
from dfs.protocol import Attr

TTL = 5.0
#: Bytes (base64) kept at most, whatever the budget allows.
MAX_BYTES = 16 * 1024 * 1024


class Prefetched:
    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self._kept: dict[int, tuple[int, int, str, float]] = {}  # inode -> (mtime_ns, size, base64, expiry)
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, attr: Attr, data_b64: str) -> None:
        """Keep the resident bytes of file `attr`, if the budget allows."""
        with self._lock:
            if attr.inode in self._kept or self._bytes + len(data_b64) > MAX_BYTES:
                return
            if not self.budget.try_take(len(data_b64)):
                return
            self._kept[attr.inode] = (attr.mtime_ns, attr.size, data_b64, time.monotonic() + TTL)
            self._bytes += len(data_b64)

    def take(self, attr: Attr) -> str | None:
        """The bytes kept for `attr`'s file, if they are of that very version (its mtime and size)."""
        with self._lock:
            kept = self._kept.pop(attr.inode, None)
            if kept is None:
                return None
            self._release(kept[2])
        mtime_ns, size, data_b64, expiry = kept
        if (mtime_ns, size) != (attr.mtime_ns, attr.size) or expiry < time.monotonic():
            return None
        return data_b64

    def prune(self) -> None:
        """Drop what outlived TTL (the listing was wider than the opens that followed)."""
        now = time.monotonic()
        with self._lock:
            for inode in [i for i, kept in self._kept.items() if kept[3] < now]:
                self._release(self._kept.pop(inode)[2])

    def _release(self, data_b64: str) -> None:
        self._bytes -= len(data_b64)
        self.budget.give(len(data_b64))
