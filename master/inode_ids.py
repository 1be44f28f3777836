"""Inode numbers handed out ahead of time, for the files a client creates in a delegated folder
(master/delegations.py): it answers the kernel with the inode number before the master has the file.

The numbers come from the inodes table's own counter, which the master's inserts use too, so no
number is ever given twice: SQLite's AUTOINCREMENT counter (sqlite_sequence) is moved on by the
count, PostgreSQL's sequence is drawn from. Other databases reserve nothing (`supported`), and their
clients create synchronously.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

#: Numbers one `reserve` call hands out.
RESERVE_MAX = 4096


def supported(dialect: str) -> bool:
    return dialect in ("sqlite", "postgresql")


def reserve(conn: Connection, count: int) -> list[int]:
    """`count` inode numbers nobody has used or will use, inside a write transaction."""
    if conn.dialect.name == "sqlite":
        last = conn.execute(text("UPDATE sqlite_sequence SET seq = seq + :n WHERE name = 'inodes' RETURNING seq"),
                            {"n": count}).scalar_one()
        return list(range(int(last) - count + 1, int(last) + 1))
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text("SELECT nextval(pg_get_serial_sequence('inodes', 'id')) "
                                 "FROM generate_series(1, :n)"), {"n": count})
        return sorted(int(row[0]) for row in rows)
    raise NotImplementedError(f"no inode reservations on {conn.dialect.name}")


def high_water(conn: Connection) -> int:
    """Every inode number below this one has been handed out (used or reserved) already."""
    if conn.dialect.name == "sqlite":
        last = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'inodes'")).scalar()
        return int(last or 0) + 1
    if conn.dialect.name == "postgresql":
        sequence = conn.execute(text("SELECT pg_get_serial_sequence('inodes', 'id')")).scalar_one()
        row = conn.execute(text(f"SELECT last_value, is_called FROM {sequence}")).one()
        return int(row[0]) + 1 if row[1] else int(row[0])
    return 0


class Reservations:
    """The numbers each client session was handed and has not used yet (in memory). A session this
    master does not know (it reserved before a restart) may use numbers below `boot`, the counter
    when this master started; a number in use is refused by the database either way."""

    def __init__(self) -> None:
        self.boot = 0
        self._by_session: dict[str, set[int]] = {}

    def add(self, session: str, numbers: list[int]) -> None:
        self._by_session.setdefault(session, set()).update(numbers)

    def claim(self, session: str, inode: int) -> bool:
        """Whether `session` may give a new inode this number (it is then used up)."""
        mine = self._by_session.get(session)
        if mine is not None and inode in mine:
            mine.discard(inode)
            return True
        return 1 < inode < self.boot

    def unused(self, session: str) -> int:
        return len(self._by_session.get(session, ()))

    def end_session(self, session: str) -> None:
        self._by_session.pop(session, None)
