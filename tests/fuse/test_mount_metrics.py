"""`dfs mount --metrics-port`: file system calls, bytes and buffers of a real mount, scraped over HTTP."""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.error
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dfs.client.sync import SyncClient
from dfs.launcher import Mount
from tests.harness import Cluster, free_port
from tests.scrape import scrape, value

MiB = 1024 * 1024


async def one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def metered_mount(tmp_path: Path) -> Iterator[tuple[Cluster, Mount, str]]:
    cluster = Cluster(root=tmp_path / "cluster")
    port = free_port()
    mount = Mount("", tmp_path / "mnt", tmp_path / "mount.log", args=["--metrics-port", str(port)])
    try:
        cluster.start(gateway=False)
        mount.master_url = cluster.master_url
        mount.start()
        yield cluster, mount, f"http://127.0.0.1:{port}/metrics"
    finally:
        mount.stop()
        cluster.stop()


def test_mount_metrics_follow_the_work(metered_mount: tuple[Cluster, Mount, str]) -> None:
    cluster, mount, url = metered_mount
    root = mount.mountpoint
    size = 3 * MiB + 77
    data = os.urandom(size)
    with SyncClient(cluster.master_url) as fs:  # written elsewhere: reading it must go through the mount
        fs.upload("/elsewhere.bin", one_piece(data))
    before = scrape(url)
    master_before = scrape(cluster.master_url + "/metrics")
    assert value(before, "dfs_fuse_memory_cap_bytes") == 256 * MiB

    (root / "folder").mkdir()
    (root / "folder" / "written.bin").write_bytes(data)
    assert (root / "elsewhere.bin").read_bytes() == data
    assert not (root / "no-such-file").exists()

    with open(root / "folder" / "open.bin", "wb") as held:  # buffered in the mount until closed
        held.write(b"b" * 100_000)
        held.flush()
        during = scrape(url)
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("dfs_fuse_operations_total", operation="mkdir", result="ok") == 1
    assert moved("dfs_fuse_operations_total", operation="create", result="ok") == 2
    assert moved("dfs_fuse_operations_total", operation="write", result="ok") >= 1
    assert moved("dfs_fuse_operations_total", operation="read", result="ok") >= 1
    assert moved("dfs_fuse_operations_total", operation="getattr", result="error") >= 1  # no-such-file
    assert moved("dfs_fuse_operation_duration_seconds_count", operation="mkdir") == 1
    assert moved("dfs_fuse_bytes_total", direction="written") == size + 100_000
    assert moved("dfs_fuse_bytes_total", direction="read") >= size
    assert moved("dfs_client_master_calls_total", operation="mkdir", result="ok") == 1
    assert moved("dfs_client_chunk_bytes_total", direction="written") >= size + 100_000
    master_after = scrape(cluster.master_url + "/metrics")  # namespace calls came over the channel
    for op in ("/api/mkdir", "/api/batch"):  # the creates in a folder it made: batched (delegations)
        assert value(master_after, "dfs_http_requests_total", operation=op, method="WS") - value(
            master_before, "dfs_http_requests_total", operation=op, method="WS") >= 1, op

    assert value(during, "dfs_fuse_open_files") >= 1
    assert value(during, "dfs_fuse_unsent_bytes") == 100_000
    assert value(during, "dfs_fuse_memory_used_bytes") >= 100_000
    assert value(after, "dfs_fuse_unsent_bytes") == 0  # close() flushed it
    deadline = time.monotonic() + 10  # the kernel sends the release of a closed file a little later
    while value(scrape(url), "dfs_fuse_open_files") != 0:
        assert time.monotonic() < deadline, "the closed files are still open in the mount"
        time.sleep(0.05)

    mount.stop()  # the metrics server stops with the mount
    port = int(url.split(":")[2].split("/")[0])
    with pytest.raises((ConnectionRefusedError, urllib.error.URLError)), socket.create_connection(
            ("127.0.0.1", port), timeout=2):
        pass


