"""Folders a mount made are delegated to it (docs/PROTOCOL.md "Folder delegations"): it creates and
removes in them without the master, and another mount, the gateway or a plain client still sees
every change the moment it looks, and collides with it as POSIX says."""

from __future__ import annotations

import errno
import os
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.auth import auth_headers
from dfs.client.sync import SyncClient
from dfs.launcher import Mount
from tests.harness import TEST_ADMIN_KEY, Cluster, free_port
from tests.scrape import scrape, value


@pytest.fixture
def metered(mounted_cluster: tuple[Cluster, Mount], tmp_path: Path) -> Iterator[tuple[Mount, str]]:
    """A second mount of the cluster, with its metrics."""
    cluster, _ = mounted_cluster
    port = free_port()
    mount = Mount(cluster.master_url, tmp_path / "mnt2", tmp_path / "mount2.log", args=["--metrics-port", str(port)])
    try:
        mount.start()
        yield mount, f"http://127.0.0.1:{port}/metrics"
    finally:
        mount.stop()


def _calls(before: dict, after: dict, op: str) -> float:
    return sum(value(after, "dfs_client_master_calls_total", operation=op, result=result)
               - value(before, "dfs_client_master_calls_total", operation=op, result=result)
               for result in ("ok", "error"))


def _made_by(mount: Mount, prefix: str) -> Path:
    """A new folder made through `mount`: delegated to it."""
    folder = mount.mountpoint / f"{prefix}-{time.monotonic_ns()}"
    folder.mkdir()
    return folder


def test_a_folder_made_here_fills_without_the_master(metered: tuple[Mount, str],
                                                    mounted_cluster: tuple[Cluster, Mount]) -> None:
    mount, url = metered
    cluster, first = mounted_cluster
    folder = _made_by(mount, "own")
    before = scrape(url)
    for i in range(100):
        (folder / f"f{i}").write_bytes(b"x" * i)
    (folder / "sub").mkdir()
    (folder / "sub" / "inner").write_bytes(b"inner")
    os.symlink("f1", folder / "link")
    for i in range(0, 100, 2):
        os.unlink(folder / f"f{i}")
    after = scrape(url)
    assert _calls(before, after, "create") == _calls(before, after, "unlink") == 0
    assert _calls(before, after, "mkdir") == _calls(before, after, "symlink") == 0
    assert _calls(before, after, "commit") == 0  # small files' bytes went with the batches
    # the other mount, the gateway and a plain client see all of it at once (they recall the folder)
    other = first.mountpoint / folder.name
    expected = sorted([f"f{i}" for i in range(1, 100, 2)] + ["sub", "link"])
    assert sorted(os.listdir(other)) == expected
    assert _calls(before, scrape(url), "batch") >= 1
    assert (other / "f99").read_bytes() == b"x" * 99
    assert (other / "sub" / "inner").read_bytes() == b"inner"
    assert os.readlink(other / "link") == "f1"
    assert os.stat(other).st_nlink == 3
    with SyncClient(cluster.master_url) as fs:
        assert fs.stat(f"/{folder.name}/f51").size == 51
    assert cluster.gateway is not None
    request = urllib.request.Request(f"{cluster.gateway.url}/fs/{folder.name}/f97",
                                     headers=auth_headers(TEST_ADMIN_KEY))
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.read() == b"x" * 97
    # attributes as the mount answered them are the master's
    here, there = os.stat(folder / "f51"), os.stat(other / "f51")
    assert (here.st_ino, here.st_mode, here.st_size, here.st_mtime_ns) == (
        there.st_ino, there.st_mode, there.st_size, there.st_mtime_ns)


