"""mfusepy operations over the client library: each call maps to one master or chunkserver step.

The operations receive their caches (`NameCache`, the open-file table and its `MemoryBudget`),
as s3ql's do; they hold no protocol of their own. Paths come from libfuse's high-level API; with
`nullpath_ok`, reads and writes come with the file handle only.

An unlinked file stays usable until its last close: libfuse "hides" an open file it is asked to
unlink by renaming it to `.fuse_hidden...`. We turn that rename into a real unlink that the master
keeps alive for us (nlink 0, as POSIX says), remember the hidden name locally only (so fstat and
friends work and no stray name shows in the folder), and `forget` the file when libfuse removes
the hidden name after the last close.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
import time
from typing import Any

import mfusepy
from mfusepy import FuseOSError

from dfs.client.channel import run_inline
from dfs.client.client import Client
from dfs.client.dirops import DirOps, Identity
from dfs.client.files import FileHandle
from dfs.client.inlineio import Connections, inline_client
from dfs.client.sync import LoopThread
from dfs.errors import DfsError
from dfs.fuse.callers import Callers
from dfs.fuse.errors import fuse_op
from dfs.fuse.namecache import NameCache, parent_of
from dfs.fuse.openfiles import MemoryBudget, OpenFile, open_attr
from dfs.fuse.options import MountOptions
from dfs.fuse.prefetch import Prefetched
from dfs.names import NAME_MAX
from dfs.protocol import ROOT_INODE, Attr

log = logging.getLogger("dfs.fuse")

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
PREFETCH_AFTER_MISSES = 3  # lookups missing the cache in one folder before it is listed whole
PREFETCH_MAX_ENTRIES = 20_000
FRESH_ATTEMPTS = 50  # master answers asked for at most, while this mount's own commits overtake them
NOOP_WINDOW = 0.02  # seconds after this mount's change to a file within which a chown changing nothing is skipped
HIDDEN_PREFIX = ".fuse_hidden"
ACL_PREFIX = "system.posix_acl_"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
BLOCK = 512
IO_BLOCK = 1024 * 1024  # st_blksize: tools size their buffers from it


def stat_of(attr: Attr, open_file: OpenFile | None = None) -> dict[str, int]:
    """`attr` as a stat result, with what this mount changed in it and has not committed yet."""
    if open_file is None:
        size, mtime_ns, ctime_ns, mode, atime_ns = attr.size, None, None, attr.mode, attr.atime_ns
    else:
        size, mtime_ns, ctime_ns = open_file.size, open_file.mtime_ns, open_file.ctime_ns
        mode = attr.mode if open_file.mode is None else stat.S_IFMT(attr.mode) | open_file.mode
        atime_ns = attr.atime_ns if open_file.atime_ns is None else open_file.atime_ns
    return {
        "st_ino": attr.inode, "st_mode": mode, "st_nlink": attr.nlink, "st_uid": attr.uid, "st_gid": attr.gid,
        "st_size": size, "st_atime": atime_ns, "st_mtime": mtime_ns or attr.mtime_ns,
        "st_ctime": max(attr.ctime_ns, mtime_ns or 0, ctime_ns or 0), "st_blocks": (size + BLOCK - 1) // BLOCK,
        "st_blksize": IO_BLOCK, "st_rdev": attr.rdev,
    }


def _fh(fi: Any) -> int:
    return int(fi.fh) if fi is not None and not isinstance(fi, int) else int(fi or 0)


class DfsOperations(mfusepy.Operations):
    use_ns = True
    flag_nopath = True  # read/write/flush/release get the handle only: no path lookups in libfuse
    flag_nullpath_ok = True

    def __init__(self, client: Client, loop: LoopThread, options: MountOptions, act_for_callers: bool = False) -> None:
        self.client = client  # calls as the mount itself: open files
        client.open_channels()  # namespace calls go from the FUSE thread itself (dfs/client/channel.py)
        self.inline = client.inline()
        self.chunk_connections = Connections()
        self.data = inline_client(client, self.chunk_connections)  # open files' calls, from the FUSE thread
        self.callers = Callers(self.inline, act_for_callers)  # calls as the process behind the request
        self.loop = loop
        self.options = options
        self.names = NameCache(min(options.attr_timeout, options.entry_timeout))
        self.budget = MemoryBudget(options.memory_cap)
        self.prefetched = Prefetched(self.budget)  # small files' bytes listed with their folder
        self._files: dict[int, OpenFile] = {}  # inode -> shared open state
        self._handles: dict[int, OpenFile] = {}  # file handle -> open file
        self._dirs: dict[int, tuple[int, str]] = {}  # folder handle -> (inode, path when opened)
        self._seen: dict[int, tuple[int, int]] = {}  # inode -> (mtime_ns, size) when last closed here
        self._next_fh = 1
        self._removals = 0  # unlinks and renames so far: a file open across one may have lost its name
        self._hidden: dict[str, int] = {}  # libfuse's ".fuse_hidden..." name of an open, unlinked file
        self._fuse: Any = None  # libfuse's struct fuse, for invalidating what the kernel cached
        self._misses: dict[str, tuple[int, float]] = {}  # folder -> (cache misses, since when)
        self._told: dict[int, tuple[int, int]] = {}  # inode -> (size, mtime) the kernel was last given
        self._stamped: dict[int, float] = {}  # inode -> when this mount's last change to it was sent
        self._lock = threading.Lock()
        #: creates and unlinks in folders this mount made, decided here (dfs/client/dirops.py): only when
        #: it acts for its callers, so that the master checks each change as the user it was made for
        self.dirops: DirOps | None = None
        if act_for_callers and options.delegations and not options.read_only and client.channels is not None:
            self.dirops = DirOps(client.channels, self.inline.master.headers, client.retry_for)
            client.channels.before_call = client.master.before_call = self.dirops
            client.dirops = self.dirops
            self.dirops.on_refused = self._refused
            self.dirops.on_answer = self._answered
            self.dirops.on_recalled = self.names.forget_complete

    # ---- helpers ------------------------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        """Wait for `coro` on the client's event loop (file data, open files)."""
        return self.loop.run(coro)

    @staticmethod
    def meta(coro: Any) -> Any:
        """Run a namespace call of an inline client (`_me()`, `self.inline`) here, in the FUSE thread."""
        return run_inline(coro)

    def _me(self) -> Client:
        """The inline client calling as the process behind this request (fuse/callers.py): for `meta`."""
        return self.callers.client()

    def _caller(self) -> tuple[int, int]:
        uid, gid, _pid = mfusepy.fuse_get_context()
        return uid, gid

    def open_files(self) -> list[OpenFile]:
        """The open files, for metrics (a copy: safe from any thread)."""
        return list(self._files.values())

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise FuseOSError(errno.EROFS)

    def _attr(self, path: str) -> Attr:
        hidden = self._hidden.get(path)
        if hidden is not None:
            return self.run(self.client.getattr(hidden))
        if len(path.rsplit("/", 1)[1].encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise FuseOSError(errno.ENAMETOOLONG)  # before the cache, whose complete folders would say ENOENT
        cached = self.names.lookup(path)
        if cached is None and self.dirops is not None and self._missing_in_delegated(path):
            cached = False
        # only an unknown name counts towards listing its folder: a known one (the folder's own
        # getattr after each unlink in it) costs one getattr, which a listing of its parent would not save
        if cached is None and self.names.inode_of(path) is None and self._folder_is_busy(path):
            self._list_folder(parent_of(path))
            cached = self.names.lookup(path)
        if cached is False:
            raise FuseOSError(errno.ENOENT)
        if isinstance(cached, Attr):
            return cached
        for _attempt in range(FRESH_ATTEMPTS):  # newer than this mount's own changes (see _open_attr)
            mark = self.names.mark()
            attr = self._fetch(path)
            if not self.names.changed_since(attr.inode, mark):
                self.names.put(path, attr, since=mark)
                return attr
        raise FuseOSError(errno.EAGAIN)

    def _known_here(self, path: str) -> Attr | None:
        """The attributes of file `path` if it was made here in a folder still delegated here (they
        are the master's: dfs/client/dirops.py), and this mount has them as its last close left them."""
        if self.dirops is None:
            return None
        inode = self.names.inode_of(path)
        parent = self.names.inode_of(parent_of(path))
        if inode is None or parent is None or not self.dirops.owned(parent, path.rsplit("/", 1)[1]):
            return None
        attr = self.names.attr(inode)
        if attr is None or self._seen.get(inode) != (attr.mtime_ns, attr.size):
            return None  # not closed here since it changed (or never): the master knows best
        return attr

    def _missing_in_delegated(self, path: str) -> bool:
        """Whether `path` is known not to exist because its folder is delegated to this mount."""
        assert self.dirops is not None
        parent = self.names.inode_of(parent_of(path))
        if parent is None or self.dirops.entry(parent, path.rsplit("/", 1)[1]) is not None:
            return False
        self.names.put_missing(path)
        return True

    def _identity(self) -> Identity:
        """Who a change made here is for (what the master will check it as)."""
        uid, gid, groups = self.callers.who()
        return Identity(uid, gid, frozenset(groups))

    def _refused(self, path: str, err: DfsError) -> None:
        """The master refused a change this mount had made on its own: forget what we said of `path`
        (the kernel's entry lives out its timeout: invalidating it from a request could deadlock)."""
        self.names.forget_path(path)
        self._entry_changed(path)

    def _answered(self, path: str, attr: Attr) -> None:
        """The master made a new inode with attributes other than those we gave: its are the truth."""
        self.names.put_attr(attr)

    def _fetch(self, path: str) -> Attr:
        """`path`'s attributes from the master, as cheaply as what we know allows: by inode (the
        folder's getattr after each change in it), by parent and name, or by a walk of the whole
        path. An ENOENT is remembered no longer than the name it came through is trusted (a folder
        replaced elsewhere must not hide the names of its successor beyond the entry timeout)."""
        client = self._me()
        inode = ROOT_INODE if path == "/" else self.names.inode_of(path)
        if inode is not None:
            try:
                return self.meta(client.getattr(inode))
            except DfsError as err:
                if err.errno != errno.ENOENT:
                    raise
                self.names.forget_path(path)  # that inode is gone: the name may be another's by now
        parent = self.names.mapping(parent_of(path))
        try:
            if parent is not None:
                return self.meta(client.lookup(parent[0], path.rsplit("/", 1)[1]))
            return self.meta(client.stat(path, follow=False))
        except DfsError as err:
            if err.errno == errno.ENOENT:
                self.names.put_missing(path, until=parent[1] if parent is not None else None)
            raise

    def _folder_is_busy(self, path: str) -> bool:
        """Several misses in one folder within the cache time: worth listing it whole, once
        (`ls -l`, `find`, a build's stat storm); each miss alone would cost a round trip."""
        folder = parent_of(path)
        now = time.monotonic()
        count, since = self._misses.get(folder, (0, now))
        if now - since > self.names.ttl:
            count, since = 0, now
        self._misses[folder] = (count + 1, since)
        if count + 1 == PREFETCH_AFTER_MISSES:
            if len(self._misses) > 10_000:
                self._misses.clear()
            return True
        return False

    def _list_folder(self, folder: str) -> None:
        inode = self.names.inode_of(folder)
        if inode is None:
            return
        client = self._me()
        mine = self.dirops is not None and self.dirops.folder(inode) is not None  # its files' bytes too
        self.prefetched.prune()

        async def listing() -> None:
            count = 0
            async for name, attr, data_b64 in client.readdir_plus(inode, data=mine):
                self.names.put(folder.rstrip("/") + "/" + name, attr)
                if data_b64 is not None:
                    self.prefetched.put(attr, data_b64)
                count += 1
                if count >= PREFETCH_MAX_ENTRIES:
                    return
            self.names.mark_complete(inode)

        try:
            self.meta(listing())
        except DfsError as err:
            log.debug("could not list %s ahead: %s", folder, err.message)

    def _dir_inode(self, path: str) -> int:
        if path == "/":
            return ROOT_INODE
        known = self.names.inode_of(path)
        if known is not None:
            return known
        attr = self._attr(path)
        if not attr.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return attr.inode

    def _split(self, path: str) -> tuple[int, str]:
        parent, name = parent_of(path), path.rsplit("/", 1)[1]
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise FuseOSError(errno.ENAMETOOLONG)
        return self._dir_inode(parent), name

    def _held(self) -> list[int]:
        return list(self._files)

    def _open_file(self, fi: Any) -> OpenFile:
        handle = self._handles.get(_fh(fi))
        if handle is None:
            raise FuseOSError(errno.EBADF)
        return handle

    def _stat(self, attr: Attr) -> dict[str, int]:
        open_file = self._files.get(attr.inode)
        if open_file is None:
            self._told[attr.inode] = (attr.size, attr.mtime_ns)
            return stat_of(attr)
        return stat_of(attr, open_file)

    def _invalidate_kernel(self, path: str) -> None:
        if self._fuse is not None:
            mfusepy._libfuse.fuse_invalidate_path(self._fuse, path.encode("utf-8", "surrogateescape"))

    def _changed(self, path: str, attr: Attr) -> None:
        """Record new attributes of `path` (and of every other name of its inode)."""
        self.names.put(path, attr)
        open_file = self._files.get(attr.inode)
        if open_file is not None:
            open_file.handle.attr = attr

    def _other_names_changed(self, inode: int, *known: str) -> None:
        """A hard-linked file changed through one name: the kernel caches attributes per name
        (libfuse's high-level API gives each name its own node), so tell it to drop the others."""
        for path in self.names.paths_of(inode):
            if path in known:
                continue
            self.names.forget_path(path)
            self._invalidate_kernel(path)

    def _entry_added(self, parent: int, attr: Attr) -> None:
        """This mount added `attr` to folder `parent`: its times moved to the entry's ctime."""
        self.names.entry_added(parent, attr)

    def _entry_changed(self, path: str) -> None:
        """A name was added or removed in the folder of `path`: its times and link count moved
        (its own name, and what we know of its entries, stay good)."""
        folder = self.names.inode_of(parent_of(path))
        if folder is not None:
            self.names.forget_attr(folder)

    # ---- mount lifecycle ----------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is not None:
            config.attr_timeout = self.options.attr_timeout
            config.entry_timeout = self.options.entry_timeout
            config.negative_timeout = 0.0
            config.use_ino = 1
            config.hard_remove = 0
            config.nullpath_ok = 1
        invalidate = mfusepy._libfuse.fuse_invalidate_path
        invalidate.argtypes, invalidate.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
        self._fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
        if self.dirops is not None:
            self.dirops.start()
        on_ready = getattr(self, "on_ready", None)
        if on_ready is not None:
            on_ready()

    def destroy(self, path: str) -> None:
        for open_file in list(self._files.values()):
            try:
                open_file.close()
            except DfsError as err:
                log.error("inode %d: could not flush at unmount: %s", open_file.inode, err.message)
        self.chunk_connections.close()
        if self.dirops is not None:
            self.dirops.close()

    # ---- attributes ---------------------------------------------------------------------------

    @fuse_op
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, int]:
        if fh is not None and _fh(fh) in self._handles:
            open_file = self._handles[_fh(fh)]
            attr = self.names.attr(open_file.inode) or open_file.handle.attr
            return stat_of(attr, open_file)
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self._stat(self._attr(path))

    def _setattr(self, path: str | None, fh: Any, **changes: Any) -> Attr:
        self._check_writable()
        client = self._me()
        if fh is not None and _fh(fh) in self._handles:
            inode = self._handles[_fh(fh)].inode
            if "size" in changes:  # ftruncate: the file was opened for writing, whatever its mode is now
                client = self.inline
        elif path is not None:
            inode = self._attr(path).inode
        else:
            raise FuseOSError(errno.EBADF)
        open_file = self._files.get(inode)
        if open_file is not None and (open_file.has_deferred or (
                open_file.dirty and ("mtime_ns" in changes or "mtime_now" in changes))):
            # the commit of earlier writes (and of what was deferred to it) must not undo this change
            open_file.flush(durable=False)
        sent = time.monotonic()
        attr = self.meta(client.setattr(inode, **changes))
        self.names.changed_here(inode)
        self._stamp(attr.inode, sent)
        if attr.is_dir and self.dirops is not None:
            self.dirops.changed(attr)
        if attr.nlink > 1:
            self._other_names_changed(attr.inode, *([path] if path else []))
        if path is not None:
            self._changed(path, attr)
        else:
            self.names.put_attr(attr)
            if open_file is not None:
                open_file.handle.attr = attr
        return attr

    @fuse_op
    def chmod(self, path: str | None, mode: int, fh: Any = None) -> int:
        mode = stat.S_IMODE(mode)
        if not self._unchanged(path, fh, {"mode": mode}) and not self._deferred(path, fh, mode=mode):
            self._setattr(path, fh, mode=mode)
        return 0

    @fuse_op
    def chown(self, path: str | None, uid: int, gid: int, fh: Any = None) -> int:
        changes = {k: v for k, v in (("uid", uid), ("gid", gid)) if v != -1}
        if changes and not self._unchanged(path, fh, changes):
            self._setattr(path, fh, **changes)
        return 0

    def _stamp(self, inode: int, sent: float) -> None:
        """This mount changed `inode` with a call sent at `sent`: the master's ctime of it is no older."""
        with self._lock:
            if len(self._stamped) >= 10_000:
                self._stamped = {k: v for k, v in self._stamped.items() if sent - v <= NOOP_WINDOW}
            self._stamped[inode] = sent

    def _unchanged(self, path: str | None, fh: Any, changes: dict[str, int]) -> bool:
        """Whether this chown or chmod would change nothing and may skip its round trip: `tar x` as
        root gives each file it has just made the owner and mode it already has. Only within
        NOOP_WINDOW of this mount's own change to the file (so what we know is its state, and the
        ctime the call would set differs from the one it has by less than that: a timestamp
        granularity, as the kernel's coarse clock has), for its owner or root, and with no set-id
        bit a chown may drop or a chmod may be refused."""
        self._check_writable()
        open_file = self._handles.get(_fh(fh)) if fh is not None else None
        inode = open_file.inode if open_file is not None else self.names.inode_of(path) if path else None
        stamped = self._stamped.get(inode) if inode is not None else None
        if inode is None or stamped is None or time.monotonic() - stamped > NOOP_WINDOW:
            return False
        attr = self.names.attr(inode)
        if attr is None or attr.mode & (stat.S_ISUID | stat.S_ISGID) or self._caller()[0] not in (0, attr.uid):
            return False
        current = {"uid": attr.uid, "gid": attr.gid, "mode": stat.S_IMODE(attr.mode)}
        return all(current[key] == value for key, value in changes.items())

    def _deferred(self, path: str | None, fh: Any, mode: int | None = None, **times: int) -> bool:
        """A utimens of explicit times, or a chmod that only adds rwx bits, on a file with unflushed
        writes here, by its owner or root: it goes with those writes' commit (OpenFile.defer).
        Other mounts see it when they see the data, at the close or fsync that commits both; until
        then they see the narrower mode, never a wider one."""
        open_file = self._handles.get(_fh(fh)) if fh is not None else None
        if open_file is None and path is not None:
            inode = self.names.inode_of(path)
            open_file = self._files.get(inode) if inode is not None else None
        if open_file is None or self.options.read_only:
            return False
        attr = self.names.attr(open_file.inode) or open_file.handle.attr
        if attr.nlink != 1 or self._caller()[0] not in (0, attr.uid):
            return False  # other names to invalidate, or the master is to judge the caller
        if mode is not None:
            old = stat.S_IMODE(attr.mode) if open_file.mode is None else open_file.mode
            if (old | mode) & ~0o777 or old & ~mode:
                return False  # set-id and sticky bits have rules of their own; a narrower mode is at once
        return open_file.defer(mode=mode, **times)

    @fuse_op
    def utimens(self, path: str | None, times: tuple[int, int] | None = None, fh: Any = None) -> int:
        atime, mtime = times if times is not None else (UTIME_NOW, UTIME_NOW)
        changes: dict[str, Any] = {}
        for key, value in (("atime", atime), ("mtime", mtime)):
            if value == UTIME_OMIT:
                continue
            if value == UTIME_NOW:  # the master's clock; the owner or anyone who may write
                changes[f"{key}_now"] = True
            else:
                changes[f"{key}_ns"] = int(value)
        if "mtime_ns" in changes and "atime_now" not in changes and self._deferred(path, fh, **changes):
            return 0
        if changes:
            self._setattr(path, fh, **changes)
        return 0

    @fuse_op
    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        self._check_writable()
        open_file = self._handles.get(_fh(fh)) if fh is not None else None
        if open_file is None and path is not None:
            open_file = self._files.get(self._attr(path).inode)
        if open_file is not None:
            open_file.truncate(length)
            self.names.put_attr(open_file.handle.attr)
            if path is not None:
                self.names.forget_path(path)
            return 0
        self._setattr(path, None, size=length)
        return 0

    # ---- names --------------------------------------------------------------------------------

    @fuse_op
    def mkdir(self, path: str, mode: int) -> int:
        self._check_writable()
        parent, name = self._split(path)
        uid, gid = self._caller()
        attr = self._make(parent, name, stat.S_IFDIR | (stat.S_IMODE(mode) & ~self.client.umask), path)
        if attr is None:
            delegate = self.dirops is not None and self.dirops.listening
            attr, delegated = self.meta(self._me().mkdir_delegated(parent, name, stat.S_IMODE(mode), uid=uid,
                                                                    gid=gid, delegate=delegate))
            self._added(parent, name, attr)
            if delegated and self.dirops is not None:
                self.dirops.adopt(attr)
        self._entry_added(parent, attr)
        self.names.put(path, attr)
        self.names.mark_complete(attr.inode)
        return 0

    def _make(self, parent: int, name: str, mode: int, path: str, target: str = "") -> Attr | None:
        """A new inode made here in a folder delegated to this mount, or None: ask the master."""
        if self.dirops is None or self.dirops.folder(parent) is None:
            return None
        return self.dirops.make(parent, name, mode, self._identity(), path, target)

    def _added(self, parent: int, name: str, attr: Attr) -> None:
        """The master added `name` to `parent` for us: a delegated folder's entries follow."""
        if self.dirops is not None:
            self.dirops.added(parent, name, attr.inode, attr.is_dir)

    @fuse_op
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._check_writable()
        parent, name = self._split(path)
        uid, gid = self._caller()
        attr, _ = self.meta(self._me().create(parent, name, mode, exclusive=True, uid=uid, gid=gid, rdev=dev))
        self._added(parent, name, attr)
        self._entry_added(parent, attr)
        self.names.put(path, attr)
        return 0

    @fuse_op
    def symlink(self, target: str, source: str) -> int:
        """`ln -s source target`: `target` is the new name, `source` what it points to."""
        self._check_writable()
        parent, name = self._split(target)
        uid, gid = self._caller()
        attr = self._make(parent, name, stat.S_IFLNK | 0o777, target, source)
        if attr is None:
            attr = self.meta(self._me().symlink_entry(parent, name, source, uid=uid, gid=gid))
            self._added(parent, name, attr)
        self._entry_added(parent, attr)
        self.names.put(target, attr)
        return 0

    @fuse_op
    def readlink(self, path: str) -> str:
        return self.meta(self._me().readlink_inode(self._attr(path).inode))

    @fuse_op
    def link(self, target: str, source: str) -> int:
        """`ln source target`."""
        self._check_writable()
        inode = self._attr(source).inode
        parent, name = self._split(target)
        attr = self.meta(self._me().link(inode, parent, name))
        self._added(parent, name, attr)
        self._entry_added(parent, attr)
        self._other_names_changed(attr.inode, target)  # their nlink and ctime moved
        self._changed(target, attr)
        return 0

    @fuse_op
    def unlink(self, path: str) -> int:
        hidden = self._hidden.pop(path, None)
        if hidden is not None:  # libfuse drops the name it hid an unlinked file under
            with self._lock:
                open_file = self._files.get(hidden)
                if open_file is not None:  # still open here after all: forget at its last close
                    open_file.forget_on_close = True
                    return 0
            self.run(self.client.forget(hidden))
            return 0
        self._check_writable()
        parent, name = self._split(path)
        if self._unlink_here(parent, name, path):
            return 0
        attr = self._attr(path)
        self._removals += 1
        stamped = self.meta(self._me().unlink(parent, name, held=self._held()))
        if stamped is None:
            self._entry_changed(path)
        else:  # the folder's new times: its cached attributes stay good
            self.names.folder_stamped(parent, stamped)
        self.names.removed(path)
        if attr.nlink > 1:
            self._other_names_changed(attr.inode)
        return 0

    def _unlink_here(self, parent: int, name: str, path: str) -> bool:
        """Unlink `path` in a folder delegated to this mount, without the master: whether it was."""
        if self.dirops is None:
            return False
        entry = self.dirops.entry(parent, name)
        if entry is False:
            return False
        if entry is None:
            raise FuseOSError(errno.ENOENT)
        inode, is_dir = entry  # type: ignore[misc]
        if is_dir:
            raise FuseOSError(errno.EISDIR)
        cached = self.names.attr(inode)
        self._removals += 1
        stamped = self.dirops.remove(parent, name, self._held(), self._identity(), path)
        if stamped is None:
            return False
        self.names.folder_stamped(parent, stamped)
        self.names.removed(path)
        if cached is not None and cached.nlink > 1:
            self._other_names_changed(inode)
        return True

    @fuse_op
    def rmdir(self, path: str) -> int:
        self._check_writable()
        parent, name = self._split(path)
        gone = self.names.inode_of(path)
        self.meta(self._me().rmdir(parent, name))
        if self.dirops is not None:
            self.dirops.removed(parent, name, gone)
        self._entry_changed(path)
        self.names.forget_tree(path)
        self.names.put_missing(path)
        return 0

    @fuse_op
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._check_writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FuseOSError(errno.EINVAL)
        if new.rsplit("/", 1)[1].startswith(HIDDEN_PREFIX) and not flags:
            return self._hide(old, new)
        parent, name = self._split(old)
        new_parent, new_name = self._split(new)
        moved, replaced = self.names.inode_of(old), self.names.inode_of(new)
        self._removals += 1
        if not self.meta(self._me().rename_entry(parent, name, new_parent, new_name,
                                                 noreplace=bool(flags & RENAME_NOREPLACE),
                                                 exchange=bool(flags & RENAME_EXCHANGE), held=self._held())):
            return 0  # two names of one file: both stay, and so does what we know of them
        if self.dirops is not None:
            known = self.names.attr(moved) if moved is not None else None
            self.dirops.renamed(parent, name, new_parent, new_name,
                                (known.inode, known.is_dir) if known is not None else None,
                                bool(flags & RENAME_EXCHANGE))
        for path in (old, new):
            self._entry_changed(path)
            self.names.forget_tree(path)
            self.names.forget_path(path)
        for inode in (moved, replaced):  # ctime (and a replaced file's nlink) moved under every name
            if inode is not None:
                self._other_names_changed(inode, old, new)
        if not flags & RENAME_EXCHANGE:
            self.names.put_missing(old)
        return 0

    def _hide(self, old: str, hidden: str) -> int:
        """libfuse hides an open file it must unlink: unlink it for real, keep the name locally."""
        inode = self._attr(old).inode
        self.unlink(old)
        self._hidden[hidden] = inode
        return 0

    # ---- folders ------------------------------------------------------------------------------

    @fuse_op
    def opendir(self, path: str) -> int:
        attr = self._attr(path)
        if not attr.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = (attr.inode, path)
        return fh

    @fuse_op
    def readdir(self, path: str | None, fh: Any) -> list[Any]:
        folder = self._dirs.get(_fh(fh))
        if folder is None:
            raise FuseOSError(errno.EBADF)
        inode, path = folder
        prefix = path.rstrip("/") + "/"
        parent = ROOT_INODE if path == "/" else (self.names.inode_of(parent_of(path)) or ROOT_INODE)
        # glibc skips entries whose inode number is 0, so "." and ".." carry theirs
        entries: list[Any] = [(".", {"st_mode": stat.S_IFDIR, "st_ino": inode}, 0),
                              ("..", {"st_mode": stat.S_IFDIR, "st_ino": parent}, 0)]

        client = self._me()

        async def listing() -> list[tuple[str, Attr]]:
            return [item async for item in client.readdir(inode)]

        for name, attr in self.meta(listing()):
            self.names.put(prefix + name, attr)
            entries.append((name, {"st_mode": attr.mode, "st_ino": attr.inode}, 0))
        self.names.mark_complete(inode)
        return entries

    def releasedir(self, path: str | None, fh: Any) -> int:
        self._dirs.pop(_fh(fh), None)
        return 0

    @fuse_op
    def fsyncdir(self, path: str | None, datasync: int, fh: Any) -> int:
        if self.dirops is not None:  # the folder's changes made here, on the master's disk
            self.dirops.flush()
        return 0

    @fuse_op
    def statfs(self, path: str) -> dict[str, int]:
        info = self.meta(self._me().statfs())
        block = 4096
        free = int(info.get("free", 0))
        return {
            "f_bsize": IO_BLOCK, "f_frsize": block, "f_blocks": int(info.get("total", 0)) // block,
            "f_bfree": free // block, "f_bavail": free // block, "f_files": int(info.get("files", 0)) + 1_000_000,
            "f_ffree": 1_000_000, "f_favail": 1_000_000, "f_namemax": NAME_MAX,
        }

    # ---- files --------------------------------------------------------------------------------

    def _register(self, attr: Attr, fi: Any) -> None:
        """Attach a new file handle for `attr` to fi, sharing the inode's open state."""
        with self._lock:
            open_file = self._files.get(attr.inode)
            if open_file is None:
                handle = FileHandle(self.client, attr, inline=self.data)
                open_file = OpenFile(handle, self.loop, self.budget, self.options.write_buffer,
                                     self.options.read_ahead, on_commit=self.names.changed_here)
                self._files[attr.inode] = open_file
                open_file.removals_at_open = self._removals
                seen = self._seen.get(attr.inode)
                fi.keep_cache = 1 if seen == (attr.mtime_ns, attr.size) else 0
            else:
                fi.keep_cache = 1
            open_file.refs += 1
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = open_file
        fi.fh = fh

    @fuse_op
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._check_writable()
        parent, name = self._split(path)
        uid, gid = self._caller()
        exclusive = bool(fi.flags & os.O_EXCL) if fi is not None else True
        sent = time.monotonic()
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        attr = self._make(parent, name, kind | (stat.S_IMODE(mode) & ~self.client.umask), path)
        if attr is not None:
            created = True
        else:
            attr, created = self.meta(self._me().create(parent, name, mode, exclusive=exclusive, uid=uid, gid=gid))
            if created:
                self._added(parent, name, attr)
        if created:
            self._stamp(attr.inode, sent)
            self._entry_added(parent, attr)
            self.names.put_xattr_absent(attr.inode)  # nothing to ask before its writes (security.capability)
        self.names.put(path, attr)
        self._register(attr, fi)
        return 0

    @fuse_op
    def open(self, path: str, fi: Any) -> int:
        if self.options.read_only and fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise FuseOSError(errno.EROFS)
        inode = self._attr(path).inode
        existing = self._files.get(inode)
        # close-to-open: a first open asks the master for fresh attributes
        # close-to-open: every open asks the master for fresh attributes, even while another handle
        # (or a release the kernel has not sent yet) keeps our open state of the file alive
        writing = fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC)  # reads: the kernel checked (and exec)
        reading = fi.flags & os.O_ACCMODE != os.O_WRONLY
        known = self._known_here(path) if existing is None and not writing else None
        if known is not None:  # made here, in a folder still delegated here: nobody else can have changed it
            attr, data_b64 = known, self.prefetched.take(known)
            reply: dict[str, Any] = {} if data_b64 is None else {"resident_b64": data_b64}
            mark = None
        else:
            attr, reply, existing, mark = self._open_attr(path, inode, writing, reading)
        if attr.is_dir:
            raise FuseOSError(errno.EISDIR)
        told, closed = self._told.get(inode), self._seen.get(inode)
        if existing is None and ((told is not None and told != (attr.size, attr.mtime_ns))
                                 or (closed is not None and closed != (attr.mtime_ns, attr.size))):
            # changed elsewhere since the kernel last heard: its cached size would cut or pad reads
            self._invalidate_kernel(path)
        self.names.put(path, attr, since=mark)
        self._register(attr, fi)
        if existing is None and mark is not None and self.names.changed_since(inode, mark):
            # another handle here opened, committed and closed the file while this one registered:
            # ask again, which now brings the open state just made up to date
            attr, reply, _, mark = self._open_attr(path, inode, writing, reading)
            self.names.put(path, attr, since=mark)
        if fi.flags & os.O_ACCMODE == os.O_RDONLY and not fi.flags & os.O_TRUNC:
            fi.noflush = 1  # its close has nothing to send: the kernel skips the flush (FOPEN_NOFLUSH)
        if reply.get("chunks") or "resident_b64" in reply:
            self._handles[fi.fh].handle.seed_locations(reply.get("chunks", []), reply.get("resident_b64"))
            self._handles[fi.fh].account_resident()
        if fi.flags & os.O_TRUNC and attr.size:  # libfuse 3 passes O_TRUNC on (atomic_o_trunc)
            open_file = self._handles[fi.fh]
            open_file.truncate(0)
            self.names.put(path, open_file.handle.attr)
        return 0

    def _open_attr(self, path: str, inode: int, writing: int, reading: bool
                   ) -> tuple[Attr, dict[str, Any], OpenFile | None, int]:
        """An open's attributes (the master's, newer than every commit this mount made of the file),
        the master's reply, the file's open state here if it has one, brought up to date, and the
        `NameCache.mark` the answer was asked under.

        An answer the master sent before one of our commits would take the size back (two
        appenders in one mount would then write at one offset), so it is asked for again; a commit
        in progress holds the open state's lock, and is waited for."""
        for _attempt in range(FRESH_ATTEMPTS):
            mark = self.names.mark()
            attr, reply = self.meta(open_attr(self._me(), inode, os.W_OK if writing else 0, reading))
            existing = self._files.get(inode)
            if existing is None:
                if not self.names.changed_since(inode, mark):
                    return attr, reply, None, mark
                continue
            with existing.lock:
                if self.names.changed_since(inode, mark):
                    continue
                if existing.dirty:
                    return existing.handle.attr, reply, existing, mark  # our unsent writes are the newest view
                if (existing.handle.attr.mtime_ns, existing.handle.attr.size) != (attr.mtime_ns, attr.size):
                    existing.refresh(attr)  # changed elsewhere
                    self._invalidate_kernel(path)
                return attr, reply, existing, mark
        raise FuseOSError(errno.EAGAIN)  # our commits kept overtaking the answers: let the caller try again

    @fuse_op
    def read(self, path: str | None, size: int, offset: int, fh: Any) -> bytes:
        return self._open_file(fh).read(offset, size)

    @fuse_op
    def write(self, path: str | None, data: bytes, offset: int, fh: Any) -> int:
        self._check_writable()
        return self._open_file(fh).write(offset, data)

    @fuse_op
    def flush(self, path: str | None, fh: Any) -> int:
        open_file = self._open_file(fh)
        if open_file.dirty:
            open_file.flush(durable=False, closing=True)
            self.names.put_attr(open_file.handle.attr)
        return 0

    @fuse_op
    def fsync(self, path: str | None, datasync: int, fh: Any) -> int:
        open_file = self._open_file(fh)
        open_file.flush(durable=True)
        if self.dirops is not None:  # its create (and a small file's bytes) may wait for a batch
            self.dirops.flush()
        self.names.put_attr(open_file.handle.attr)
        return 0

    @fuse_op
    def release(self, path: str | None, fh: Any) -> int:
        with self._lock:
            open_file = self._handles.pop(_fh(fh), None)
            if open_file is None:
                return 0
            open_file.refs -= 1
            last = open_file.refs == 0
            if last:
                del self._files[open_file.inode]
        if last:
            try:
                open_file.close()
            finally:
                attr = open_file.handle.attr
                self._seen[attr.inode] = (attr.mtime_ns, attr.size)
                reopened = attr.inode in self._files  # a newer open of it: that one's release decides
                if not reopened and (open_file.forget_on_close or (open_file.removals_at_open != self._removals
                                                                   and self._unlinked(attr.inode))):
                    self.run(self.client.forget(attr.inode))
        return 0

    def _unlinked(self, inode: int) -> bool:
        """Whether an unlink or rename while the file was open left it without a name."""
        try:
            return self.run(self.client.getattr(inode)).nlink == 0
        except DfsError:
            return False

    @fuse_op
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: Any) -> int:
        self._check_writable()
        if mode != 0:
            raise FuseOSError(errno.EOPNOTSUPP)
        open_file = self._open_file(fh)
        end = offset + size
        if end > open_file.size:
            open_file.truncate(end)
        return 0

    # ---- extended attributes ------------------------------------------------------------------

    @fuse_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name.startswith(ACL_PREFIX):
            raise FuseOSError(errno.EOPNOTSUPP)
        inode = self._attr(path).inode
        if self.names.xattr_absent(inode, name):
            raise FuseOSError(errno.ENODATA)
        try:
            return self.meta(self._me().getxattr(inode, name))
        except DfsError as err:
            if err.errno == errno.ENODATA:
                self.names.put_xattr_absent(inode, name)
            raise

    @fuse_op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._check_writable()
        if name.startswith(ACL_PREFIX):  # no POSIX ACLs: tools such as cp -a then fall back to chmod
            raise FuseOSError(errno.EOPNOTSUPP)
        inode = self._attr(path).inode
        self.meta(self._me().setxattr(inode, name, bytes(value), options))
        self.names.xattr_set(inode, name)
        self.names.forget_path(path)
        return 0

    @fuse_op
    def listxattr(self, path: str) -> list[str]:
        return self.meta(self._me().listxattr(self._attr(path).inode))

    @fuse_op
    def removexattr(self, path: str, name: str) -> int:
        self._check_writable()
        self.meta(self._me().removexattr(self._attr(path).inode, name))
        self.names.forget_path(path)
        return 0
