"""The SQLite master's checkpoints (master/db.py): in a reader thread every CHECKPOINT_COMMITS writes,
and on the loop once the WAL outgrows WAL_LIMIT, so that it stays bounded under a steady writer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Connection

from dfs.master import db as dbmodule
from dfs.master.config import MasterConfig
from dfs.master.db import Database
from dfs.master.leases import LeaseTable
from dfs.master.namespace import Namespace
from dfs.master.servers import Registry

pytestmark = pytest.mark.timeout(60)


def test_checkpoints_keep_the_wal_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbmodule, "CHECKPOINT_COMMITS", 20)
    monkeypatch.setattr(dbmodule, "WAL_LIMIT", 300)

    async def run() -> tuple[int, int]:
        config = MasterConfig(data_dir=tmp_path, db_url=f"sqlite:///{tmp_path / 'meta.db'}")
        db = Database(config.database_url)
        await db.start(config.goal)
        registry = Registry(db, config)
        await registry.load()
        space = Namespace(db, config, registry, LeaseTable(), lambda: None)  # type: ignore[arg-type,return-value]
        try:
            longest = 0
            for i in range(1500):
                await space.create(1, f"f{i}", 0o644, 0, 0, True)
                await asyncio.sleep(0)  # as between requests: a finished checkpoint's callback runs
                longest = max(longest, db._wal_frames)
            checkpoints = db._checkpoint
            assert checkpoints is not None
            await checkpoints

            def frames(conn: Connection) -> int:
                return int(conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])

            return longest, await db.run_read(frames, snapshot=False)
        finally:
            await db.close()

    longest, now = asyncio.run(run())
    # Without checkpoints 1,500 creates leave ~9,000 frames. With them the WAL starts over whenever
    # it passed 300 frames (plus what was written while a checkpoint ran, before the loop heard).
    assert 0 < longest < 2000
    assert now < 2000