def test_filling_a_folder_costs_one_round_trip_per_file(metered_mount: tuple[Cluster, Mount, str]) -> None:
    """The lookup before each create, the folder's getattr after it and the kernel's security.capability
    question before each write are answered from the mount's caches. In a folder the mount did not
    make, each create reaches the master; in one it made (delegated to it), none does: the creates,
    and the commits carrying such small files' bytes, travel in batches."""
    cluster, mount, url = metered_mount
    with SyncClient(cluster.master_url) as fs:
        fs.makedir("/filled")  # made elsewhere: not delegated to the mount
    for folder, delegated in ((mount.mountpoint / "filled", False), (mount.mountpoint / "own", True)):
        if delegated:
            folder.mkdir()
        count = 200
        before = scrape(url)
        started = time.monotonic()
        for i in range(count):
            fd = os.open(folder / f"f{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.write(fd, b"x")
            os.close(fd)
        after = scrape(url)
        seconds = time.monotonic() - started

        def calls(*ops: str, before: dict = before, after: dict = after) -> float:
            return sum(value(after, "dfs_client_master_calls_total", operation=op, result=result)
                       - value(before, "dfs_client_master_calls_total", operation=op, result=result)
                       for op in ops for result in ("ok", "error"))

        assert calls("create") == (0 if delegated else count)
        assert calls("commit") == (0 if delegated else count)
        assert calls("batch") <= (count if delegated else 0)
        assert calls("getxattr") == 0
        # the folder's listing and times expire each second (entry timeout): a few round trips per second
        per_second = 8
        assert calls("resolve", "lookup", "getattr", "readdir") <= 5 + per_second * seconds

        before = scrape(url)
        started = time.monotonic()
        for i in range(count):
            os.unlink(folder / f"f{i}")
        after = scrape(url)
        seconds = time.monotonic() - started
        assert calls("unlink", before=before, after=after) == (0 if delegated else count)
        # names come from the cache, and the folder's new times with each unlink's reply
        assert calls("resolve", "lookup", "readdir", "getattr", before=before, after=after) <= 5 + per_second * seconds
        assert os.listdir(folder) == []


def test_tar_like_extraction_costs_a_create_and_a_commit(metered_mount: tuple[Cluster, Mount, str]) -> None:
    """`tar x` as root: create (0600), write, futimens, fchown to the owner the file has, fchmod 0644,
    close. The fchown changes nothing (no round trip); the mtime and the wider mode go with the
    writes' commit at the close, and so do the bytes of a file this small (resident data: no
    lease, no chunkserver); other clients see all of it after the close. A real change of owner,
    and a chown long after, still go to the master."""
    cluster, mount, url = metered_mount

    def extract(name: str) -> None:
        fd = os.open(mount.mountpoint / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"data")
            os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
            os.fchown(fd, os.getuid(), os.getgid())
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)

    extract("warm-up")  # the first file opens the connections to the chunkservers
    count = 10
    before = scrape(url)
    for i in range(count):
        extract(f"extracted-{i}")
    after = scrape(url)

    def calls(op: str) -> float:
        return value(after, "dfs_client_master_calls_total", operation=op, result="ok") - value(
            before, "dfs_client_master_calls_total", operation=op, result="ok")

    assert calls("create") == calls("commit") == count and calls("lease") == 0
    assert calls("setattr") <= count // 2  # the chown: a loaded machine may miss its window
    path = mount.mountpoint / "extracted-0"
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size) == (
        os.getuid(), os.getgid(), 0o644, 2_000_000_000, 4)
    with SyncClient(cluster.master_url) as fs:  # another client: the commit carried them
        attr = fs.stat("/extracted-0")
        assert (stat.S_IMODE(attr.mode), attr.mtime_ns, attr.size) == (0o644, 2_000_000_000, 4)
    os.chown(path, 4321, 8765)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (4321, 8765)
    time.sleep(0.05)
    ctime = os.stat(path).st_ctime_ns
    os.chown(path, 4321, 8765)  # long after the last change: ctime moves, as POSIX says
    assert os.stat(path).st_ctime_ns > ctime


def test_attributes_kept_for_the_commit_follow_posix(metered_mount: tuple[Cluster, Mount, str]) -> None:
    """While a file has unflushed writes: its own mount sees a deferred mtime and mode at once (with a
    new ctime); a write after the utimens moves the mtime again; a chmod that takes bits away goes to
    the master at once, where other clients see it before the close."""
    cluster, mount, _ = metered_mount
    path = mount.mountpoint / "deferred"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with SyncClient(cluster.master_url) as fs:
        try:
            created = os.fstat(fd).st_ctime_ns
            os.write(fd, b"one")
            os.utime(fd, ns=(1_000_000_000, 3_000_000_000))
            os.fchmod(fd, 0o664)
            st = os.stat(path)
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o664, 3_000_000_000)
            assert st.st_ctime_ns >= created
            assert stat.S_IMODE(fs.stat("/deferred").mode) == 0o600  # not committed yet
            os.write(fd, b"two")
            assert os.fstat(fd).st_mtime_ns > 3_000_000_000
            os.fchmod(fd, 0o640)  # narrower: at once
            assert stat.S_IMODE(fs.stat("/deferred").mode) == 0o640
        finally:
            os.close(fd)
        attr = fs.stat("/deferred")
        assert (stat.S_IMODE(attr.mode), attr.size) == (0o640, 6)
        assert attr.mtime_ns > 3_000_000_000
    assert path.read_bytes() == b"onetwo"


