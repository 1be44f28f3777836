"""The master's database: transactions written once as plain synchronous SQLAlchemy Core functions
`fn(conn)`, run as `await db.run_write(fn)` / `await db.run_read(fn)`.

SQLite (the default, any `sqlite+...` URL): the stdlib driver over one connection that the event
loop uses directly, one transaction at a time. A round trip is what bounds metadata speed, and a
thread hop per transaction cost ~180 µs here (a getattr went from 0.42 to 0.24 ms without it;
through aiosqlite, with four hops per statement, a create took 6.3 ms). Since the loop runs one
`fn` at a time to its end, writes are serialised for free (SQLite has one writer; we never meet
"database is locked") and open with BEGIN IMMEDIATE (SQLAlchemy's documented recipe: the driver's
own BEGIN is switched off and ours is emitted from the "begin" event). Long scans of background
jobs (`run_read(..., background=True)`: fsck, repair, balance plans) run in reader threads on WAL
snapshots instead, so they never stall the namespace.

Checkpoints (copying the WAL back into the database, with an fsync of each: what synchronous=NORMAL
still syncs) run in a reader thread too, every CHECKPOINT_COMMITS write transactions, instead of in
the commit that crossed SQLite's 1,000 pages: that commit took milliseconds, ~100 µs a create on
average on a busy disk. A checkpoint beside a busy writer may never catch up with it, and the WAL
only starts over once one has; past WAL_LIMIT frames (or WAL_LIMIT / 4 writes without a checkpoint's
report: the reader threads may be busy with a scan) one runs on the loop, as SQLite's own would.

Any other database (PostgreSQL: `postgresql+asyncpg://`, or `postgresql+psycopg://`): its async driver
through AsyncEngine and `AsyncConnection.run_sync(fn)`. Writes run SERIALIZABLE and are run again on a
serialisation failure or deadlock, so every `fn` must be safe to run twice: it changes nothing but
the database (decisions about memory are taken on its result, after the commit). This master still
sends its writes one at a time: PostgreSQL's predicate locks cover whole index pages, so concurrent
creates even in separate folders failed each other (8 writers: 728 serialisation failures in 800
creates, 298 creates/s; one at a time: none, 437/s). SERIALIZABLE keeps them correct should they
overlap (another master process, a tool). Reads run concurrently with everything: snapshot reads in
REPEATABLE READ (read-only: never a serialisation failure), single statements in autocommit.

The schema is kept by alembic (master/migrate.py): `start` creates an empty database at the newest
revision and refuses one at another revision (SchemaError); `upgrade` migrates.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, pool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dfs.master import migrate
from dfs.master.metrics import timed
from dfs.master.schema import create_root

log = logging.getLogger("master.db")

T = TypeVar("T")
Txn = Callable[[Connection], T]

#: SQLSTATEs meaning "run the transaction again" (serialization failure, deadlock).
_RETRY_STATES = {"40001", "40P01"}
_RETRIES = 30
READER_THREADS = 4
#: Connections a PostgreSQL master keeps open per isolation level, and how many more it may open
#: under load (at most 35 in all; PostgreSQL allows 100 by default).
POOLS = {"SERIALIZABLE": 8, "REPEATABLE READ": 4, "AUTOCOMMIT": 8}
POOL_OVERFLOW = 5
#: Write transactions between two background checkpoints (a create writes 5-6 pages).
CHECKPOINT_COMMITS = 200
#: WAL frames (pages) past which the loop checkpoints itself (~40 MiB of 4 KiB pages).
WAL_LIMIT = 10_000
_BEGIN = {mode: f"BEGIN {mode}" for mode in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")}


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRY_STATES


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("background checkpoint failed: %s", future.exception())


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":  # SQLAlchemy's default driver is not an async one
            parsed = parsed.set(drivername="postgresql+asyncpg")
        self.url = parsed
        self.dialect = parsed.get_backend_name()  # "sqlite", "postgresql", ...
        self.is_sqlite = self.dialect == "sqlite"
        self.sync_engine: Engine | None = None
        self.async_engine: AsyncEngine | None = None
        if self.is_sqlite:
            database = parsed.database or ""
            memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
            options: dict[str, Any] = {
                # Every transaction ends in COMMIT or ROLLBACK: no extra rollback on return to the pool.
                "pool_reset_on_return": None,
                "connect_args": {"check_same_thread": False},
            }
            if memory:  # one connection is the whole database: one thread for everything
                options["poolclass"] = pool.StaticPool
            self.sync_engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), **options)
            self._setup_sqlite(self.sync_engine)
            self._memory = memory
            self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="db-read")
            self._conn: Connection | None = None  # the event loop's own connection
            self._conn_begin: str | None = None  # the dfs_begin it has now
            self._commits = 0  # write transactions since the last background checkpoint started
            self._wal_frames = 0  # the WAL's length when the last checkpoint looked
            self._unreported = 0  # write transactions since a checkpoint last told the WAL's length
            self._checkpoint: asyncio.Future[None] | None = None
        else:
            self._writer = asyncio.Lock()
            # One engine (and pool) per isolation level: switching a pooled connection's level costs
            # round trips on every checkout and return (a transaction took 1.3-1.9 ms instead of 0.3-1).
            # Every transaction ends in COMMIT or ROLLBACK, so no reset on return either.
            self._engines = {level: create_async_engine(parsed, isolation_level=level, pool_reset_on_return=None,
                                                        pool_size=size, max_overflow=POOL_OVERFLOW)
                             for level, size in POOLS.items()}
            self.async_engine = self._engines["SERIALIZABLE"]

    @staticmethod
    def _setup_sqlite(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=OFF",
                           "wal_autocheckpoint=0", f"journal_size_limit={WAL_LIMIT * 4096}"):
                dbapi_connection.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("dfs_begin", "DEFERRED")
            if mode:  # "": autocommit, for a single statement that needs no snapshot
                # On the driver's connection: through exec_driver_sql it cost 20 µs more a transaction.
                conn.connection.dbapi_connection.execute(_BEGIN[mode])  # type: ignore[union-attr]

    async def start(self, goal: int) -> None:
        """Check the schema's revision (SchemaError if it is not the newest), create the schema and the
        root directory if this is a new database."""
        await self.run_write(migrate.check)
        await self.run_write(lambda conn: create_root(conn, goal))
        log.info("metadata database %s ready", self.url.render_as_string(hide_password=True))

    async def upgrade(self) -> tuple[str | None, str]:
        """Migrate to the newest schema revision: (revision before, revision now)."""
        return await self.run_write(migrate.upgrade)

    async def close(self) -> None:
        if self.sync_engine is not None:
            self._readers.shutdown(wait=True)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.sync_engine.dispose()
        if self.async_engine is not None:
            for engine in self._engines.values():
                await engine.dispose()

    # -- SQLite: one transaction, one thread hop ----------------------------------------------------

    def _sqlite_txn(self, fn: Txn[T], begin: str) -> T:
        """In a reader thread, on a connection of the pool."""
        assert self.sync_engine is not None
        with self.sync_engine.connect() as conn:
            conn.execution_options(dfs_begin=begin)
            with conn.begin():
                return fn(conn)

    def _inline_txn(self, fn: Txn[T], begin: str) -> T:
        """On the event loop, on its own connection: no other transaction can run meanwhile."""
        conn = self._conn
        if conn is None:
            assert self.sync_engine is not None
            conn = self._conn = self.sync_engine.connect()
            self._conn_begin = None
        if self._conn_begin != begin:  # costs a few µs: only when it changes
            conn.execution_options(dfs_begin=begin)
            self._conn_begin = begin
        with conn.begin():
            return fn(conn)

    def _checkpointed(self) -> None:
        """After a write transaction: start a background checkpoint now and then; checkpoint here if
        the WAL outgrew what they could catch up with."""
        if self._memory:
            return
        self._commits += 1
        self._unreported += 1
        if self._wal_frames >= WAL_LIMIT or self._unreported >= WAL_LIMIT // 4:
            assert self._conn is not None
            self._checkpoint_on(self._conn)  # nothing writes meanwhile: the next write starts the WAL over
            self._wal_frames = self._unreported = 0
        if self._commits >= CHECKPOINT_COMMITS and (self._checkpoint is None or self._checkpoint.done()):
            self._commits = 0
            self._checkpoint = asyncio.get_running_loop().run_in_executor(self._readers, self._background_checkpoint)
            self._checkpoint.add_done_callback(_log_failure)

    def _background_checkpoint(self) -> None:
        assert self.sync_engine is not None
        with self.sync_engine.connect() as conn:
            self._wal_frames = self._checkpoint_on(conn)
        self._unreported = 0

    @staticmethod
    def _checkpoint_on(conn: Connection) -> int:
        """A PASSIVE checkpoint (it never waits for the writer) outside any transaction: the WAL's
        length in frames."""
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        _busy, frames, _done = dbapi.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames)

    # -- other databases ----------------------------------------------------------------------------

    async def _async_txn(self, fn: Txn[T], isolation: str) -> T:
        engine = self._engines[isolation]
        for attempt in range(_RETRIES):
            try:
                async with engine.connect() as conn, conn.begin():
                    return await conn.run_sync(fn)
            except DBAPIError as exc:
                if not _retryable(exc) or attempt == _RETRIES - 1:
                    raise
                log.debug("transaction %s run again after %s", getattr(fn, "__qualname__", fn), exc.orig)
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # jitter: no lockstep
        raise AssertionError("unreachable")

    # -- the interface ------------------------------------------------------------------------------

    @timed("write")
    async def run_write(self, fn: Txn[T]) -> T:
        """`fn(conn)` in one write transaction, committed before this returns."""
        if self.sync_engine is not None:
            result = self._inline_txn(fn, "IMMEDIATE")
            self._checkpointed()
            return result
        async with self._writer:
            return await self._async_txn(fn, "SERIALIZABLE")

    @timed("read")
    async def run_read(self, fn: Txn[T], snapshot: bool = True, background: bool = False) -> T:
        """`fn(conn)` reading one consistent snapshot, or (`snapshot=False`) without an explicit
        transaction, cheaper for a single statement. `background`: a long scan, kept off the loop."""
        if self.sync_engine is not None:
            begin = "DEFERRED" if snapshot else ""
            if background and not self._memory:
                return await asyncio.get_running_loop().run_in_executor(self._readers, self._sqlite_txn, fn, begin)
            return self._inline_txn(fn, begin)
        return await self._async_txn(fn, "REPEATABLE READ" if snapshot else "AUTOCOMMIT")
