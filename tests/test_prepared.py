"""Prepared statements (master/prepared.py): the rows and errors SQLAlchemy's execute gives, and the
statements a create and an unlink cost on SQLite (a count that must not grow back)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.exc import IntegrityError

from dfs.errors import DfsError
from dfs.master import namespace as ns
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.namespace import Namespace
from dfs.master.permissions import Caller
from dfs.master.prepared import Prepared
from dfs.master.schema import dentries
from dfs.master.servers import Registry
from tests.pgserver import fresh_database_url

pytestmark = pytest.mark.timeout(60)

USER = Caller(1000, 1000, frozenset())


@pytest.fixture
def master(tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, Namespace]]:
    loop = asyncio.new_event_loop()
    config = MasterConfig(data_dir=tmp_path, db_url=fresh_database_url())
    db = Database(config.database_url)
    loop.run_until_complete(db.start(config.goal))
    registry = Registry(db, config)
    loop.run_until_complete(registry.load())
    try:
        yield loop, Namespace(db, config, registry, LeaseTable(), lambda: None)  # type: ignore[arg-type,return-value]
    finally:
        loop.run_until_complete(db.close())
        loop.close()


def test_prepared_rows_are_sqlalchemys(master: tuple[asyncio.AbstractEventLoop, Namespace]) -> None:
    loop, space = master
    folder = loop.run_until_complete(space.mkdir(1, "d\udcff", 0o755, 7, 8))
    loop.run_until_complete(space.symlink(folder.inode, "l\udcfe", "t\udcfd/é", 7, 8))

    def compare(conn: Connection) -> None:
        for statement, params in ((ns._FIND_ENTRY, {"parent": folder.inode, "name": "l\udcfe"}),
                                  (ns._GET_INODE, {"inode": folder.inode}),
                                  (ns._DIR_AND_ENTRY, {"parent": folder.inode, "name": "l\udcfe"}),
                                  (ns._DIR_AND_ENTRY, {"parent": folder.inode, "name": "none"}),
                                  (ns._READDIR, {"inode": folder.inode, "limit": 10}),
                                  (ns._READDIR_AFTER, {"inode": 1, "after": "a", "limit": 10})):
            mine = statement.rows(conn, params)
            theirs = conn.execute(statement.statement, params).all()
            assert [tuple(row) for row in mine] == [tuple(row) for row in theirs]
            assert mine and all(row._fields == tuple(their._fields) for row, their in zip(mine, theirs, strict=True))
        link = ns.find_entry(conn, folder.inode, "l\udcfe")
        assert link.target == "t\udcfd/é" and link.uid == 7

    loop.run_until_complete(space.db.run_read(compare))


def test_prepared_errors_are_sqlalchemys(master: tuple[asyncio.AbstractEventLoop, Namespace]) -> None:
    loop, space = master
    add = Prepared(insert(dentries).values(parent=bindparam("parent"), name=bindparam("name"),
                                           inode=bindparam("inode")))

    def twice(conn: Connection) -> None:
        add.run(conn, {"parent": 1, "name": "x", "inode": 5})
        add.run(conn, {"parent": 1, "name": "x", "inode": 6})

    with pytest.raises(IntegrityError):
        loop.run_until_complete(space.db.run_write(twice))
    rows = loop.run_until_complete(space.db.run_read(
        lambda conn: conn.execute(select(dentries.c.name).where(dentries.c.parent == 1)).all()))
    assert rows == []  # the failed transaction was rolled back whole


def test_create_and_unlink_statements(master: tuple[asyncio.AbstractEventLoop, Namespace]) -> None:
    loop, space = master
    if not space.db.is_sqlite:
        pytest.skip("counts SQLite's statements")
    folder = loop.run_until_complete(space.mkdir(1, "d", 0o777, 0, 0))
    statements: list[str] = []

    def trace(conn: Connection) -> None:
        conn.connection.dbapi_connection.set_trace_callback(statements.append)  # type: ignore[union-attr]

    loop.run_until_complete(space.db.run_read(trace))
    for caller in (Caller(0, 0, frozenset()), USER):
        statements.clear()
        made, _ = loop.run_until_complete(space.create(folder.inode, "f", 0o644, 0, 0, True, caller=caller))
        # BEGIN, the folder with its entry, the folder's times, the inode, the entry, COMMIT
        assert len(statements) == 6, statements
        statements.clear()
        loop.run_until_complete(space.unlink(folder.inode, "f", caller=caller))
        # BEGIN, the entry, its removal, the folder's times, no chunks, xattrs, resident bytes, the inode, COMMIT
        assert len(statements) == 9, statements
        with pytest.raises(DfsError) as err:
            loop.run_until_complete(space.getattr(made.inode))
        assert err.value.errno == errno.ENOENT
