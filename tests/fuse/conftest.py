"""Fixtures for real FUSE mounts: a cluster per module, mounted, unmounted whatever happens."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.launcher import Mount
from tests.harness import Cluster

needs_fuse = pytest.mark.skipif(shutil.which("fusermount3") is None or not Path("/dev/fuse").exists(),
                                reason="fuse3 is not installed")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fuse/" in str(item.fspath):
            item.add_marker(needs_fuse)


@pytest.fixture(scope="module")
def mounted_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Mount]]:
    root = tmp_path_factory.mktemp("fusecluster")
    cluster = Cluster(root=root)
    # the mount point must be reachable by other users for the permission tests: not under pytest's 0700 tmp
    mountpoint = Path(tempfile.mkdtemp(prefix="dfs-mnt-"))
    mountpoint.chmod(0o755)
    mount = Mount("", mountpoint, root / "mount.log", args=["--allow-other"])
    try:
        cluster.start(gateway=True)
        mount.master_url = cluster.master_url
        mount.start()
        yield cluster, mount
    finally:
        mount.stop()
        cluster.stop()
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


@pytest.fixture
def mnt(mounted_cluster: tuple[Cluster, Mount]) -> Path:
    """A fresh folder inside the mount for one test."""
    folder = mounted_cluster[1].mountpoint / f"t-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder
