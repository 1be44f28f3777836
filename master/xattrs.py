"""Extended attributes (getxattr/setxattr/listxattr/removexattr), each one transaction."""

from __future__ import annotations

import errno
import time

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from dfs.errors import DfsError
from dfs.master.db import Database
from dfs.master.namespace import get_inode
from dfs.master.permissions import ROOT, Caller, check_xattr, visible_xattr
from dfs.master.prepared import Prepared
from dfs.master.schema import inodes, xattrs
from dfs.names import encoded

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024
XATTR_CREATE, XATTR_REPLACE = 1, 2

# The kernel asks for security.capability before every write(2): a getxattr is prepared
# (master/prepared.py), and tells a missing inode from a missing attribute in one statement.
_VALUE = Prepared(select(inodes.c.id, xattrs.c.value)
                  .select_from(inodes.outerjoin(xattrs, and_(xattrs.c.inode == inodes.c.id,
                                                             xattrs.c.name == bindparam("name"))))
                  .where(inodes.c.id == bindparam("inode")))


class Xattrs:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _xattr_name(name: str) -> str:
        if not name:
            raise DfsError(errno.EINVAL, "an extended attribute name cannot be empty")
        if "\0" in name:
            raise DfsError(errno.EINVAL, "an extended attribute name may not contain NUL")
        if len(encoded(name, "an extended attribute name")) > XATTR_NAME_MAX:
            raise DfsError(errno.ERANGE, f"extended attribute name longer than {XATTR_NAME_MAX} bytes")
        return name

    async def getxattr(self, inode: int, name: str, *, caller: Caller = ROOT) -> bytes:
        self._xattr_name(name)

        def txn(conn: Connection) -> bytes:
            if caller.uid:
                check_xattr(caller, get_inode(conn, inode), name, write=False)
            row = _VALUE.first(conn, {"inode": inode, "name": name})
            if row is None:
                raise DfsError(errno.ENOENT, f"no such inode {inode}")
            if row.value is None:
                raise DfsError(errno.ENODATA, f"inode {inode} has no extended attribute {name!r}")
            return bytes(row.value)

        return await self.db.run_read(txn, snapshot=False)

    async def setxattr(self, inode: int, name: str, value: bytes, flags: int = 0, *, caller: Caller = ROOT) -> None:
        self._xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise DfsError(errno.E2BIG, f"extended attribute value larger than {XATTR_SIZE_MAX} bytes")
        if flags not in (0, XATTR_CREATE, XATTR_REPLACE):
            raise DfsError(errno.EINVAL, f"unknown setxattr flags {flags}")

        def txn(conn: Connection) -> None:
            check_xattr(caller, get_inode(conn, inode), name, write=True)
            where = (xattrs.c.inode == inode, xattrs.c.name == name)
            exists = conn.scalar(select(func.count()).select_from(xattrs).where(*where))
            if exists and flags == XATTR_CREATE:
                raise DfsError(errno.EEXIST, f"inode {inode} already has extended attribute {name!r}")
            if not exists and flags == XATTR_REPLACE:
                raise DfsError(errno.ENODATA, f"inode {inode} has no extended attribute {name!r}")
            if exists:
                conn.execute(update(xattrs).where(*where).values(value=value))
            else:
                conn.execute(insert(xattrs).values(inode=inode, name=name, value=value))
            conn.execute(update(inodes).where(inodes.c.id == inode).values(ctime_ns=time.time_ns()))

        await self.db.run_write(txn)

    async def listxattr(self, inode: int, *, caller: Caller = ROOT) -> list[str]:
        def txn(conn: Connection) -> list[str]:
            get_inode(conn, inode)
            result = conn.execute(select(xattrs.c.name).where(xattrs.c.inode == inode).order_by(xattrs.c.name))
            return [r[0] for r in result if visible_xattr(caller, r[0])]

        return await self.db.run_read(txn, snapshot=False)

    async def removexattr(self, inode: int, name: str, *, caller: Caller = ROOT) -> None:
        self._xattr_name(name)

        def txn(conn: Connection) -> None:
            check_xattr(caller, get_inode(conn, inode), name, write=True)
            result = conn.execute(delete(xattrs).where(xattrs.c.inode == inode, xattrs.c.name == name))
            if not result.rowcount:
                raise DfsError(errno.ENODATA, f"inode {inode} has no extended attribute {name!r}")
            conn.execute(update(inodes).where(inodes.c.id == inode).values(ctime_ns=time.time_ns()))

        await self.db.run_write(txn)
