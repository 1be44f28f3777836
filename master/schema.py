"""The master's tables (SQLAlchemy Core): the one description of the metadata schema.

A change here needs a migration: `python -m dfs.master.migrate revision "what changes"` (master/migrate.py).

Names (directory entries, symlink targets, xattr names) are stored as UTF-8 bytes encoded with
`surrogateescape`, so that names which are not valid UTF-8 (FUSE hands them to us that way) survive,
and so that every database sorts them the same way: bytewise, as `readdir` pages them.
"""

from __future__ import annotations

import stat
import time
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    select,
)
from sqlalchemy.types import TypeDecorator

from dfs.protocol import ROOT_INODE

# SQLite only makes `INTEGER PRIMARY KEY` an alias of the rowid (and AUTOINCREMENT needs exactly that).
Id = BigInteger().with_variant(Integer(), "sqlite")


class Name(TypeDecorator[str]):
    """A `str` stored as its UTF-8 (surrogateescape) bytes."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return value.encode("utf-8", "surrogateescape")

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return bytes(value).decode("utf-8", "surrogateescape")


metadata = MetaData()

inodes = Table(
    "inodes", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("mode", Integer, nullable=False),  # includes the S_IFMT type bits
    Column("uid", BigInteger, nullable=False, default=0),
    Column("gid", BigInteger, nullable=False, default=0),
    Column("size", BigInteger, nullable=False, default=0),
    Column("nlink", Integer, nullable=False, default=1),
    Column("atime_ns", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("ctime_ns", BigInteger, nullable=False),
    Column("target", Name, nullable=True),  # symlinks only
    Column("goal", Integer, nullable=False),
    Column("rdev", BigInteger, nullable=False, default=0),
    sqlite_autoincrement=True,  # inode numbers are never reused (clients cache them)
)

dentries = Table(
    "dentries", metadata,
    Column("parent", Id, nullable=False),
    Column("name", Name, nullable=False),
    Column("inode", Id, nullable=False),
    PrimaryKeyConstraint("parent", "name"),
    Index("ix_dentries_inode", "inode"),
)

chunks = Table(
    "chunks", metadata,
    Column("chunk_id", Id, primary_key=True, autoincrement=True),
    Column("inode", Id, nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    UniqueConstraint("inode", "idx", name="uq_chunks_inode_idx"),
    sqlite_autoincrement=True,  # chunk ids are never reused: names on disk derive from them
)

replicas = Table(
    "replicas", metadata,
    Column("chunk_id", Id, nullable=False),
    Column("server_id", Id, nullable=False),
    Column("version", BigInteger, nullable=False),
    PrimaryKeyConstraint("chunk_id", "server_id"),
    Index("ix_replicas_server", "server_id"),
)

servers = Table(
    "servers", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("uuid", String(128), nullable=False, unique=True),
    Column("url", String(2048), nullable=False),
    Column("capacity", BigInteger, nullable=False, default=0),
    Column("used", BigInteger, nullable=False, default=0),
    Column("free", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False, default="live"),
    Column("last_heartbeat", Float, nullable=False, default=0.0),  # wall clock, for display only
    sqlite_autoincrement=True,
)

xattrs = Table(
    "xattrs", metadata,
    Column("inode", Id, nullable=False),
    Column("name", Name, nullable=False),
    Column("value", LargeBinary, nullable=False),
    PrimaryKeyConstraint("inode", "name"),
)

#: Resident data (master/resident.py): the bytes of a small file's first chunk slot, kept here
#: instead of on chunkservers, as NTFS keeps a small file's data in its MFT record.
resident = Table(
    "resident", metadata,
    Column("inode", Id, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

#: Administrative state of a chunkserver (master/decommission.py): "draining" or "decommissioned".
#: A server without a row is in service.
server_states = Table(
    "server_states", metadata,
    Column("server_id", Id, primary_key=True),
    Column("state", String(16), nullable=False),
)

garbage = Table(
    "garbage", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("chunk_id", Id, nullable=False),
    Column("server_id", Id, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("not_before", Float, nullable=False),  # wall clock: the queue survives restarts
    Index("ix_garbage_server", "server_id", "not_before"),
)


#: Access keys (master/keys.py): a client sends `dfs_<key_id>_<secret>`; only the SHA-256 of the
#: secret is kept. Revoked keys stay (revoked = when) so that `dfs admin keys list` shows them.
access_keys = Table(
    "access_keys", metadata,
    Column("name", String(64), primary_key=True),
    Column("key_id", String(16), nullable=False, unique=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("gid", BigInteger, nullable=False),
    Column("groups", String(4096), nullable=False, default=""),  # supplementary gids, comma-separated
    Column("scope", String(16), nullable=False),  # admin, proxy, rw, ro
    Column("created", Float, nullable=False),  # wall clock
    Column("expires", Float, nullable=True),  # wall clock; None: never
    Column("revoked", Float, nullable=True),  # wall clock; None: in force
)


def create_root(conn: Connection, goal: int) -> None:
    """Create the root directory (inode 1) in a new database; the tables come from master/migrate.py."""
    if conn.scalar(select(func.count()).select_from(inodes).where(inodes.c.id == ROOT_INODE)):
        return
    now = time.time_ns()
    # No explicit id: the first id of a fresh table is 1 on every database, and an explicit one
    # would leave PostgreSQL's sequence behind.
    result = conn.execute(insert(inodes).values(
        mode=stat.S_IFDIR | 0o755, uid=0, gid=0, size=0, nlink=2,
        atime_ns=now, mtime_ns=now, ctime_ns=now, target=None, goal=goal, rdev=0,
    ))
    if result.inserted_primary_key[0] != ROOT_INODE:
        raise RuntimeError("the inodes table is not empty but has no root directory")
