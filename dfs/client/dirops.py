"""Creates and unlinks in delegated folders (docs/PROTOCOL.md "Folder delegations"), decided here
and sent to the master later, in order, in batches.

A folder this client made with `mkdir(delegate=True)`, or made on its own inside such a folder, is
its alone until the master recalls it: nobody else can have changed it, so this client knows every
entry (`Folder.names`) and can answer a create, mkdir, symlink or unlink in it at once, with an
inode number the master reserved for it and the times of its own clock. The changes wait in
`_pending` for at most FLUSH_AFTER seconds (or BATCH_MAX changes), and every other master call of
this client sends them first (`before_call`), so the master sees this client's calls in the order
it made them. A recall (heard on a `recalls` call a thread keeps open) sends the folder's pending
changes with the folder's release; from then on, calls in it go to the master again.

A batch the master did not take (it could not be reached, or refused the call whole) goes back to
the head of `_pending`, in order, and is sent again until the master takes it: those changes were
acknowledged. Meanwhile the calls that wait for it fail as calls to an unreachable master do, and
past twice MAX_PENDING new changes go to the master too (and so fail), so memory stays bounded.

What the master refuses of a batch (it checks each change as it would the call) is logged, naming
the path, and `on_refused` lets the mount forget what it told the kernel; while the delegation
holds that only happens to a change the master would have refused anyway (a user without the
permission the kernel granted), or after the master revoked a folder this client did not give
back in time.
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dfs.client.channel import ChannelMaster, Channels, run_inline
from dfs.errors import DfsError
from dfs.protocol import Attr, inherited

log = logging.getLogger("dfs.client.dirops")

#: Seconds a change may wait before it is sent.
FLUSH_AFTER = 0.01
#: Changes in one batch.
BATCH_MAX = 1000
#: Inode numbers asked for at a time, and how few left start the next request.
RESERVE = 1024
LOW_WATER = 256
#: Folders this client holds at most (the master allows twice as many: it never refuses one made here),
#: and files made here whose first commit may join a batch.
MAX_FOLDERS = 50_000
MAX_FRESH = 100_000
#: Seconds one `recalls` call waits.
RECALL_WAIT = 25
#: Calls that never wait for pending changes (they are how changes and recalls travel).
_OWN_CALLS = frozenset({"batch", "recalls", "reserve"})
#: Calls after which a file made here may have data the master knows of.
_DATA_CALLS = frozenset({"lease", "commit", "setattr", "chunks"})
#: Bytes of resident data in one batch (the master takes messages of up to 4 MiB).
BATCH_BYTES = 2 * 1024 * 1024
#: Pending changes (or bytes of them) past which the thread making one sends them itself: the
#: master sets the pace, and the memory they hold stays bounded.
MAX_PENDING = 4 * BATCH_MAX
MAX_PENDING_BYTES = 4 * BATCH_BYTES
#: Seconds between tries of a batch the master did not take (each try waits --master-timeout itself).
RESEND_PAUSE = 1.0
#: Seconds between two log lines about changes that still wait for the master.
WAIT_LOG_EVERY = 30.0
#: Seconds an unmount keeps trying to send what is pending before it gives up on a master that is away.
CLOSE_PATIENCE = 120.0


@dataclass(slots=True)
class Folder:
    """A delegated folder as this client knows it: its attributes (what new entries inherit) and
    every entry (name -> (inode, is a folder))."""

    attr: Attr
    names: dict[str, tuple[int, bool]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a change: the master checks it as that user (`as`). None of them: this client
    itself (a commit, which goes as the mount, as every call on an open file does)."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "groups": sorted(self.groups)}


@dataclass(slots=True)
class _Change:
    body: dict[str, Any]
    path: str  # for the log, and `on_refused`
    attr: Attr | None  # what this client answered for a new inode

    @property
    def weight(self) -> int:
        """Bytes of resident data the change carries (what bounds a batch and the queue)."""
        return sum(len(piece["data_b64"]) for piece in self.body.get("resident", ()))


class DirOps:
    def __init__(self, channels: Channels, headers: dict[str, str], retry_for: float) -> None:
        self.channels = channels
        self.headers = headers  # the client's own: reserve and recalls
        self.retry_for = retry_for
        self.on_refused: Callable[[str, DfsError], None] = lambda path, err: None
        self.on_answer: Callable[[str, Attr], None] = lambda path, attr: None
        #: a folder given back because another client is about to look or change: what the mount
        #: knows of its entries is no longer the whole truth
        self.on_recalled: Callable[[int], None] = lambda inode: None
        self._folders: dict[int, Folder] = {}
        self._pending: list[_Change] = []
        self._release: list[int] = []
        self._numbers: deque[int] = deque()
        self._fresh: dict[int, int] = {}  # regular file made here, no data sent yet -> its folder
        self._born: set[int] = set()  # regular files made here, never linked or moved elsewhere
        self._pending_bytes = 0
        self._sending = 0  # batches taken from _pending and not answered yet: calls wait for them too
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._reserving = False
        self._closed = False
        self._listening = threading.Event()  # the master has heard our first `recalls` call
        self._threads = [threading.Thread(target=self._flusher, name="dfs-dirops-flush", daemon=True),
                         threading.Thread(target=self._watcher, name="dfs-dirops-recalls", daemon=True)]

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Send what is pending and give every folder back (a clean unmount)."""
        with self._lock:
            self._closed = True
            self._release.extend(self._folders)
            self._folders.clear()
            self._wake.notify_all()
        deadline = time.monotonic() + CLOSE_PATIENCE
        while True:
            try:
                self.flush()
                return
            except DfsError as err:
                if time.monotonic() >= deadline:
                    break
                log.warning("unmounting: %d changes in delegated folders wait for the master: %s",
                            len(self._pending), err.message)
                time.sleep(RESEND_PAUSE)
        for change in self._pending:  # the mount ends here, as a crash would end it
            log.error("%s of %s never reached the master (away for the %.0f s the unmount waited)",
                      change.body["op"], change.path, CLOSE_PATIENCE)

    @property
    def listening(self) -> bool:
        """Whether the master knows we hear recalls: only then may we ask for delegations."""
        return self._listening.is_set() and not self._closed

    def counts(self) -> tuple[int, int]:
        """(folders delegated to us, changes not yet answered by the master), for metrics."""
        return len(self._folders), len(self._pending)

    # ---- what the mount asks --------------------------------------------------------------

    def folder(self, inode: int) -> Folder | None:
        return self._folders.get(inode)

    def adopt(self, attr: Attr) -> None:
        """The master delegated folder `attr` (just made, empty) to us."""
        with self._lock:
            if not self._closed:
                self._folders[attr.inode] = Folder(attr)

    def entry(self, parent: int, name: str) -> tuple[int, bool] | bool | None:
        """In a delegated folder: (inode, is a folder) of `name`, or None if it has no such entry;
        False if `parent` is not delegated (ask the master)."""
        folder = self._folders.get(parent)
        if folder is None:
            return False
        return folder.names.get(name)

    def owned(self, parent: int, name: str) -> bool:
        """Whether file `name` of `parent` was made here, in a folder still delegated to us: nobody
        else can know it, so what this client knows of it is all there is (an open needs no call)."""
        folder = self._folders.get(parent)
        entry = folder.names.get(name) if folder is not None else None
        return entry is not None and entry[0] in self._born

    def make(self, parent: int, name: str, mode: int, who: Identity, path: str, target: str = "") -> Attr | None:
        """Create a file (S_IFREG or another mknod type), folder or symlink `name` in delegated folder
        `parent`, which has no such entry: its attributes, or None if this cannot be done here (not
        delegated, a name that exists, no inode number at hand): then ask the master."""
        with self._lock:
            folder = self._folders.get(parent)
            if folder is None or name in folder.names or not self._numbers or self._closed or self._backlogged:
                return None
            inode = self._numbers.popleft()
            now = time.time_ns()
            kind = stat.S_IFMT(mode)
            is_dir = kind == stat.S_IFDIR
            new_mode, gid = inherited(folder.attr.mode, folder.attr.gid, mode, who.gid, who.uid, who.in_group)
            size = len(target.encode("utf-8", "surrogateescape")) if kind == stat.S_IFLNK else 0
            attr = Attr(inode=inode, mode=new_mode, uid=who.uid, gid=gid, size=size, nlink=2 if is_dir else 1,
                        atime_ns=now, mtime_ns=now, ctime_ns=now, goal=folder.attr.goal, rdev=0)
            op = "mkdir" if is_dir else "symlink" if kind == stat.S_IFLNK else "create"
            body: dict[str, Any] = {"op": op, "parent": parent, "name": name, "inode": inode, "time_ns": now,
                                    "mode": mode & 0o7777 if is_dir else mode, "uid": who.uid, "gid": who.gid}
            if target:
                body["target"] = target
            body["as"] = who.to_json()
            folder.names[name] = (inode, is_dir)
            folder.attr = replace(folder.attr, mtime_ns=now, ctime_ns=now, nlink=folder.attr.nlink + int(is_dir))
            if is_dir and len(self._folders) < MAX_FOLDERS:
                self._folders[inode] = Folder(attr)
            elif kind == stat.S_IFREG:
                if len(self._fresh) >= MAX_FRESH:
                    self._fresh.clear()  # files never written: their first commits go to the master
                if len(self._born) >= MAX_FRESH:
                    self._born.clear()  # their opens ask the master again
                self._fresh[inode] = parent
                self._born.add(inode)
            self._queue(_Change(body, path, attr))
        self._throttle()
        return attr

    def remove(self, parent: int, name: str, held: list[int], who: Identity, path: str) -> int | None:
        """Unlink non-folder `name` of delegated folder `parent`: the folder's new mtime, or None if
        this cannot be done here."""
        with self._lock:
            folder = self._folders.get(parent)
            found = folder.names.get(name) if folder is not None else None
            if folder is None or found is None or found[1] or self._closed or self._backlogged:
                return None
            now = time.time_ns()
            del folder.names[name]
            folder.attr = replace(folder.attr, mtime_ns=now, ctime_ns=now)
            self._queue(_Change({"op": "unlink", "parent": parent, "name": name, "time_ns": now, "held": held,
                                 "as": who.to_json()}, path, None))
        self._throttle()
        return now

    def commit(self, attr: Attr, size: int, pieces: list[dict[str, Any]], deferred: dict[str, int]) -> Attr | None:
        """The first commit of a regular file made here, in a folder still delegated, with its bytes
        (resident data): queued, and the attributes it gives the file; None: send it to the master.
        Nobody else can know the file yet, so nobody else can have written it."""
        with self._lock:
            parent = self._fresh.pop(attr.inode, None)
            if parent is None or parent not in self._folders or self._closed or self._backlogged or \
                    attr.mode & (stat.S_ISUID | stat.S_ISGID):  # a writer may lose those: the master decides
                return None
            now = time.time_ns()
            mode = attr.mode if "mode" not in deferred else stat.S_IFMT(attr.mode) | deferred["mode"]
            new = replace(attr, size=max(attr.size, size), mode=mode, mtime_ns=deferred.get("mtime_ns", now),
                          atime_ns=deferred.get("atime_ns", attr.atime_ns), ctime_ns=now)
            body = {"op": "commit", "inode": attr.inode, "size": size, "time_ns": now, "resident": pieces,
                    **deferred}
            change = _Change(body, f"inode {attr.inode}", new)
            self._pending_bytes += change.weight
            self._queue(change)
        self._throttle()
        return new

    def added(self, parent: int, name: str, inode: int, is_dir: bool) -> None:
        """The master added entry `name` to `parent` for us (a call that went to it)."""
        with self._lock:
            self._fresh.pop(inode, None)  # a hard link: others may reach it through that folder
            self._born.discard(inode)
            folder = self._folders.get(parent)
            if folder is not None:
                folder.names[name] = (inode, is_dir)

    def removed(self, parent: int, name: str, inode: int | None = None) -> None:
        """The master removed folder `name` (`inode`, if known) of `parent` for us (rmdir)."""
        with self._lock:
            folder = self._folders.get(parent)
            found = folder.names.pop(name, None) if folder is not None else None
            inode = found[0] if found is not None else inode
            if inode is not None and inode in self._folders:
                self._give_back(inode)

    def renamed(self, parent: int, name: str, new_parent: int, new_name: str, moved: tuple[int, bool] | None,
                exchange: bool) -> None:
        """The master renamed `name` of `parent` to `new_name` of `new_parent` for us; `moved`: the
        entry's (inode, is a folder) if known. A delegated folder whose new entries are not known is
        given back."""
        with self._lock:
            source, target = self._folders.get(parent), self._folders.get(new_parent)
            if source is not None:
                found = source.names.pop(name, None)
                moved = moved or found
            if moved is not None:
                self._fresh.pop(moved[0], None)
                self._born.discard(moved[0])
            if target is not None:
                replaced = target.names.pop(new_name, None)
                if moved is None or exchange:
                    self._give_back(new_parent)
                else:
                    target.names[new_name] = moved
                if replaced is not None and replaced[1] and replaced[0] in self._folders:
                    self._give_back(replaced[0])
            if exchange and source is not None:
                self._give_back(parent)

    def changed(self, attr: Attr) -> None:
        """New attributes of a delegated folder from the master (a chmod, chown)."""
        with self._lock:
            folder = self._folders.get(attr.inode)
            if folder is not None:
                folder.attr = attr

    def _give_back(self, inode: int) -> None:
        self._folders.pop(inode, None)
        self._release.append(inode)
        self._wake.notify_all()

    # ---- sending --------------------------------------------------------------------------

    def must_flush(self, op: str, fields: dict[str, Any]) -> bool:
        """Whether master call `op` must wait until the pending changes are sent (cheap, no lock). A
        call about a file's data makes it one whose commits go to the master (`commit`)."""
        if self._fresh and op in _DATA_CALLS:
            self._fresh.pop(fields.get("inode", 0), None)
        return bool(self._pending or self._release or self._sending) and op not in _OWN_CALLS

    def _queue(self, change: _Change) -> None:
        self._pending.append(change)
        if len(self._pending) == 1 or len(self._pending) >= BATCH_MAX or len(self._numbers) < LOW_WATER \
                or self._pending_bytes >= BATCH_BYTES:
            self._wake.notify_all()

    @property
    def _backlogged(self) -> bool:
        """So much waits (the master has been away) that new changes must go to the master themselves."""
        return len(self._pending) >= 2 * MAX_PENDING or self._pending_bytes >= 2 * MAX_PENDING_BYTES

    def _throttle(self) -> None:
        """Past MAX_PENDING the thread that made a change sends them itself: the master sets the pace.
        The change is made already: a master that does not take them leaves them queued."""
        if len(self._pending) >= MAX_PENDING or self._pending_bytes >= MAX_PENDING_BYTES:
            try:
                self.flush()
            except DfsError as err:
                log.warning("%d changes in delegated folders wait for the master: %s", len(self._pending),
                            err.message)

    def flush(self) -> None:
        """Send every pending change (and folder given back) now, in order."""
        with self._flush_lock:
            while True:
                with self._lock:
                    changes = self._take()
                    release, self._release = (self._release, []) if not self._pending else ([], self._release)
                    if not changes and not release:
                        return
                    self._sending += 1
                try:
                    self._send(changes, release)
                finally:
                    with self._lock:
                        self._sending -= 1

    def _take(self) -> list[_Change]:
        """The next batch of pending changes: at most BATCH_MAX of them and BATCH_BYTES of data."""
        count, size = 0, 0
        for change in self._pending[:BATCH_MAX]:
            weight = change.weight
            if count and size + weight > BATCH_BYTES:
                break
            count, size = count + 1, size + weight
        taken, self._pending = self._pending[:count], self._pending[count:]
        self._pending_bytes -= size
        return taken

    def _send(self, changes: list[_Change], release: list[int]) -> None:
        """One `batch` call (with this client's key; each change names who made it). One the master
        did not take goes back to the head of the queue, and its error is raised."""
        try:
            answers = self._call([c.body for c in changes], release)
        except DfsError:
            with self._lock:
                self._pending[:0] = changes
                self._pending_bytes += sum(change.weight for change in changes)
                self._release[:0] = release
            raise
        for change, answer in zip(changes, answers, strict=False):
            self._answered(change, answer)

    def _call(self, bodies: list[dict[str, Any]], release: list[int]) -> list[Any]:
        master = ChannelMaster(self.channels, self.headers, self.retry_for)
        reply = run_inline(master.call("batch", changes=bodies, release=release))
        return list(reply.get("answers", []))

    def _answered(self, change: _Change, answer: dict[str, Any]) -> None:
        if "error" in answer:
            err = DfsError.from_json(400, answer)
            log.error("%s of %s was refused by the master after it was done here: %s", change.body["op"],
                      change.path, err.message)
            self.on_refused(change.path, err)
            return
        if change.body["op"] == "mkdir" and not answer.get("delegated"):  # its parent was revoked meanwhile
            with self._lock:
                if change.body["inode"] in self._folders:
                    self._give_back(change.body["inode"])
        if change.attr is not None and "attr" in answer:
            attr = Attr.from_json(answer["attr"])
            if attr != change.attr:
                self.on_answer(change.path, attr)

    def _reserve(self) -> None:
        master = ChannelMaster(self.channels, self.headers, self.retry_for)
        try:
            numbers = run_inline(master.call("reserve", count=RESERVE)).get("inodes", [])
        except DfsError as err:
            log.warning("no inode numbers reserved: creates go to the master (%s)", err.message)
            numbers = []
        with self._lock:
            self._numbers.extend(int(n) for n in numbers)

    # ---- threads --------------------------------------------------------------------------

    def _flusher(self) -> None:
        waiting_since: float | None = None  # since when a batch waits for the master
        told = 0.0
        while True:
            with self._lock:
                while not (self._pending or self._release or len(self._numbers) < LOW_WATER or self._closed):
                    self._wake.wait()
                if self._closed and not self._pending and not self._release:
                    return
                low = len(self._numbers) < LOW_WATER and not self._closed
            if low:
                self._reserve()
            time.sleep(FLUSH_AFTER)
            try:
                self.flush()
                if waiting_since is not None:
                    log.info("changes in delegated folders reached the master after %.0f s",
                             time.monotonic() - waiting_since)
                    waiting_since = None
            except DfsError as err:  # kept at the head of the queue
                now = time.monotonic()
                if waiting_since is None or now - told >= WAIT_LOG_EVERY:
                    log.warning("%d changes in delegated folders wait for the master, sent again every %.0f s: %s",
                                len(self._pending), RESEND_PAUSE, err.message)
                    told = now
                waiting_since = waiting_since or now
                time.sleep(RESEND_PAUSE)
            except Exception:  # the thread must go on
                log.exception("sending changes in delegated folders failed")
                time.sleep(RESEND_PAUSE)
            if low and len(self._numbers) < LOW_WATER:
                time.sleep(1.0)  # the master reserves none (another database): do not ask in a loop

    def _watcher(self) -> None:
        # no retries: a master that cannot be reached may have restarted, forgetting our delegations
        master = ChannelMaster(self.channels, self.headers, 0.0)
        while not self._closed:
            try:
                self._listening.set()
                folders = run_inline(master.call("recalls", wait=RECALL_WAIT)).get("folders", [])
            except DfsError as err:
                if self._closed:
                    return
                self._lost_all(err)
                time.sleep(1.0)
                continue
            if folders:
                with self._lock:
                    for inode in folders:
                        self._give_back(inode)
                for inode in folders:
                    self.on_recalled(inode)
                try:
                    self.flush()
                except DfsError as err:  # kept: the flusher sends them again
                    log.warning("recalled folders not given back yet: %s", err.message)

    def _lost_all(self, err: DfsError) -> None:
        """The `recalls` call failed: the master may have ended our delegations. Give every folder
        back, and create through the master until a new folder is delegated."""
        self._listening.clear()
        with self._lock:
            held = list(self._folders)
            if held:
                log.warning("lost contact with the master's recalls (%s): %d delegated folders given back",
                            err.message, len(held))
            for inode in held:
                self._give_back(inode)  # the flusher sends the releases and what is pending, and keeps trying