def test_small_files_cost_few_round_trips(metered_mount: tuple[Cluster, Mount, str]) -> None:
    """A 4 KiB file written here costs one commit, which carries its bytes (resident data: no lease,
    no chunkserver), and one getattr to open and read, which brings them back; so does one uploaded
    elsewhere. A 100 KiB one uploaded elsewhere lives in a chunk: one getattr too (its first chunk's
    locations come with it) and its chunk read: counted, not timed."""
    cluster, mount, url = metered_mount
    folder = mount.mountpoint / "small"
    data, bigger = os.urandom(4096), os.urandom(100 * 1024)
    with SyncClient(cluster.master_url) as fs:  # written elsewhere: the mount knows nothing of them
        fs.makedir("/small")
        for i in range(5):
            fs.upload(f"/small/elsewhere{i}", one_piece(data))
            fs.upload(f"/small/chunked{i}", one_piece(bigger))

    def settled() -> dict:
        deadline = time.monotonic() + 10  # the kernel sends the release of a closed file a little later
        while value(now := scrape(url), "dfs_fuse_open_files") != 0:
            assert time.monotonic() < deadline, "the closed files are still open in the mount"
            time.sleep(0.05)
        return now

    def calls(after: dict, before: dict, op: str) -> float:
        return (value(after, "dfs_client_master_calls_total", operation=op, result="ok")
                - value(before, "dfs_client_master_calls_total", operation=op, result="ok"))

    before = settled()
    for i in range(5):
        (folder / f"f{i}").write_bytes(data)
    written = settled()
    assert calls(written, before, "lease") == 0
    assert calls(written, before, "commit") == 5
    for i in range(5):
        assert (folder / f"f{i}").read_bytes() == data
        assert (folder / f"elsewhere{i}").read_bytes() == data
    read_resident = settled()
    assert calls(read_resident, written, "getattr") == 10  # the opens (close-to-open)
    assert calls(read_resident, written, "chunks") == 0
    assert value(read_resident, "dfs_client_chunk_bytes_total", direction="read") == value(
        written, "dfs_client_chunk_bytes_total", direction="read")
    for i in range(5):
        assert (folder / f"chunked{i}").read_bytes() == bigger
    read = settled()
    assert calls(read, read_resident, "getattr") == 5
    assert calls(read, read_resident, "chunks") == 0
    assert value(read, "dfs_client_chunk_bytes_total", direction="read") - value(
        read_resident, "dfs_client_chunk_bytes_total", direction="read") == 5 * len(bigger)


@pytest.mark.timeout(120)
def test_mount_reads_local_replicas_short_circuit(metered_mount: tuple[Cluster, Mount, str]) -> None:
    """Every chunkserver is on this host: the mount's small reads read chunk files handed over by their
    chunkservers (dfs/client/localread.py), and none reaches a chunkserver over HTTP; sequential
    read-ahead windows (more than 1 MiB) still go over HTTP."""
    cluster, mount, url = metered_mount
    size = 2 * MiB + 4321
    data = os.urandom(size)
    with SyncClient(cluster.master_url, short_circuit=False) as fs:
        fs.upload("/local.bin", one_piece(data))
    servers = [cs.url + "/metrics" for cs in cluster.chunkservers]
    gets_before = sum(value(scrape(s), "dfs_http_requests_total", operation="/chunks/{id}", method="GET")
                      for s in servers)
    before = scrape(url)
    with open(mount.mountpoint / "local.bin", "rb") as f:
        for offset in (0, MiB - 1000, size - 100, 12345):
            f.seek(offset)
            assert f.read(4096) == data[offset : offset + 4096]
    after = scrape(url)

    def moved(name: str) -> float:
        return value(after, name) - value(before, name)

    assert moved("dfs_client_short_circuit_reads_total") >= 3
    assert moved("dfs_client_short_circuit_fallbacks_total") == 0
    gets_after = sum(value(scrape(s), "dfs_http_requests_total", operation="/chunks/{id}", method="GET")
                     for s in servers)
    assert gets_after == gets_before
    opens = sum(value(scrape(s), "dfs_chunkserver_short_circuit_opens_total", result="ok") for s in servers)
    assert opens >= 3
    assert (mount.mountpoint / "local.bin").read_bytes() == data
