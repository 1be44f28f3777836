"""Who is calling: the mount acts for the process behind each FUSE request.

With a key of scope proxy (or admin), namespace calls carry the caller's uid, gid (from the FUSE
request) and supplementary groups (from /proc/<pid>/status, cached briefly per pid), so the master
checks permissions as it would for that user; the kernel checks them too (default_permissions).
Calls on open files (reads, writes, leases, commits) go as the mount itself: the kernel checked the
caller when the file was opened, and POSIX lets an open file be used whatever its mode becomes.
The identity is picked in the FUSE thread and bound to a client view, never carried in a context
variable, because the calls run on the client's event-loop thread.
"""

from __future__ import annotations

import threading
import time

import mfusepy

from dfs.client.client import Client

GROUPS_TTL = 1.0  # seconds a process's groups are trusted without reading /proc again
MAX_CACHED = 4096


def groups_of(pid: int) -> tuple[int, ...]:
    """Supplementary groups of process `pid` (empty when it is gone or unknown, e.g. pid 0)."""
    if pid <= 0:
        return ()
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return tuple(sorted(int(g) for g in line.split()[1:]))
    except (OSError, ValueError):
        pass
    return ()


class Callers:
    """`callers.client()`: the client to call the master with for the current FUSE request."""

    def __init__(self, client: Client, act_for_callers: bool) -> None:
        self.base = client
        self.enabled = act_for_callers
        self._groups: dict[int, tuple[tuple[int, ...], float]] = {}
        self._views: dict[tuple[int, int, tuple[int, ...]], Client] = {}
        self._lock = threading.Lock()

    def _cached_groups(self, pid: int) -> tuple[int, ...]:
        now = time.monotonic()
        hit = self._groups.get(pid)
        if hit is not None and hit[1] > now:
            return hit[0]
        groups = groups_of(pid)
        with self._lock:
            if len(self._groups) >= MAX_CACHED:
                self._groups.clear()
            self._groups[pid] = (groups, now + GROUPS_TTL)
        return groups

    def who(self) -> tuple[int, int, tuple[int, ...]]:
        """uid, gid and supplementary groups of the process behind the current request."""
        uid, gid, pid = mfusepy.fuse_get_context()
        return uid, gid, self._cached_groups(pid)

    def client(self) -> Client:
        if not self.enabled:
            return self.base
        who = self.who()
        view = self._views.get(who)
        if view is None:
            view = self.base.acting_for(*who)
            with self._lock:
                if len(self._views) >= MAX_CACHED:
                    self._views.clear()
                self._views[who] = view
        return view
