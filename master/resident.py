"""Resident data: the bytes of small files, kept by the master (docs/PROTOCOL.md "Resident data").

A small file written whole costs a chunk-based write three master calls (create, lease, commit), a
write to every replica, and a chunkserver read at each later open; on a 2-core host that is most of
the time a 4 KiB file takes. So a regular file's first chunk slot may be *resident*: its bytes are
a row of the `resident` table, as NTFS keeps a small file's data in its MFT record and Lustre's
data-on-MDT on the metadata server. The commit carries them, and an open for reading gets them
with its attributes. Their durability is the metadata's: they are in every backup of the database,
and a file's goal does not apply to them.

The rules, all kept inside the transactions of this module's callers:
- While a file has a resident row, that row *is* slot 0 (bytes past its end read as zeros up to the
  slot's end); a chunk in slot 0, if one exists, is not read.
- A commit carries resident bytes only for a file with no chunk at all, and only below the
  master's `resident_max`; otherwise it is refused with EXDEV and the client writes to chunkservers.
- A lease of slot 0 of a file with a resident row first moves the bytes into the leased chunk
  (master/placement.py writes them to its replicas), then drops the row.
- A truncate cuts the row; deleting the file drops it. The row is never longer than the file.
"""

from __future__ import annotations

import errno

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from dfs.errors import DfsError
from dfs.master.prepared import Prepared
from dfs.master.schema import chunks, resident

_READ = Prepared(select(resident.c.data).where(resident.c.inode == bindparam("inode")))
_ANY_CHUNK = Prepared(select(chunks.c.chunk_id).where(chunks.c.inode == bindparam("inode")).limit(1))
_INSERT = Prepared(insert(resident).values(inode=bindparam("inode"), data=bindparam("data")))
_UPDATE = Prepared(update(resident).where(resident.c.inode == bindparam("key")).values(data=bindparam("data")))
_DELETE = Prepared(delete(resident).where(resident.c.inode == bindparam("inode")))


def read(conn: Connection, inode: int) -> bytes | None:
    """The resident bytes of `inode` (None: it has none, its data is in chunks)."""
    data = _READ.scalar(conn, {"inode": inode})
    return None if data is None else bytes(data)


def read_many(conn: Connection, inodes: list[int], cap: int) -> dict[int, bytes]:
    """The resident bytes of those of `inodes` that have some, in that order until `cap` bytes."""
    found: dict[int, bytes] = {}
    total = 0
    for start in range(0, len(inodes), 500):  # bound the statement's parameters
        batch = inodes[start:start + 500]
        rows = dict(conn.execute(select(resident.c.inode, resident.c.data).where(resident.c.inode.in_(batch))).all())
        for inode in batch:
            data = rows.get(inode)
            if data is None:
                continue
            if total + len(data) > cap:
                return found
            found[inode] = bytes(data)
            total += len(data)
    return found


def patch(conn: Connection, inode: int, extents: list[tuple[int, bytes]], limit: int, size: int) -> None:
    """Write `extents` (offset, bytes) into `inode`'s resident bytes, made if it has none; `size`
    is the file's size as the writer sees it. EXDEV when the file has chunks or the bytes would
    reach past `limit`."""
    end = max((offset + len(data) for offset, data in extents), default=0)
    if end > size:
        raise DfsError(errno.EINVAL, f"inode {inode}: resident bytes reach {end}, past the size {size} committed")
    if end > limit:
        raise DfsError(errno.EXDEV, f"inode {inode}: {end} bytes are more than the master keeps "
                                    f"({limit}): write them to chunkservers")
    if _ANY_CHUNK.first(conn, {"inode": inode}) is not None:
        raise DfsError(errno.EXDEV, f"inode {inode} has chunks: write its data to chunkservers")
    old = read(conn, inode)
    data = bytearray(old or b"")
    if len(data) < end:
        data.extend(bytes(end - len(data)))
    for offset, piece in extents:
        data[offset : offset + len(piece)] = piece
    if old is None:
        _INSERT.run(conn, {"inode": inode, "data": bytes(data)})
    else:
        _UPDATE.run(conn, {"key": inode, "data": bytes(data)})


def cut(conn: Connection, inode: int, size: int) -> None:
    """The file shrank to `size` bytes: so do its resident bytes (none left: no row)."""
    old = read(conn, inode)
    if old is None or len(old) <= size:
        return
    if size == 0:
        drop(conn, inode)
    else:
        _UPDATE.run(conn, {"key": inode, "data": old[:size]})


def drop(conn: Connection, inode: int) -> None:
    _DELETE.run(conn, {"inode": inode})


def drop_if_unchanged(conn: Connection, inode: int, data: bytes) -> bool:
    """Drop the row if it still holds `data` (its bytes were copied into a chunk meanwhile)."""
    if read(conn, inode) != data:
        return False
    drop(conn, inode)
    return True
