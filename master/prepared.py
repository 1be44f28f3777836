"""Hot statements, compiled once and run on SQLite's own cursor.

SQLAlchemy's `Connection.execute` costs ~25 µs a statement in Python (an execution context, events,
parameter and result processing) where sqlite3's cursor takes ~3 µs; a create runs five statements,
an unlink six. A `Prepared` wraps a prebuilt Core statement: on SQLite it is compiled once for the
dialect and run with the DBAPI connection that the SQLAlchemy `Connection` holds, inside the
transaction that Connection opened, with the same bind and result processors SQLAlchemy would apply
(a `Name` is still encoded and decoded). Rows are named tuples: `row.mode` and `row[1:12]` read them
as they read SQLAlchemy's rows. On any other database it is `conn.execute(statement, params)`: there a
round trip to the server dwarfs the Python around it.

Only plain statements qualify: named `bindparam`s and literals, no expanding IN lists, no Python-side
column defaults (an insert names every column). `Prepared` checks this when it first compiles.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Update, ValuesBase

Processor = Callable[[Any], Any] | None


class _Compiled:
    """A statement as SQLite runs it: its SQL, where each positional parameter comes from, and how a
    row is made."""

    __slots__ = ("binds", "make_row", "returns_rows", "sql")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch or compiled.positiontup is None:
            raise TypeError(f"not a plain statement (Python-side defaults or named parameters): {compiled}")
        self.sql = compiled.string
        #: Per position: (parameter name or None, fixed value, bind processor).
        self.binds: list[tuple[str | None, Any, Processor]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding:
                raise TypeError(f"an expanding parameter ({name}) cannot be prepared: {compiled}")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:  # bindparam("name"): a parameter of the call
                self.binds.append((bind.key, None, process))
            else:  # a literal of the statement (`nlink + 1`)
                self.binds.append((None, bind.effective_value, process))
        self.returns_rows = bool(compiled.returning) or bool(getattr(statement, "is_select", False))
        self.make_row: Callable[[tuple[Any, ...]], Any] | None = None
        if self.returns_rows:
            columns = list(getattr(statement, "selected_columns", None) or compiled.returning or ())
            keys = [column.key for column in columns]
            row_type = namedtuple("Row", keys)  # type: ignore[misc]
            processors = [column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns]
            if any(processors):
                def make(raw: tuple[Any, ...]) -> Any:
                    return row_type._make([value if p is None or value is None else p(value)
                                           for p, value in zip(processors, raw, strict=True)])
                self.make_row = make
            else:
                self.make_row = row_type._make

    def parameters(self, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for key, fixed, process in self.binds:
            value = fixed if key is None else params[key]
            out.append(value if process is None or value is None else process(value))
        return out


class Prepared:
    """A prebuilt statement: `rows`, `first`, `scalar` for what returns rows, `run` (the row count)
    for what changes them."""

    __slots__ = ("_sqlite", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._sqlite: tuple[Dialect, _Compiled] | None = None
        if isinstance(statement, ValuesBase | Update):
            _check_keys(statement)

    def _compiled(self, conn: Connection) -> _Compiled | None:
        dialect = conn.dialect
        if dialect.name != "sqlite":
            return None
        cached = self._sqlite
        if cached is None or cached[0] is not dialect:
            cached = self._sqlite = (dialect, _Compiled(self.statement, dialect))
        return cached[1]

    def _cursor(self, conn: Connection, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        parameters = compiled.parameters(params)
        try:
            return dbapi.execute(compiled.sql, parameters)
        except sqlite3.Error as exc:  # as SQLAlchemy raises it (IntegrityError, OperationalError...)
            raise DBAPIError.instance(compiled.sql, parameters, exc, sqlite3.Error) from exc

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        compiled = self._compiled(conn)
        if compiled is None:
            return list(conn.execute(self.statement, params))
        assert compiled.make_row is not None
        return [compiled.make_row(raw) for raw in self._cursor(conn, compiled, params).fetchall()]

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first row, or None."""
        compiled = self._compiled(conn)
        if compiled is None:
            return conn.execute(self.statement, params).first()
        # fetchall: the statement is done with (a pending one would hold its table), and the
        # statements prepared here find one row by key, or a LIMIT 1.
        raw = self._cursor(conn, compiled, params).fetchall()
        assert compiled.make_row is not None
        return compiled.make_row(raw[0]) if raw else None

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = self.first(conn, params)
        return None if row is None else row[0]

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute; the number of rows changed."""
        compiled = self._compiled(conn)
        if compiled is None:
            return int(conn.execute(self.statement, params).rowcount)
        return int(self._cursor(conn, compiled, params).rowcount)


def _check_keys(statement: ValuesBase | Update) -> None:
    """SQLAlchemy's execute adds to an INSERT's VALUES or an UPDATE's SET every parameter named like a
    column of the table: such a name would change what the statement does on other databases."""
    compiled = statement.compile()
    names = [compiled.binds[name].key for name in compiled.binds]
    with_keys = statement.compile(column_keys=names)
    if with_keys.string != compiled.string:
        raise TypeError(f"a parameter is named like a column it does not set: {compiled}")
