"""A throwaway PostgreSQL server for the tests and benchmarks, and the choice of test database.

`PgServer.start()` runs initdb into a new temporary folder and `pg_ctl start` with the unix socket in
that folder and a TCP port on 127.0.0.1; `create_database()` makes one empty database (one per
cluster); `stop()` stops the server and removes the folder. initdb refuses to run as root, so as root
both run as the `postgres` user (as Debian's package creates it). `PgServer.existing(URL)` uses a
server someone else runs instead (databases are created there and left behind).

The tests' backend: `DFS_TEST_DB=postgresql` makes every cluster the tests start use a fresh
database on one throwaway server per test session (or on `DFS_TEST_PG_URL`, e.g.
`postgresql://postgres@127.0.0.1:5432/postgres`); unset or `sqlite`: each master's own SQLite file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from dfs.launcher import free_port

PG_ROOTS = Path("/usr/lib/postgresql")
BACKENDS = ("sqlite", "postgresql")
_names = itertools.count(1)


def pg_bin() -> Path:
    """The newest installed server's bin folder (Debian keeps one per major version)."""
    override = os.environ.get("DFS_PG_BIN")
    if override:
        return Path(override)
    versions = sorted((p for p in PG_ROOTS.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise RuntimeError(f"no PostgreSQL server under {PG_ROOTS} (apt-get install postgresql)")
    return versions[-1]


class PgServer:
    def __init__(self, admin_url: str | None = None, *, durable: bool = False) -> None:
        #: durable=False (tests): no fsync at all. True (benchmarks): WAL flushed as PostgreSQL does by
        #: default, except that commits do not wait for it (synchronous_commit=off), which is what
        #: SQLite's WAL with synchronous=NORMAL promises: a crash of the process loses nothing.
        self.admin_url = admin_url
        self.durable = durable
        self.root: Path | None = None
        self.port = 0
        self._as_postgres = os.geteuid() == 0

    @classmethod
    def existing(cls, admin_url: str) -> PgServer:
        return cls(admin_url)

    def _run(self, argv: list[str]) -> None:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> PgServer:
        if self.admin_url is not None:
            return self
        binaries = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="dfs-pg-"))
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--locale=C", *([] if self.durable else ["--no-sync"])])
        self.port = free_port()
        settings = {"listen_addresses": "127.0.0.1", "max_connections": "400", "shared_buffers": "128MB"}
        if self.durable:
            settings["synchronous_commit"] = "off"
        else:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        options = f"-k {self.root} -p {self.port} " + " ".join(f"-c {k}={v}" for k, v in settings.items())
        self._run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w",
                   "-t", "60", "-o", options, "start"])
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        with contextlib.suppress(RuntimeError):
            self._run([str(pg_bin() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL for `dfs master --db` (asyncpg)."""
        import psycopg  # the tests' driver (the master's is asyncpg)

        assert self.admin_url is not None, "start() first"
        name = name or f"dfs_{os.getpid()}_{next(_names)}"
        admin = make_url(self.admin_url)
        with psycopg.connect(admin.set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)


# -- the tests' backend ---------------------------------------------------------------------------

_session: PgServer | None = None


def backend() -> str:
    name = os.environ.get("DFS_TEST_DB", "sqlite").lower() or "sqlite"
    if name not in BACKENDS:
        raise RuntimeError(f"DFS_TEST_DB must be one of {', '.join(BACKENDS)}, not {name!r}")
    return name


@contextlib.contextmanager
def session_backend() -> Iterator[PgServer | None]:
    """For the whole test session: the PostgreSQL server if the tests run on PostgreSQL."""
    global _session
    if backend() != "postgresql":
        yield None
        return
    external = os.environ.get("DFS_TEST_PG_URL")
    server = PgServer.existing(external) if external else PgServer()
    try:
        _session = server.start()
        yield server
    finally:
        _session = None
        server.stop()


def fresh_database_url() -> str | None:
    """A fresh database for one cluster, or None for the master's own SQLite file."""
    if backend() != "postgresql":
        return None
    if _session is None:
        raise RuntimeError("DFS_TEST_DB=postgresql but no server: tests/conftest.py starts it for the session")
    return _session.create_database()


def sync_url(url: str) -> str:
    """The same database through a synchronous driver, for tests that read it directly."""
    parsed = make_url(url)
    driver = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)
