"""Alembic's entry point, run by master/migrate.py on a connection already inside a transaction.

There is no alembic.ini: master/migrate.py configures alembic in code and hands the connection over
in `config.attributes["connection"]`, so a migration commits or rolls back with the caller's work.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from dfs.master.schema import Name, metadata


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | bool:
    """Autogenerate writes plain SQLAlchemy types, never our Python-side wrappers."""
    if kind == "type" and isinstance(obj, Name):
        return "sa.LargeBinary()"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `dfs master --upgrade-db` or `python -m dfs.master.migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  render_item=render_item, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
