"""Schema revisions (master/migrate.py): created at the head, checked at start, upgraded on request.

Runs on the tests' backend (SQLite, or PostgreSQL with DFS_TEST_DB=postgresql), on fresh databases.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from dfs.master import migrate
from dfs.master.schema import metadata
from tests.harness import Cluster, http_json
from tests.pgserver import backend, fresh_database_url, sync_url

EXTRA_REVISION = '''
import sqlalchemy as sa
from alembic import op

revision = "t9001"
down_revision = {head!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("test_extra", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("test_extra")
'''


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A new empty database: `dfs master --db` form."""
    return fresh_database_url() or f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(sync_url(db_url))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def extra_versions(tmp_path: Path) -> Path:
    """A folder with one more revision on top of the head, as a later version of the master would have."""
    folder = tmp_path / "versions"
    folder.mkdir()
    (folder / "t9001_test_extra.py").write_text(EXTRA_REVISION.format(head=migrate.head()))
    return folder


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return migrate.current(conn)


def master(db_url: str, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dfs", "master", "--data", str(data), "--db", db_url,
                           "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_migrations_build_schema_py(engine: Engine) -> None:
    """Running every migration gives exactly the tables of master/schema.py: a change to schema.py
    without its migration fails here (`python -m dfs.master.migrate revision "..."` writes it)."""
    with engine.begin() as conn:
        migrate.check(conn)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []
    assert revision_of(engine) == migrate.head()


def test_fresh_start_stamps_head(tmp_path: Path, db_url: str, engine: Engine) -> None:
    cluster = Cluster(root=tmp_path / "cluster", db_url=db_url)
    try:
        cluster.start(chunkservers=0, gateway=False)
    finally:
        cluster.stop()
    assert revision_of(engine) == migrate.head()
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM inodes WHERE id = 1")) == 1  # the root


def test_upgrade_db_on_empty_database(tmp_path: Path, db_url: str, engine: Engine) -> None:
    done = master(db_url, tmp_path / "data", "--upgrade-db")
    assert done.returncode == 0, done.stderr
    assert f"upgraded from schema revision (empty) to {migrate.head()}" in done.stderr
    assert revision_of(engine) == migrate.head()
    assert {"inodes", "dentries", "chunks", "replicas", "alembic_version"} <= set(inspect(engine).get_table_names())
    again = master(db_url, tmp_path / "data", "--upgrade-db")
    assert again.returncode == 0 and "already at schema revision" in again.stderr


def test_out_of_date_database_is_refused_then_upgraded(engine: Engine, extra_versions: Path) -> None:
    with engine.begin() as conn:
        migrate.check(conn)  # at today's head
    with engine.begin() as conn, pytest.raises(migrate.SchemaError) as refused:
        migrate.check(conn, extra_versions)  # a newer master's view
    assert f"at schema revision {migrate.head()}, this master needs t9001" in str(refused.value)
    assert "dfs master --upgrade-db" in str(refused.value)
    with engine.begin() as conn:
        assert migrate.upgrade(conn, extra_versions) == (migrate.head(), "t9001")
    with engine.begin() as conn:
        migrate.check(conn, extra_versions)
    assert "test_extra" in inspect(engine).get_table_names()


def test_master_refuses_a_database_it_cannot_run_on(tmp_path: Path, db_url: str, engine: Engine,
                                                    extra_versions: Path) -> None:
    with engine.begin() as conn:
        migrate.upgrade(conn, extra_versions)  # made by a newer master
    done = master(db_url, tmp_path / "data")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "schema revision t9001, which this master does not know" in errors[0]
    assert "Traceback" not in done.stderr


def test_database_from_before_migrations_is_adopted(engine: Engine) -> None:
    """A database made by create_all (no alembic_version) is stamped at the initial revision."""
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), migrate.INITIAL)
        conn.execute(text("DROP TABLE alembic_version"))
    assert revision_of(engine) is None
    newest = migrate.head() == migrate.INITIAL
    with engine.begin() as conn:
        if newest:
            migrate.check(conn)
        else:
            with pytest.raises(migrate.SchemaError, match="dfs master --upgrade-db"):
                migrate.check(conn)
    if newest:
        assert revision_of(engine) == migrate.INITIAL
    with engine.begin() as conn:
        assert migrate.upgrade(conn) == (migrate.INITIAL, migrate.head())
    assert revision_of(engine) == migrate.head()


@pytest.mark.skipif(backend() != "postgresql", reason="PostgreSQL only (DFS_TEST_DB=postgresql)")
def test_master_runs_on_psycopg_too(tmp_path: Path, db_url: str) -> None:
    url = make_url(db_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    cluster = Cluster(root=tmp_path / "cluster", db_url=url)
    try:
        cluster.start(chunkservers=0, gateway=False)
        assert http_json("POST", cluster.master_url + "/api/mkdir", {"parent": 1, "name": "d"})[0] == 200
        assert http_json("POST", cluster.master_url + "/api/mkdir", {"parent": 1, "name": "d"})[0] == 409
        assert http_json("POST", cluster.master_url + "/api/lookup", {"parent": 1, "name": "d"})[0] == 200
    finally:
        cluster.stop()
