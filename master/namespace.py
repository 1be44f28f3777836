"""Namespace operations (docs/PROTOCOL.md "Master: namespace"), each one database transaction.

Nothing here knows HTTP, except the truncate calls a shrinking `setattr` makes to the chunkservers
holding the new last chunk, after its transaction committed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import stat
import time
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dfs.errors import DfsError
from dfs.master import garbage, resident
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.permissions import (
    R_OK,
    ROOT,
    W_OK,
    X_OK,
    Caller,
    check_setattr,
    kill_suid,
    permitted,
    require,
    require_may_delete,
)
from dfs.master.permissions import require_owner as _require_owner
from dfs.master.prepared import Prepared
from dfs.master.schema import chunks, dentries, inodes, replicas, xattrs
from dfs.master.schema import garbage as garbage_table
from dfs.master.schema import resident as resident_table
from dfs.master.servers import Registry
from dfs.names import PATH_MAX, encoded, split_path, validate_name
from dfs.protocol import MAX_FILE_SIZE, MAX_GOAL, ROOT_INODE, Attr, inherited

log = logging.getLogger("master.namespace")

# In the order of Attr's fields.
ATTR_COLUMNS = (inodes.c.id, inodes.c.mode, inodes.c.uid, inodes.c.gid, inodes.c.size, inodes.c.nlink,
                inodes.c.atime_ns, inodes.c.mtime_ns, inodes.c.ctime_ns, inodes.c.goal, inodes.c.rdev)
INODE_COLUMNS = (*ATTR_COLUMNS, inodes.c.target)
MAX_SYMLINKS = 40
#: Resident bytes one `readdir` page with `data` carries at most.
PAGE_DATA = 2 * 1024 * 1024
MAX_DEPTH = 100_000  # guard on walks up the tree
S_IFMT = 0o170000
ATTR_FIELDS = tuple(f for f in Attr.__dataclass_fields__ if f != "inode")
MKNOD_TYPES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


@dataclass(frozen=True, slots=True)
class NewInode:
    """The number and time of an inode a client made in a delegated folder (master/batch.py)."""

    inode: int
    time_ns: int


_FIELDS = tuple(Attr.__dataclass_fields__)
_N = len(_FIELDS)


def to_attr(row: Any, start: int = 0) -> Attr:
    """The Attr of a row holding ATTR_COLUMNS from column `start` (by position: 10x faster than by name)."""
    return Attr(*row[start:start + _N])


def attr_json(attr: Attr) -> dict[str, Any]:
    """`attr.to_json()` without `dataclasses.asdict`, which costs ~18 µs an entry in a big readdir."""
    return {name: getattr(attr, name) for name in _FIELDS}


#: A row of INODE_COLUMNS, as the statements below give them (SQLAlchemy's rows read the same way).
InodeRow = namedtuple("InodeRow", [column.key for column in INODE_COLUMNS])  # type: ignore[misc]

# Hot statements are built once, and prepared (master/prepared.py): building and cache-keying a
# SQLAlchemy construct costs more than running it (a create went from 1.8 to 0.9 ms a round trip
# this way), and on SQLite so does SQLAlchemy's execute (0.36 to 0.1 ms a create).
_ENTRY = (dentries.c.parent == bindparam("parent"), dentries.c.name == bindparam("name"))
_BY_ID = inodes.c.id == bindparam("inode")
_GET_INODE = Prepared(select(*INODE_COLUMNS).where(_BY_ID))
_FIND_ENTRY = Prepared(select(*INODE_COLUMNS).select_from(dentries.join(inodes, inodes.c.id == dentries.c.inode))
                       .where(*_ENTRY))
# A folder and its entry `name` in one statement: (folder columns, entry columns or NULLs).
_entry_inode = inodes.alias("entry_inode")
_DIR_AND_ENTRY = Prepared(
    select(*INODE_COLUMNS, *(_entry_inode.c[c.key].label(f"entry_{c.key}") for c in INODE_COLUMNS))
    .select_from(inodes.outerjoin(dentries, and_(dentries.c.parent == inodes.c.id,
                                                 dentries.c.name == bindparam("name")))
                 .outerjoin(_entry_inode, _entry_inode.c.id == dentries.c.inode))
    .where(inodes.c.id == bindparam("parent")))
_TOUCH_DIR = Prepared(update(inodes).where(_BY_ID).values(
    mtime_ns=bindparam("now"), ctime_ns=bindparam("now"), nlink=inodes.c.nlink + bindparam("delta")))
_INSERT_INODE = Prepared(insert(inodes).values({c.key: bindparam(c.key) for c in inodes.c if c is not inodes.c.id})
                         .returning(inodes.c.id))
_INSERT_INODE_AT = Prepared(insert(inodes).values({c.key: bindparam("inode" if c is inodes.c.id else c.key)
                                                   for c in inodes.c}))
_INSERT_ENTRY = Prepared(insert(dentries).values(parent=bindparam("parent"), name=bindparam("name"),
                                                 inode=bindparam("inode")))
_DELETE_ENTRY = Prepared(delete(dentries).where(*_ENTRY))
# An UPDATE's parameters may not be named like the table's columns (master/prepared.py).
_AT_ENTRY = (dentries.c.parent == bindparam("at_parent"), dentries.c.name == bindparam("at_name"))
_MOVE_ENTRY = Prepared(update(dentries).where(*_AT_ENTRY).values(parent=bindparam("new_parent"),
                                                                 name=bindparam("new_name")))
_POINT_ENTRY = Prepared(update(dentries).where(*_AT_ENTRY).values(inode=bindparam("new_inode")))
_DELETE_INODE = Prepared(delete(inodes).where(_BY_ID))
_DELETE_XATTRS = Prepared(delete(xattrs).where(xattrs.c.inode == bindparam("inode")))
_ADD_LINKS = Prepared(update(inodes).where(_BY_ID).values(nlink=inodes.c.nlink + bindparam("delta"),
                                                          ctime_ns=bindparam("now")))
_SET_CTIME = Prepared(update(inodes).where(_BY_ID).values(ctime_ns=bindparam("now")))
_SET_ATTRS = Prepared(update(inodes).where(_BY_ID).values(
    {key: bindparam(key) for key in ("mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns")}))
_HAS_ENTRIES = Prepared(select(dentries.c.inode).where(dentries.c.parent == bindparam("inode")).limit(1))
_PARENT_OF = Prepared(select(dentries.c.parent).where(dentries.c.inode == bindparam("inode")).limit(1))
_READDIR_COLUMNS = (dentries.c.name, *ATTR_COLUMNS)
_READDIR_FROM = dentries.join(inodes, inodes.c.id == dentries.c.inode)
_READDIR = Prepared(select(*_READDIR_COLUMNS).select_from(_READDIR_FROM).where(dentries.c.parent == bindparam("inode"))
                    .order_by(dentries.c.name).limit(bindparam("limit")))
_READDIR_AFTER = Prepared(select(*_READDIR_COLUMNS).select_from(_READDIR_FROM)
                          .where(dentries.c.parent == bindparam("inode"), dentries.c.name > bindparam("after"))
                          .order_by(dentries.c.name).limit(bindparam("limit")))
_N_INODE = len(INODE_COLUMNS)


def get_inode(conn: Connection, inode: int) -> Any:
    """The InodeRow of `inode`; ENOENT if there is none."""
    row = _GET_INODE.first(conn, {"inode": inode})
    if row is None:
        raise DfsError(errno.ENOENT, f"no such inode {inode}")
    return row


def get_dir(conn: Connection, inode: int) -> Any:
    row = get_inode(conn, inode)
    if not stat.S_ISDIR(row.mode):
        raise DfsError(errno.ENOTDIR, f"inode {inode} is not a directory")
    return row


def find_entry(conn: Connection, parent: int, name: str) -> Any:
    """The inode named `name` in `parent`, or None."""
    return _FIND_ENTRY.first(conn, {"parent": parent, "name": name})


def dir_and_entry(conn: Connection, parent: int, name: str) -> tuple[Any, Any]:
    """Folder `parent` (ENOENT / ENOTDIR unless it is one) and its entry `name` (or None), in one statement."""
    row = _DIR_AND_ENTRY.first(conn, {"parent": parent, "name": name})
    if row is None:
        raise DfsError(errno.ENOENT, f"no such inode {parent}")
    folder = InodeRow._make(row[:_N_INODE])
    if not stat.S_ISDIR(folder.mode):
        raise DfsError(errno.ENOTDIR, f"inode {parent} is not a directory")
    return folder, (None if row[_N_INODE] is None else InodeRow._make(row[_N_INODE:]))


def get_entry(conn: Connection, parent: int, name: str) -> Any:
    """As `find_entry`, with ENOENT / ENOTDIR when there is none."""
    row = find_entry(conn, parent, name)
    if row is None:
        get_dir(conn, parent)
        raise DfsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
    return row


def touch_dir(conn: Connection, inode: int, now: int, nlink_delta: int = 0) -> None:
    """An entry of directory `inode` changed: mtime and ctime, and its link count for subdirectories."""
    _TOUCH_DIR.run(conn, {"inode": inode, "now": now, "delta": nlink_delta})


def check_symlink_target(target: str) -> str:
    if not target:
        raise DfsError(errno.ENOENT, "a symlink target cannot be empty")
    if "\0" in target:
        raise DfsError(errno.EINVAL, "a symlink target may not contain NUL")
    if len(encoded(target, "a symlink target")) > PATH_MAX:
        raise DfsError(errno.ENAMETOOLONG, f"symlink target is longer than {PATH_MAX} bytes")
    return target


@dataclass(slots=True)
class TailTruncate:
    """The last chunk of a shrunk file, to cut on its replicas after the transaction."""

    inode: int
    chunk_id: int
    version: int
    length: int
    servers: list[tuple[int, str]]


class Namespace:
    def __init__(self, db: Database, config: MasterConfig, registry: Registry, leases: LeaseTable,
                 session: Callable[[], aiohttp.ClientSession]) -> None:
        self.db = db
        self.config = config
        self.registry = registry
        self.leases = leases
        self._session = session

    # -- lookups --------------------------------------------------------------------------------

    async def resolve(self, path: str, follow: bool = False, *, caller: Caller = ROOT) -> Attr:
        parts = split_path(path)

        def txn(conn: Connection) -> Attr:
            return to_attr(self._walk(conn, parts, follow, path, caller))

        # One lookup after another, as the kernel walks a path: no snapshot needed (on PostgreSQL
        # a snapshot costs two more round trips, 5 instead of 3 for /a/b).
        return await self.db.run_read(txn, snapshot=False)

    def _walk(self, conn: Connection, parts: list[str], follow: bool, path: str, caller: Caller = ROOT) -> Any:
        # `stack` is the chain of directories from the root to the current one: ".." in a symlink
        # target pops it, an absolute target resets it.
        stack = [get_inode(conn, ROOT_INODE)]
        todo = list(reversed(parts))  # next component last
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            current = stack[-1]
            if not stat.S_ISDIR(current.mode):
                raise DfsError(errno.ENOTDIR, f"not a directory on the way to {path}")
            if caller.uid:
                require(caller, current, X_OK, f" on the way to {path}")
            row = find_entry(conn, current.id, name)
            if row is None:
                raise DfsError(errno.ENOENT, f"no such file or directory: {path}")
            if stat.S_ISLNK(row.mode) and (todo or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise DfsError(errno.ELOOP, f"too many levels of symbolic links: {path}")
                target: str = row.target or ""
                if target.startswith("/"):
                    stack = stack[:1]
                todo.extend(reversed(target.split("/")))
                continue
            stack.append(row)
        return stack[-1]

    async def lookup(self, parent: int, name: str, *, caller: Caller = ROOT) -> Attr:
        validate_name(name)

        def txn(conn: Connection) -> Attr:
            if not caller.uid:
                return to_attr(get_entry(conn, parent, name))
            _, row = self._lookup_in(conn, parent, name, caller)
            if row is None:
                raise DfsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
            return to_attr(row)

        return await self.db.run_read(txn, snapshot=False)

    async def getattr(self, inode: int, *, caller: Caller = ROOT, access: int = 0) -> Attr:
        """The attributes; with `access` (R_OK|W_OK|X_OK), EACCES unless the caller has that access."""

        def txn(conn: Connection) -> Attr:
            row = get_inode(conn, inode)
            if access:
                require(caller, row, access)
            return to_attr(row)

        return await self.db.run_read(txn, snapshot=False)

    async def readdir(self, inode: int, after: str | None, limit: int, *, caller: Caller = ROOT,
                      data: bool = False) -> tuple[list[tuple[str, Attr]], str | None, dict[int, bytes]]:
        """A page of entries, the name to continue after, and with `data` the resident bytes of the
        page's files the caller may read (up to PAGE_DATA bytes: a mount reading a folder of small
        files cold gets them in one round trip, as NFS's READDIRPLUS brings attributes)."""
        def txn(conn: Connection) -> tuple[list[tuple[str, Attr]], str | None, dict[int, bytes]]:
            if caller.uid:
                require(caller, get_dir(conn, inode), R_OK)
            if after is None:
                rows = _READDIR.rows(conn, {"inode": inode, "limit": limit + 1})
            else:
                rows = _READDIR_AFTER.rows(conn, {"inode": inode, "after": after, "limit": limit + 1})
            if not rows:
                get_dir(conn, inode)  # ENOENT / ENOTDIR rather than an empty listing
            entries = [(row[0], to_attr(row, 1)) for row in rows[:limit]]
            readable = [attr for _, attr in entries if attr.is_file and 0 < attr.size <= self.config.resident_max
                        and (not caller.uid or permitted(caller, attr, R_OK))] if data else []
            return entries, (entries[-1][0] if len(rows) > limit else None), \
                resident.read_many(conn, [attr.inode for attr in readable], PAGE_DATA)

        return await self.db.run_read(txn, snapshot=data)

    async def readlink(self, inode: int) -> str:
        def txn(conn: Connection) -> str:
            row = get_inode(conn, inode)
            if not stat.S_ISLNK(row.mode):
                raise DfsError(errno.EINVAL, f"inode {inode} is not a symbolic link")
            return str(row.target)

        return await self.db.run_read(txn, snapshot=False)

    # -- creation -------------------------------------------------------------------------------

    @staticmethod
    def _lookup_in(conn: Connection, parent: int, name: str, caller: Caller) -> tuple[Any, Any]:
        """Folder `parent` once the caller may search it (X_OK), and its entry `name` or None."""
        folder, row = dir_and_entry(conn, parent, name)
        if caller.uid:
            require(caller, folder, X_OK)
        return folder, row

    def _new_name(self, conn: Connection, parent: int, name: str, values: dict[str, Any], caller: Caller,
                  at: NewInode | None = None) -> Attr:
        """`_new_entry` for a name that must be new: EEXIST if the folder has it."""
        folder, existing = self._lookup_in(conn, parent, name, caller)
        if existing is not None:
            raise DfsError(errno.EEXIST, f"{name!r} already exists in directory {parent}")
        return self._new_entry(conn, parent, name, values, caller, folder, at)

    def _new_entry(self, conn: Connection, parent: int, name: str, values: dict[str, Any],
                   caller: Caller, folder: Any, at: NewInode | None = None) -> Attr:
        """Insert an inode and its entry in directory `parent` (its row `folder`), which the caller may
        search and found without `name` in this transaction. `at`: the inode number and time a client
        chose in a delegated folder (master/delegations.py); otherwise the next number, and now."""
        now = time.time_ns() if at is None else at.time_ns
        is_dir = stat.S_ISDIR(values["mode"])
        if caller.uid:  # a user's new inodes are theirs, whatever the request says; root may choose
            require(caller, folder, W_OK | X_OK)
            values["uid"], values["gid"] = caller.uid, caller.gid
        values["mode"], values["gid"] = inherited(folder.mode, folder.gid, values["mode"], values["gid"],
                                                  caller.uid, caller.in_group)
        if values.get("goal") is None:  # goals are inherited from the folder, as in MooseFS
            values["goal"] = folder.goal
        touch_dir(conn, parent, now, int(is_dir))
        values = {"atime_ns": now, "mtime_ns": now, "ctime_ns": now, "uid": 0, "gid": 0, "size": 0,
                  "rdev": 0, "target": None, **values}
        if at is None:
            inode = int(_INSERT_INODE.scalar(conn, values))
        else:
            inode = at.inode
            try:
                _INSERT_INODE_AT.run(conn, {**values, "inode": inode})
            except IntegrityError:
                raise DfsError(errno.EINVAL, f"inode number {inode} is taken") from None
        try:
            _INSERT_ENTRY.run(conn, {"parent": parent, "name": name, "inode": inode})
        except IntegrityError:  # a concurrent creator won (databases without the global write lock)
            raise DfsError(errno.EEXIST, f"{name!r} already exists in directory {parent}") from None
        return Attr(inode=inode, **{k: values[k] for k in ATTR_FIELDS})

    async def mkdir(self, parent: int, name: str, mode: int, uid: int, gid: int, *, caller: Caller = ROOT) -> Attr:
        validate_name(name)
        return await self.db.run_write(lambda conn: self.mkdir_in(conn, parent, name, mode, uid, gid, caller))

    def mkdir_in(self, conn: Connection, parent: int, name: str, mode: int, uid: int, gid: int, caller: Caller,
                 at: NewInode | None = None) -> Attr:
        """mkdir's transaction (`name` already validated)."""
        values = {"mode": stat.S_IFDIR | (mode & 0o7777), "uid": uid, "gid": gid, "nlink": 2, "goal": None}
        return self._new_name(conn, parent, name, values, caller, at)

    @staticmethod
    def check_create(name: str, mode: int, goal: int | None, caller: Caller) -> int:
        """What create's arguments must be (before its transaction): the file type it makes."""
        validate_name(name)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in MKNOD_TYPES:
            raise DfsError(errno.EINVAL, f"create cannot make a {oct(kind)} (use mkdir or symlink)")
        if goal is not None and not 1 <= goal <= MAX_GOAL:
            raise DfsError(errno.EINVAL, f"goal must be between 1 and {MAX_GOAL}")
        if caller.uid and kind in (stat.S_IFCHR, stat.S_IFBLK):
            raise DfsError(errno.EPERM, "only root may make device files")
        return kind

    async def create(self, parent: int, name: str, mode: int, uid: int, gid: int, exclusive: bool,
                     goal: int | None = None, rdev: int = 0, *, caller: Caller = ROOT) -> tuple[Attr, bool]:
        self.check_create(name, mode, goal, caller)
        return await self.db.run_write(
            lambda conn: self.create_in(conn, parent, name, mode, uid, gid, exclusive, goal, rdev, caller))

    def create_in(self, conn: Connection, parent: int, name: str, mode: int, uid: int, gid: int, exclusive: bool,
                  goal: int | None, rdev: int, caller: Caller, at: NewInode | None = None) -> tuple[Attr, bool]:
        """create's transaction (its arguments passed `check_create`)."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        folder, existing = self._lookup_in(conn, parent, name, caller)
        if existing is not None:
            if exclusive:
                raise DfsError(errno.EEXIST, f"{name!r} already exists in directory {parent}")
            if stat.S_ISDIR(existing.mode):
                raise DfsError(errno.EISDIR, f"{name!r} in directory {parent} is a directory")
            if not stat.S_ISREG(existing.mode) or kind != stat.S_IFREG:
                raise DfsError(errno.EEXIST, f"{name!r} already exists in directory {parent}")
            return to_attr(existing), False
        values = {"mode": kind | (mode & 0o7777), "uid": uid, "gid": gid, "nlink": 1, "goal": goal,
                  "rdev": rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0}
        return self._new_entry(conn, parent, name, values, caller, folder, at), True

    async def symlink(self, parent: int, name: str, target: str, uid: int, gid: int, *,
                      caller: Caller = ROOT) -> Attr:
        validate_name(name)
        check_symlink_target(target)
        return await self.db.run_write(lambda conn: self.symlink_in(conn, parent, name, target, uid, gid, caller))

    def symlink_in(self, conn: Connection, parent: int, name: str, target: str, uid: int, gid: int,
                   caller: Caller, at: NewInode | None = None) -> Attr:
        """symlink's transaction (`name` and `target` already checked)."""
        values = {"mode": stat.S_IFLNK | 0o777, "uid": uid, "gid": gid, "nlink": 1, "target": target,
                  "size": len(target.encode("utf-8", "surrogateescape")), "goal": None}  # the folder's, as all
        return self._new_name(conn, parent, name, values, caller, at)

    async def link(self, inode: int, new_parent: int, new_name: str, *, caller: Caller = ROOT) -> Attr:
        validate_name(new_name)

        def txn(conn: Connection) -> Attr:
            row = get_inode(conn, inode)
            if stat.S_ISDIR(row.mode):
                raise DfsError(errno.EPERM, f"inode {inode} is a directory: no hard links to directories")
            folder, existing = self._lookup_in(conn, new_parent, new_name, caller)
            if existing is not None:
                raise DfsError(errno.EEXIST, f"{new_name!r} already exists in directory {new_parent}")
            if caller.uid:
                require(caller, folder, W_OK | X_OK)
            now = time.time_ns()
            _INSERT_ENTRY.run(conn, {"parent": new_parent, "name": new_name, "inode": inode})
            _ADD_LINKS.run(conn, {"inode": inode, "delta": 1, "now": now})
            touch_dir(conn, new_parent, now)
            return to_attr(get_inode(conn, inode))

        return await self.db.run_write(txn)

    # -- removal --------------------------------------------------------------------------------

    def _drop_link(self, conn: Connection, row: Any, now: int, held: frozenset[int] = frozenset()) -> int | None:
        """One name of non-directory `row` is gone; at no name left the file is deleted (its
        inode returned: the caller drops its leases once the transaction is committed).

        A file the caller still has open (`held`) stays, with no name and nlink 0, until the
        caller's `forget`: POSIX keeps an unlinked file readable until its last close.
        """
        if row.nlink > 1 or row.id in held:
            _ADD_LINKS.run(conn, {"inode": row.id, "delta": -1, "now": now})
            return None
        garbage.delete_file_chunks(conn, row.id, 0, time.time() + self.config.gc_grace)
        self._drop_inode(conn, row.id)
        return int(row.id)

    def forget_deleted(self, inode: int | None) -> None:
        """After the commit that deleted file `inode` (if any): its leases go."""
        if inode is not None:
            self.leases.release(inode)
            log.debug("inode %d deleted", inode)

    @staticmethod
    def _drop_inode(conn: Connection, inode: int) -> None:
        """The inode's row, its extended attributes and resident bytes (a DELETE that finds none costs
        a lookup)."""
        _DELETE_XATTRS.run(conn, {"inode": inode})
        resident.drop(conn, inode)
        _DELETE_INODE.run(conn, {"inode": inode})

    def _has_entries(self, conn: Connection, inode: int) -> bool:
        return _HAS_ENTRIES.first(conn, {"inode": inode}) is not None

    def _victim(self, conn: Connection, parent: int, name: str, caller: Caller) -> Any:
        """The entry an unlink or rmdir removes, once the caller may remove it."""
        if not caller.uid:
            return get_entry(conn, parent, name)
        folder, row = self._lookup_in(conn, parent, name, caller)
        if row is None:
            raise DfsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
        require_may_delete(caller, folder, row)
        return row

    def _check_rename(self, conn: Connection, caller: Caller, parent: int, src: Any, new_parent: int,
                      folder: Any, dst: Any, exchange: bool) -> None:
        """rename(2)'s permissions: remove from the old folder, add to (or replace in) the new one,
        and a folder moving to another parent needs write permission on itself (its '..' changes)."""
        require_may_delete(caller, get_dir(conn, parent), src)
        if dst is None:
            require(caller, folder, W_OK | X_OK)
        else:
            require_may_delete(caller, folder, dst)
        if parent != new_parent:
            if stat.S_ISDIR(src.mode):
                require(caller, src, W_OK)
            if exchange and dst is not None and stat.S_ISDIR(dst.mode):
                require(caller, dst, W_OK)

    async def forget(self, inode: int, *, caller: Caller = ROOT) -> None:
        """The last open handle of an unlinked file (nlink 0) is closed: delete it now."""

        def txn(conn: Connection) -> int | None:
            row = _GET_INODE.first(conn, {"inode": inode})
            if row is None or row.nlink > 0 or stat.S_ISDIR(row.mode):
                return None
            _require_owner(caller, row, "forget it")
            return self._drop_link(conn, row, time.time_ns())

        self.forget_deleted(await self.db.run_write(txn))

    async def unlink(self, parent: int, name: str, held: frozenset[int] = frozenset(), *,
                     caller: Caller = ROOT) -> int:
        """Remove a file's name; the time stamped on the folder (its new mtime and ctime) is returned,
        so a client that caches the folder's attributes need not ask for them again."""
        validate_name(name)
        deleted, stamped = await self.db.run_write(lambda conn: self.unlink_in(conn, parent, name, held, caller))
        self.forget_deleted(deleted)
        return stamped

    def unlink_in(self, conn: Connection, parent: int, name: str, held: frozenset[int], caller: Caller,
                  now: int | None = None) -> tuple[int | None, int]:
        """unlink's transaction: (the inode deleted, for `forget_deleted` after the commit; the folder's
        new times)."""
        row = self._victim(conn, parent, name, caller)
        if stat.S_ISDIR(row.mode):
            raise DfsError(errno.EISDIR, f"{name!r} in directory {parent} is a directory")
        now = time.time_ns() if now is None else now
        _DELETE_ENTRY.run(conn, {"parent": parent, "name": name})
        touch_dir(conn, parent, now)
        return self._drop_link(conn, row, now, held), now

    async def rmdir(self, parent: int, name: str, *, caller: Caller = ROOT) -> None:
        validate_name(name)

        def txn(conn: Connection) -> None:
            row = self._victim(conn, parent, name, caller)
            if not stat.S_ISDIR(row.mode):
                raise DfsError(errno.ENOTDIR, f"{name!r} in directory {parent} is not a directory")
            if self._has_entries(conn, row.id):
                raise DfsError(errno.ENOTEMPTY, f"directory {name!r} (inode {row.id}) is not empty")
            now = time.time_ns()
            _DELETE_ENTRY.run(conn, {"parent": parent, "name": name})
            self._drop_inode(conn, row.id)
            touch_dir(conn, parent, now, -1)

        await self.db.run_write(txn)

    def _inside(self, conn: Connection, ancestor: int, inode: int) -> bool:
        """True if directory `inode` is `ancestor` or lies under it."""
        if ancestor == ROOT_INODE:
            return True
        current = inode
        for _ in range(MAX_DEPTH):
            if current == ancestor:
                return True
            if current == ROOT_INODE:
                return False
            parent = _PARENT_OF.scalar(conn, {"inode": current})
            if parent is None:
                return False
            current = parent
        raise DfsError(errno.ELOOP, f"directory {inode} is nested too deep")

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str, noreplace: bool = False,
                     exchange: bool = False, held: frozenset[int] = frozenset(), caller: Caller = ROOT) -> bool:
        """Whether any name changed: renaming one name of a file onto another of its names, or
        exchanging them, leaves both in place (rename(2) does nothing)."""
        validate_name(name)
        validate_name(new_name)
        if noreplace and exchange:
            raise DfsError(errno.EINVAL, "noreplace and exchange cannot be combined")

        def txn(conn: Connection) -> tuple[bool, int | None]:
            if caller.uid:
                _, src = self._lookup_in(conn, parent, name, caller)
                if src is None:
                    raise DfsError(errno.ENOENT, f"no entry {name!r} in directory {parent}")
            else:
                src = get_entry(conn, parent, name)
            folder, dst = self._lookup_in(conn, new_parent, new_name, caller)
            src_dir = stat.S_ISDIR(src.mode)
            dst_dir = dst is not None and stat.S_ISDIR(dst.mode)
            if caller.uid:
                self._check_rename(conn, caller, parent, src, new_parent, folder, dst, exchange)
            if exchange:
                if dst is None:
                    raise DfsError(errno.ENOENT, f"no entry {new_name!r} in directory {new_parent} to exchange with")
                if src.id == dst.id:
                    return False, None
                if src_dir and parent != new_parent and self._inside(conn, src.id, new_parent):
                    raise DfsError(errno.EINVAL, f"cannot move directory {name!r} into itself")
                if dst_dir and parent != new_parent and self._inside(conn, dst.id, parent):
                    raise DfsError(errno.EINVAL, f"cannot move directory {new_name!r} into itself")
                self._exchange(conn, parent, name, src, new_parent, new_name, dst)
                return True, None
            if dst is not None and noreplace:
                raise DfsError(errno.EEXIST, f"{new_name!r} already exists in directory {new_parent}")
            if dst is not None and dst.id == src.id:
                return False, None  # two names of one file: rename(2) does nothing
            if src_dir and parent != new_parent and self._inside(conn, src.id, new_parent):
                raise DfsError(errno.EINVAL, f"cannot move directory {name!r} into itself")
            now = time.time_ns()
            deleted = None
            if dst is not None:
                if src_dir and not dst_dir:
                    raise DfsError(errno.ENOTDIR, f"{new_name!r} in directory {new_parent} is not a directory")
                if dst_dir and not src_dir:
                    raise DfsError(errno.EISDIR, f"{new_name!r} in directory {new_parent} is a directory")
                if dst_dir and self._has_entries(conn, dst.id):
                    raise DfsError(errno.ENOTEMPTY, f"directory {new_name!r} (inode {dst.id}) is not empty")
                _DELETE_ENTRY.run(conn, {"parent": new_parent, "name": new_name})
                if dst_dir:
                    self._drop_inode(conn, dst.id)
                    touch_dir(conn, new_parent, now, -1)
                else:
                    deleted = self._drop_link(conn, dst, now, held)
            _MOVE_ENTRY.run(conn, {"at_parent": parent, "at_name": name, "new_parent": new_parent,
                                   "new_name": new_name})
            _SET_CTIME.run(conn, {"inode": src.id, "now": now})
            moved = 1 if src_dir and parent != new_parent else 0
            touch_dir(conn, parent, now, -moved)
            if new_parent != parent:
                touch_dir(conn, new_parent, now, moved)
            return True, deleted

        renamed, deleted = await self.db.run_write(txn)
        self.forget_deleted(deleted)
        return renamed

    def _exchange(self, conn: Connection, parent: int, name: str, src: Any, new_parent: int,
                  new_name: str, dst: Any) -> None:
        now = time.time_ns()
        _POINT_ENTRY.run(conn, {"at_parent": parent, "at_name": name, "new_inode": dst.id})
        _POINT_ENTRY.run(conn, {"at_parent": new_parent, "at_name": new_name, "new_inode": src.id})
        for inode in (src.id, dst.id):
            _SET_CTIME.run(conn, {"inode": inode, "now": now})
        shift = 0  # subdirectories moving from parent to new_parent
        if parent != new_parent:
            shift = int(stat.S_ISDIR(src.mode)) - int(stat.S_ISDIR(dst.mode))
        touch_dir(conn, parent, now, -shift)
        if new_parent != parent:
            touch_dir(conn, new_parent, now, shift)

    # -- attributes -----------------------------------------------------------------------------

    async def setattr(self, inode: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, atime_now: bool = False, mtime_now: bool = False,
                      caller: Caller = ROOT) -> Attr:
        """`atime_now`/`mtime_now` set a time to the master's clock (utimensat's UTIME_NOW: the owner or
        anyone who may write); explicit times are for the owner (or root) only."""
        if mode is not None and not 0 <= mode <= 0o7777:
            raise DfsError(errno.EINVAL, "mode must be permission bits (0 to 0o7777)")
        if size is not None:
            if size < 0:
                raise DfsError(errno.EINVAL, "size cannot be negative")
            if size > MAX_FILE_SIZE:
                raise DfsError(errno.EFBIG, f"size {size} is larger than the limit {MAX_FILE_SIZE}")

        live = {s.id: s.url for s in self.registry.live()}

        def txn(conn: Connection) -> tuple[Attr, int | None, TailTruncate | None]:
            row = get_inode(conn, inode)
            now = time.time_ns()
            values: dict[str, Any] = {"ctime_ns": now}
            new_mode = mode
            if caller.uid:
                new_mode = check_setattr(caller, row, mode=mode, uid=uid, gid=gid, size=size,
                                         times_set=atime_ns is not None or mtime_ns is not None,
                                         times_now=atime_now or mtime_now)
                if uid is not None or gid is not None:  # a chown by a user drops set-user-ID
                    killed = kill_suid(caller, row.mode if new_mode is None else stat.S_IFMT(row.mode) | new_mode)
                    if killed is not None:
                        new_mode = stat.S_IMODE(killed)
            if new_mode is not None:
                values["mode"] = stat.S_IFMT(row.mode) | new_mode
            if atime_now:
                values["atime_ns"] = now
            if mtime_now:
                values["mtime_ns"] = now
            if uid is not None:
                values["uid"] = uid
            if gid is not None:
                values["gid"] = gid
            if atime_ns is not None:
                values["atime_ns"] = atime_ns
            if mtime_ns is not None:
                values["mtime_ns"] = mtime_ns
            tail = None
            shrunk = None
            if size is not None:
                if stat.S_ISDIR(row.mode):
                    raise DfsError(errno.EISDIR, f"inode {inode} is a directory: it has no size to set")
                if not stat.S_ISREG(row.mode):
                    raise DfsError(errno.EINVAL, f"inode {inode} is not a regular file")
                if size != row.size:
                    values["size"] = size
                    values.setdefault("mtime_ns", now)
                if size < row.size:
                    shrunk = size
                    tail = self._shrink(conn, inode, size, live)
                    resident.cut(conn, inode, size)
            new = {"mode": row.mode, "uid": row.uid, "gid": row.gid, "size": row.size, "atime_ns": row.atime_ns,
                   "mtime_ns": row.mtime_ns, **values}
            _SET_ATTRS.run(conn, {"inode": inode, **new})
            attr = Attr(inode, new["mode"], new["uid"], new["gid"], new["size"], row.nlink, new["atime_ns"],
                        new["mtime_ns"], new["ctime_ns"], row.goal, row.rdev)
            return attr, shrunk, tail

        attr, shrunk, tail = await self.db.run_write(txn)
        if shrunk is not None:  # writers of the cut chunks must ask again
            self.leases.release(inode, first_index=shrunk // self.config.chunk_size)
        if tail is not None:
            await self._truncate_replicas(tail)
        return attr

    def _shrink(self, conn: Connection, inode: int, size: int, live: dict[int, str]) -> TailTruncate | None:
        """Drop the chunks past `size`; give the new last chunk a new version to cut it at."""
        chunk_size = self.config.chunk_size
        keep = -(-size // chunk_size)
        wall = time.time()
        garbage.delete_file_chunks(conn, inode, keep, wall + self.config.gc_grace)
        length = size % chunk_size
        if not length:
            return None
        index = size // chunk_size
        chunk = (conn.execute(select(chunks.c.chunk_id, chunks.c.version)
                              .where(chunks.c.inode == inode, chunks.c.idx == index))).first()
        if chunk is None:
            return None
        version = chunk.version + 1
        good: list[tuple[int, str]] = []
        stale: list[tuple[int, int, int]] = []
        for rep in conn.execute(select(replicas.c.server_id, replicas.c.version)
                                .where(replicas.c.chunk_id == chunk.chunk_id)):
            if rep.version == chunk.version and rep.server_id in live:
                good.append((rep.server_id, live[rep.server_id]))
            else:
                stale.append((chunk.chunk_id, rep.server_id, rep.version))
        garbage.drop_replicas(conn, stale, wall)
        conn.execute(update(chunks).where(chunks.c.chunk_id == chunk.chunk_id).values(version=version))
        conn.execute(update(replicas).where(replicas.c.chunk_id == chunk.chunk_id).values(version=version))
        return TailTruncate(inode, chunk.chunk_id, version, length, good)

    async def _truncate_replicas(self, tail: TailTruncate) -> None:
        session = self._session()

        async def cut(server_id: int, url: str) -> tuple[int, str, str | None]:
            try:
                async with session.post(f"{url}/chunks/{tail.chunk_id}/truncate",
                                        params={"version": str(tail.version), "length": str(tail.length)},
                                        headers=self.config.token_header("truncate", tail.chunk_id,
                                                                         tail.version)) as resp:
                    if resp.status != 200:
                        return server_id, url, f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return server_id, url, None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                return server_id, url, str(exc) or type(exc).__name__

        results = await asyncio.gather(*(cut(sid, url) for sid, url in tail.servers))
        failed = [(sid, url, problem) for sid, url, problem in results if problem is not None]
        for sid, url, problem in failed:
            log.warning("truncate of chunk %d v%d on chunkserver %d (%s) failed: %s; replica dropped",
                        tail.chunk_id, tail.version, sid, url, problem)
        if failed:
            def txn(conn: Connection) -> None:
                garbage.drop_replicas(conn, [(tail.chunk_id, sid, tail.version) for sid, _, _ in failed],
                                      time.time())

            await self.db.run_write(txn)

    # -- figures --------------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """Sizes of the tables, for the status page."""

        def txn(conn: Connection) -> dict[str, int]:
            def count(table: Any, *where: Any) -> int:
                return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)

            is_dir = inodes.c.mode.op("&")(S_IFMT) == stat.S_IFDIR
            return {"inodes": count(inodes), "directories": count(inodes, is_dir), "chunks": count(chunks),
                    "replicas": count(replicas), "garbage": count(garbage_table),
                    "resident_files": count(resident_table)}

        return await self.db.run_read(txn)