def test_exclusive_creates_on_two_mounts_meet(metered: tuple[Mount, str],
                                              mounted_cluster: tuple[Cluster, Mount]) -> None:
    _, first = mounted_cluster
    folder = _made_by(metered[0], "excl")
    os.close(os.open(folder / "mine", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))  # pending in the mount
    with pytest.raises(FileExistsError):
        os.open(first.mountpoint / folder.name / "mine", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    # the folder went back to the master: from now on both mounts go through it
    fd = os.open(first.mountpoint / folder.name / "theirs", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    deadline = time.monotonic() + 3  # this mount's cached listing lives the entry timeout
    while True:
        try:
            os.open(folder / "theirs", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            break
        os.unlink(folder / "theirs")  # made here while its cache said the name was free: undo, try again
        assert time.monotonic() < deadline, "the other mount's file never showed here"
        time.sleep(0.1)


def test_unmount_sends_what_is_pending(mounted_cluster: tuple[Cluster, Mount], tmp_path: Path) -> None:
    cluster, first = mounted_cluster
    mount = Mount(cluster.master_url, tmp_path / "mnt3", tmp_path / "mount3.log").start()
    try:
        folder = mount.mountpoint / f"gone-{time.monotonic_ns()}"
        folder.mkdir()
        for i in range(200):
            (folder / f"f{i}").write_bytes(str(i).encode())
    finally:
        mount.stop()  # a clean unmount right after the last close
    other = first.mountpoint / folder.name
    assert len(os.listdir(other)) == 200
    assert (other / "f199").read_bytes() == b"199"


def test_permissions_hold_in_a_delegated_folder(mnt: Path) -> None:
    """The kernel checks the caller (default_permissions); the master checks every change again."""
    folder = mnt / "shared"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o2775)  # setgid: new entries take the folder's group
    os.chown(folder, 0, 4242)
    (folder / "file").write_bytes(b"a")
    (folder / "dir").mkdir()
    st_file, st_dir = os.stat(folder / "file"), os.stat(folder / "dir")
    assert st_file.st_gid == st_dir.st_gid == 4242
    assert st_dir.st_mode & stat.S_ISGID
    pid = os.fork()
    if pid == 0:  # another user may not create in it
        try:
            os.setgid(1000)
            os.setuid(1000)
            try:
                (folder / "intruder").write_bytes(b"no")
            except PermissionError:
                os._exit(0)
            os._exit(1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not (folder / "intruder").exists()


def test_fsync_of_a_folder_sends_its_changes(mnt: Path, mounted_cluster: tuple[Cluster, Mount]) -> None:
    cluster, mount = mounted_cluster
    folder = mnt / "synced"
    folder.mkdir()
    (folder / "a").write_bytes(b"durable")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    relative = "/" + str((folder / "a").relative_to(mount.mountpoint))
    with SyncClient(cluster.master_url) as fs:
        assert fs.stat(relative).size == len(b"durable")


def test_errors_in_a_delegated_folder(mnt: Path) -> None:
    folder = mnt / "errors"
    folder.mkdir()
    (folder / "f").touch()
    (folder / "d").mkdir()
    with pytest.raises(FileExistsError):
        os.open(folder / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with pytest.raises(FileExistsError):
        os.mkdir(folder / "d")
    with pytest.raises(FileNotFoundError):
        os.unlink(folder / "missing")
    with pytest.raises(IsADirectoryError):
        os.unlink(folder / "d")
    with pytest.raises(OSError) as err:
        os.rmdir(folder)
    assert err.value.errno == errno.ENOTEMPTY
    os.rename(folder / "f", folder / "d" / "moved")  # a rename goes to the master; names follow
    assert os.listdir(folder / "d") == ["moved"]
    with pytest.raises(FileNotFoundError):
        os.unlink(folder / "f")
    os.unlink(folder / "d" / "moved")
    os.rmdir(folder / "d")
    os.rmdir(folder)
    assert not folder.exists()


def test_small_files_read_cold_from_a_delegated_folder(metered: tuple[Mount, str],
                                                       mounted_cluster: tuple[Cluster, Mount]) -> None:
    """Opens of files made here need no master call, and a busy folder's listing brings their bytes;
    once another mount changes one, the folder is back with the master and opens ask it again."""
    mount, url = metered
    _, first = mounted_cluster
    folder = _made_by(mount, "cold")
    contents = {f"s{i}": os.urandom(100 + i * 7) for i in range(300)}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    with open("/proc/sys/vm/drop_caches", "w") as caches:
        caches.write("3\n")
    time.sleep(1.2)  # past the entry timeout: the mount lists the folder again
    before = scrape(url)
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data
    after = scrape(url)
    assert _calls(before, after, "getattr") < len(contents) // 2  # the bytes came with the listings
    (first.mountpoint / folder.name / "s7").write_bytes(b"changed elsewhere")
    assert (folder / "s7").read_bytes() == b"changed elsewhere"


def test_changes_made_while_the_master_is_down_reach_it_when_it_is_back(fresh_cluster: Cluster,
                                                                         tmp_path: Path) -> None:
    """What the mount acknowledged in a delegated folder is kept and sent again until the master
    takes it, however long past --master-timeout the master is away (it was dropped as "lost").
    The master goes away between the closes and the batch that carries them."""
    fresh_cluster.start(chunkservers=1, gateway=False)
    mount = Mount(fresh_cluster.master_url, tmp_path / "mnt", tmp_path / "mount.log",
                  args=["--master-timeout", "1", "--attr-timeout", "60", "--entry-timeout", "60"])
    try:
        mount.start()
        folder = _made_by(mount, "away")
        for i in range(5):  # decided here, answered at once, and sent within ~10 ms
            (folder / f"f{i}").write_bytes(b"kept %d" % i)
        assert fresh_cluster.master is not None
        fresh_cluster.master.kill()  # before the batch went out
        time.sleep(4)  # several failed tries of it
        fresh_cluster.start_master()
        deadline = time.monotonic() + 30
        with SyncClient(fresh_cluster.master_url) as fs:
            while not fs.exists(f"/{folder.name}/f4"):
                assert time.monotonic() < deadline, "the changes never reached the master"
                time.sleep(0.2)
            for i in range(5):
                assert fs.stat(f"/{folder.name}/f{i}").size == len(b"kept %d" % i)
        assert "is lost" not in mount.log()
    finally:
        mount.stop()
    assert not mount.running
