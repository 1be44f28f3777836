"""Two mounts of one cluster, the gateway beside a mount, and failures under a mount."""

from __future__ import annotations

import errno
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.auth import auth_headers
from dfs.client.sync import SyncClient
from dfs.launcher import Mount
from tests.harness import TEST_ADMIN_KEY, Cluster

MiB = 1024 * 1024


@pytest.fixture
def second_mount(mounted_cluster: tuple[Cluster, Mount], tmp_path: Path) -> Iterator[Path]:
    cluster, _ = mounted_cluster
    mount = Mount(cluster.master_url, tmp_path / "mnt2", tmp_path / "mount2.log")
    try:
        mount.start()
        yield mount.mountpoint
    finally:
        mount.stop()


def test_close_to_open_between_two_mounts(mnt: Path, mounted_cluster, second_mount: Path) -> None:
    other = second_mount / mnt.name
    path = mnt / "shared"
    for round_ in range(3):
        data = os.urandom(MiB + round_ * 1000)
        path.write_bytes(data)  # closed: the other mount's next open must see it all
        assert (other / "shared").read_bytes() == data
    (other / "shared").write_bytes(b"from the other side")
    assert path.read_bytes() == b"from the other side"


def test_names_visible_across_mounts(mnt: Path, second_mount: Path) -> None:
    other = second_mount / mnt.name
    (mnt / "made-here").mkdir()
    deadline = time.monotonic() + 3  # at most the entry timeout (1 s) of a stale negative entry
    while not (other / "made-here").is_dir():
        assert time.monotonic() < deadline, "a folder made on one mount never showed on the other"
        time.sleep(0.05)
    os.rmdir(other / "made-here")
    deadline = time.monotonic() + 3
    while (mnt / "made-here").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_other_mounts_names_show_in_a_folder_this_mount_fills(mnt: Path, mounted_cluster, second_mount: Path) -> None:
    """This mount answers lookups in a folder it made (or listed) from its cache, and patches the folder's
    times after its own creates: another mount's new name still shows within the entry timeout."""
    cluster, mount = mounted_cluster
    folder = mnt / "filling"
    folder.mkdir()
    (folder / "first").touch()
    (second_mount / mnt.name / "filling" / "from-there").touch()
    started = time.monotonic()
    count = 0
    while not (folder / "from-there").exists():
        assert time.monotonic() - started < 2.5, "a name made on the other mount stayed hidden past the timeout"
        (folder / f"here-{count}").touch()  # keep this mount busy adding names to the folder
        count += 1
        time.sleep(0.01)
    with SyncClient(cluster.master_url) as fs:  # the folder's times, as this mount patched them, are the master's
        relative = "/" + str(folder.relative_to(mount.mountpoint))
        (folder / "last").touch()
        seen = os.stat(folder)
        master = fs.stat(relative)
        assert (seen.st_mtime_ns, seen.st_ctime_ns, seen.st_nlink) == (master.mtime_ns, master.ctime_ns, master.nlink)
        (folder / "sub").mkdir()
        assert os.stat(folder).st_nlink == fs.stat(relative).nlink == 3


def test_mount_and_gateway_agree(mnt: Path, mounted_cluster) -> None:
    cluster, mount = mounted_cluster
    assert cluster.gateway is not None
    relative = mnt.relative_to(mount.mountpoint)
    data = os.urandom(2 * MiB + 7)
    (mnt / "via-mount").write_bytes(data)
    auth = auth_headers(TEST_ADMIN_KEY)
    fetch = urllib.request.Request(f"{cluster.gateway.url}/fs/{relative}/via-mount", headers=auth)
    with urllib.request.urlopen(fetch, timeout=30) as resp:
        assert resp.read() == data
    request = urllib.request.Request(f"{cluster.gateway.url}/fs/{relative}/via-http", data=b"over http",
                                     method="PUT", headers=auth)
    with urllib.request.urlopen(request, timeout=30):
        pass
    deadline = time.monotonic() + 3  # a new name may take the entry timeout (1 s) to show
    while not (mnt / "via-http").exists():
        assert time.monotonic() < deadline, "a file uploaded over HTTP never showed on the mount"
        time.sleep(0.05)
    assert (mnt / "via-http").read_bytes() == b"over http"


@pytest.mark.timeout(300)
def test_big_folder_listing(mnt: Path, mounted_cluster) -> None:
    """A folder of 100,000 entries lists whole and right (made through the client library: fast)."""
    import asyncio

    from dfs.client import Client

    cluster, mount = mounted_cluster
    count = 100_000

    async def fill() -> None:
        async with Client(cluster.master_url) as client:
            folder = await client.makedir("/" + str(mnt.relative_to(mount.mountpoint)) + "/big")
            names = iter(range(count))

            async def worker() -> None:
                for i in names:
                    await client.create(folder.inode, f"entry-{i:06d}", 0o644)

            await asyncio.gather(*(worker() for _ in range(16)))

    asyncio.run(fill())
    listing = os.listdir(mnt / "big")
    assert len(listing) == count
    assert sorted(listing)[:2] == ["entry-000000", "entry-000001"] and "entry-099999" in listing


def test_reads_and_writes_survive_a_chunkserver_kill(fresh_cluster: Cluster, tmp_path: Path) -> None:
    fresh_cluster.start(chunkservers=3, gateway=False)
    mount = Mount(fresh_cluster.master_url, tmp_path / "mnt", tmp_path / "mount.log", args=["--master-timeout", "10"])
    try:
        mount.start()
        data = os.urandom(8 * MiB)
        (mount.mountpoint / "before").write_bytes(data)
        errors: list[BaseException] = []
        written = os.urandom(12 * MiB)

        def writer() -> None:
            try:
                with open(mount.mountpoint / "during", "wb") as f:
                    for i in range(0, len(written), 256 * 1024):
                        f.write(written[i : i + 256 * 1024])
                        time.sleep(0.01)
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.2)
        fresh_cluster.chunkservers[0].kill()
        assert (mount.mountpoint / "before").read_bytes() == data  # a read fails over
        thread.join(timeout=60)
        assert not thread.is_alive() and not errors, errors
        assert (mount.mountpoint / "during").read_bytes() == written
    finally:
        mount.stop()


def test_master_down_gives_eio_not_a_hang(fresh_cluster: Cluster, tmp_path: Path) -> None:
    fresh_cluster.start(chunkservers=1, gateway=False)
    mount = Mount(fresh_cluster.master_url, tmp_path / "mnt", tmp_path / "mount.log",
                  args=["--master-timeout", "2", "--attr-timeout", "0", "--entry-timeout", "0"])
    try:
        mount.start()
        (mount.mountpoint / "f").write_bytes(b"x")
        assert fresh_cluster.master is not None
        fresh_cluster.master.kill()
        started = time.monotonic()
        with pytest.raises(OSError) as exc:
            os.stat(mount.mountpoint / "g")
        assert exc.value.errno == errno.EIO
        assert time.monotonic() - started < 10
        fresh_cluster.start_master()  # back: the same mount works again
        deadline = time.monotonic() + 20
        while True:
            try:
                assert (mount.mountpoint / "f").read_bytes() == b"x"
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        mount.stop()
    assert not mount.running
