"""Fixtures: a real cluster of processes per test module, always stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.client.sync import LoopThread
from tests import pgserver
from tests.harness import Cluster


@pytest.fixture(scope="session", autouse=True)
def metadata_backend() -> Iterator[pgserver.PgServer | None]:
    """The throwaway PostgreSQL server when DFS_TEST_DB=postgresql (tests/pgserver.py), else None."""
    with pgserver.session_backend() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Master, three chunkservers (1 MiB chunks, goal 3) and a gateway."""
    c = Cluster(root=tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own for tests that kill or restart processes; started by the test."""
    c = Cluster(root=tmp_path / "cluster")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An event loop in a thread, for the client library's coroutines."""
    runner = LoopThread()
    try:
        yield runner
    finally:
        runner.stop()
