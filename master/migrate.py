"""Schema revisions of the metadata database, kept by alembic in master/migrations/ (no alembic.ini).

At every start (`check`): an empty database is built by running every migration and so stamped at
the head; a database at the head is used as it is; a database made before migrations existed (our
tables but no `alembic_version`) is stamped at the initial revision, which is what it has; any other
revision makes the master refuse to start, naming `dfs master --upgrade-db`, which runs `upgrade`.

A schema change is a change to master/schema.py plus a revision made by

    .venv/bin/python -m dfs.master.migrate revision "add access keys"

which compares schema.py with a scratch database at the current head and writes
master/migrations/versions/NNNN_<slug>.py for review.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, inspect

log = logging.getLogger("master.migrate")
logging.getLogger("alembic").setLevel(logging.WARNING)  # our own lines say what happened

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
INITIAL = "0001"
UPGRADE_HINT = "run `dfs master --upgrade-db` with the same --data/--db, then start the master again"


class SchemaError(Exception):
    """The database's schema revision is not the one this master runs with."""


def alembic_config(conn: Connection | None = None, extra_versions: Path | None = None) -> Config:
    """Alembic configured in code; `extra_versions` adds a folder of revisions (tests)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if extra_versions is not None:
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", f"{MIGRATIONS / 'versions'}:{extra_versions}")
    config.attributes["connection"] = conn
    return config


def head(extra_versions: Path | None = None) -> str:
    revision = ScriptDirectory.from_config(alembic_config(None, extra_versions)).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    """The revision the database is stamped with, None if it has none."""
    return MigrationContext.configure(conn).get_current_revision()


def _adopt(conn: Connection, config: Config) -> str | None:
    """The database's revision, after stamping a pre-migration database with the initial one."""
    revision = current(conn)
    if revision is None and inspect(conn).has_table("inodes"):
        command.stamp(config, INITIAL)
        log.info("metadata database made before schema migrations: stamped at revision %s", INITIAL)
        return INITIAL
    return revision


def check(conn: Connection, extra_versions: Path | None = None) -> None:
    """At start: build an empty database at the head, accept one at the head, else SchemaError."""
    config = alembic_config(conn, extra_versions)
    target = head(extra_versions)
    revision = _adopt(conn, config)
    if revision is None:
        command.upgrade(config, "head")
        log.info("metadata schema created at revision %s", target)
        return
    if revision == target:
        return
    try:
        ScriptDirectory.from_config(config).get_revision(revision)
    except CommandError:
        raise SchemaError(f"metadata database is at schema revision {revision}, which this master does not know "
                          f"(made by a newer version?); it runs revision {target}") from None
    raise SchemaError(f"metadata database is at schema revision {revision}, this master needs {target}: "
                      f"{UPGRADE_HINT}")


def upgrade(conn: Connection, extra_versions: Path | None = None) -> tuple[str | None, str]:
    """Bring the database to the head (an empty one is created); (revision before, revision now)."""
    config = alembic_config(conn, extra_versions)
    before = _adopt(conn, config)
    command.upgrade(config, "head")
    return before, head(extra_versions)


def make_revision(message: str) -> Path:
    """Autogenerate the next revision from the differences between schema.py and the head."""
    number = max((int(p.name[:4]) for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")),
                 default=0) + 1
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/scratch.db")
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        with engine.begin() as conn:
            script = command.revision(alembic_config(conn), message=message, autogenerate=True,
                                      rev_id=f"{number:04d}")
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)  # versions/NNNN_<slug>.py: alembic's default file name


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "revision":
        print('usage: python -m dfs.master.migrate revision "what changes"', file=sys.stderr)
        return 2
    path = make_revision(argv[1])
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: review it, "
          "then run the migration tests (tests/test_migrations.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
