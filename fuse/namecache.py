"""The mount's own cache of names and attributes, on top of the kernel's.

Contract: entries live `ttl` seconds (the mount's entry/attr timeout) and are dropped or replaced
by every change this mount makes, so this mount sees its own changes at once and other clients'
changes within `ttl`, exactly as the kernel's caches promise. Paths map to inodes, and attributes
are kept per inode, so a change made through one name of a hard-linked file shows under all.
A directory this mount created or listed whole within `ttl` is *complete*: a name not cached in it
does not exist, which answers the lookup before every create without a round trip. Completeness
is never extended past `ttl` by this mount's own changes (another client's name, added meanwhile,
would stay hidden longer than the entry timeout allows): the folder is listed again instead.
A name this mount adds moves its folder's times as the master does (to the new entry's ctime), so
the kernel's getattr of the folder after each create needs no round trip either; the folder's
attributes keep their expiry. `security.*` extended attributes known to be absent (the kernel asks
for security.capability before every write) are kept `ttl` too. Callers hold no lock: every method
is one dict operation or a short loop under the cache's own lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from dfs.protocol import Attr

_NEGATIVE = -1
PRUNE_EVERY = 20_000  # names put between two sweeps of expired entries
CHANGES_KEPT = 10_000  # inodes whose last local change is remembered before older ones are swept
CHANGE_HORIZON = 600.0  # seconds: longer than any call to the master waits (--master-timeout)


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


class NameCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._names: dict[str, tuple[int, float]] = {}  # path -> (inode or _NEGATIVE, expiry)
        self._attrs: dict[int, tuple[Attr, float]] = {}  # inode -> (attr, expiry)
        self._complete: dict[int, float] = {}  # directory inode -> expiry
        self._no_xattr: dict[tuple[int, str], float] = {}  # (inode, name or "" for all) known absent -> expiry
        self._puts = 0
        #: this mount's own changes (commits, setattrs), numbered: a reply the master sent before one
        #: of them must not overwrite what the change left (the kernel's attr_version, for the mount)
        self._changes = 0
        self._changed: dict[int, tuple[int, float]] = {}  # inode -> (number of its last change, when)
        self._sweep_changes_at = CHANGES_KEPT
        self._lock = threading.Lock()

    def mark(self) -> int:
        """Taken before asking the master for attributes: `changed_since(inode, mark)` then says
        whether the answer may predate a change this mount made meanwhile."""
        return self._changes

    def changed_here(self, inode: int) -> None:
        """This mount changed `inode` on the master (whatever the cache holds: with attr timeouts of 0 too)."""
        now = time.monotonic()
        with self._lock:
            self._changes += 1
            self._changed[inode] = (self._changes, now)
            if len(self._changed) > self._sweep_changes_at:  # a reply older than the horizon is long in
                self._changed = {k: v for k, v in self._changed.items() if now - v[1] <= CHANGE_HORIZON}
                self._sweep_changes_at = max(CHANGES_KEPT, 2 * len(self._changed))

    def changed_since(self, inode: int, mark: int) -> bool:
        return self._changed.get(inode, (0, 0.0))[0] > mark

    def lookup(self, path: str) -> Attr | bool | None:
        """The cached attributes of `path`, False if it is known not to exist, None if unknown."""
        if self.ttl <= 0:
            return None
        now = time.monotonic()
        entry = self._names.get(path)
        if entry is not None and entry[1] > now:
            if entry[0] == _NEGATIVE:
                return False
            cached = self._attrs.get(entry[0])
            if cached is not None and cached[1] > now:
                return cached[0]
            return None
        if entry is not None and entry[0] != _NEGATIVE:
            return None  # it existed a moment ago: not for a complete folder to deny
        folder = self.inode_of(parent_of(path))
        if folder is not None and self._complete.get(folder, 0) > now:
            return False
        return None

    def attr(self, inode: int) -> Attr | None:
        cached = self._attrs.get(inode)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def inode_of(self, path: str) -> int | None:
        entry = self.mapping(path)
        return entry[0] if entry is not None else None

    def mapping(self, path: str) -> tuple[int, float] | None:
        """(inode, expiry) of `path` while it is trusted."""
        entry = self._names.get(path)
        if entry is not None and entry[0] != _NEGATIVE and entry[1] > time.monotonic():
            return entry
        return None

    def paths_of(self, inode: int) -> list[str]:
        """Every cached name of `inode` (a scan: only asked for hard-linked files)."""
        return [path for path, (ino, _) in list(self._names.items()) if ino == inode]

    def put(self, path: str, attr: Attr, since: int | None = None) -> None:
        """`path` is `attr`; with `since` (a `mark` taken before asking), the attributes are kept
        only if this mount has not changed the inode meanwhile (the name is kept either way)."""
        if self.ttl <= 0:
            return
        expiry = time.monotonic() + self.ttl
        with self._lock:
            self._names[path] = (attr.inode, expiry)
            if since is None or not self.changed_since(attr.inode, since):
                self._attrs[attr.inode] = (attr, expiry)
            self._puts += 1
            sweep = self._puts % PRUNE_EVERY == 0
        if sweep:
            self.prune()

    def put_attr(self, attr: Attr) -> None:
        if self.ttl > 0:
            self._attrs[attr.inode] = (attr, time.monotonic() + self.ttl)

    def put_missing(self, path: str, until: float | None = None) -> None:
        """`path` does not exist, for `ttl` (or until `until`, when the answer came through a cached
        name that is trusted no longer)."""
        if self.ttl > 0:
            expiry = time.monotonic() + self.ttl
            self._names[path] = (_NEGATIVE, expiry if until is None else min(expiry, until))

    def mark_complete(self, directory: int) -> None:
        """Every entry of `directory` is in the cache (it was just made, or listed whole)."""
        if self.ttl > 0:
            self._complete[directory] = time.monotonic() + self.ttl

    def forget_complete(self, directory: int) -> None:
        """Names may appear in `directory` that the cache has not seen: ask before saying ENOENT."""
        self._complete.pop(directory, None)

    def entry_added(self, folder: int, entry: Attr) -> None:
        """This mount added `entry` to `folder`: the master set the folder's mtime and ctime to the
        entry's ctime (and a subfolder adds a link)."""
        self.folder_stamped(folder, entry.ctime_ns, int(entry.is_dir))

    def folder_stamped(self, folder: int, time_ns: int, nlink_delta: int = 0) -> None:
        """This mount changed an entry of `folder` and the master stamped the folder's mtime and ctime
        with `time_ns`: its cached attributes follow, keeping their expiry."""
        with self._lock:
            cached = self._attrs.get(folder)
            if cached is not None:
                attr = replace(cached[0], mtime_ns=time_ns, ctime_ns=time_ns, nlink=cached[0].nlink + nlink_delta)
                self._attrs[folder] = (attr, cached[1])

    def forget_attr(self, inode: int) -> None:
        self._attrs.pop(inode, None)

    def removed(self, path: str) -> None:
        """This mount removed the file `path`: it is known missing, and its folder stays complete."""
        with self._lock:
            entry = self._names.get(path)
            if entry is not None and entry[0] != _NEGATIVE:
                self._attrs.pop(entry[0], None)
            if self.ttl > 0:
                self._names[path] = (_NEGATIVE, time.monotonic() + self.ttl)
            else:
                self._names.pop(path, None)

    def xattr_absent(self, inode: int, name: str) -> bool:
        """Whether `inode` is known to lack the extended attribute `name` (only security.* names,
        which every caller may read: the answer does not depend on who asks)."""
        if not name.startswith("security."):
            return False
        now = time.monotonic()
        return self._no_xattr.get((inode, name), 0) > now or self._no_xattr.get((inode, ""), 0) > now

    def put_xattr_absent(self, inode: int, name: str = "") -> None:
        """`inode` lacks `name` (or, with no name, every extended attribute: a file just made)."""
        if self.ttl > 0:
            self._no_xattr[(inode, name)] = time.monotonic() + self.ttl

    def xattr_set(self, inode: int, name: str) -> None:
        """This mount gave `inode` the extended attribute `name`."""
        with self._lock:
            self._no_xattr.pop((inode, name), None)
            self._no_xattr.pop((inode, ""), None)

    def _incomplete(self, path: str) -> None:
        """A name under `path`'s folder is no longer cached: the folder's listing is not complete."""
        parent = self._names.get(parent_of(path))
        if parent is not None:
            self._complete.pop(parent[0], None)

    def forget_path(self, path: str) -> None:
        """Know nothing of `path` any more (not even that it is missing)."""
        with self._lock:
            entry = self._names.pop(path, None)
            if entry is not None and entry[0] != _NEGATIVE:
                self._attrs.pop(entry[0], None)
                self._complete.pop(entry[0], None)
            self._incomplete(path)

    def forget_tree(self, path: str) -> None:
        """Drop `path` and everything cached below it (a folder was renamed or removed)."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            doomed = [p for p in self._names if p == path or p.startswith(prefix)]
            for p in doomed:
                inode = self._names.pop(p)[0]
                self._complete.pop(inode, None)
            self._incomplete(path)

    def prune(self) -> None:
        """Drop expired entries (every PRUNE_EVERY puts, so the cache does not grow without bound)."""
        now = time.monotonic()
        with self._lock:
            for table in (self._names, self._attrs):
                for key in [k for k, v in table.items() if v[1] <= now]:
                    del table[key]
            for expiries in (self._complete, self._no_xattr):
                for key in [k for k, v in expiries.items() if v <= now]:
                    del expiries[key]
