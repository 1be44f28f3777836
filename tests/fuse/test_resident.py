"""Resident data through a real mount (master/resident.py): small files written whole keep their bytes
in the master, read back the same from every client, and move into a chunk when they grow."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest

from dfs.auth import auth_headers
from dfs.launcher import Mount
from tests.harness import TEST_ADMIN_KEY, Cluster, free_port, http_json
from tests.scrape import scrape, value

KiB = 1024


def info(cluster: Cluster, mount: Mount, path: Path) -> dict:
    """`dfs admin info` of a file of the mount."""
    status, body = http_json("POST", f"{cluster.master_url}/api/admin/info",
                             {"path": "/" + str(path.relative_to(mount.mountpoint))})
    assert status == 200, body
    return body


def via_gateway(cluster: Cluster, mount: Mount, path: Path, byte_range: str | None = None) -> bytes:
    assert cluster.gateway is not None
    headers = auth_headers(TEST_ADMIN_KEY) | ({"Range": f"bytes={byte_range}"} if byte_range else {})
    request = urllib.request.Request(f"{cluster.gateway.url}/fs/{path.relative_to(mount.mountpoint)}",
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.read()


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@pytest.mark.timeout(60)
def test_small_files_are_kept_by_the_master_and_read_the_same_everywhere(mnt: Path, mounted_cluster) -> None:
    cluster, mount = mounted_cluster
    sizes = {"empty": 0, "one": 1, "four-k": 4 * KiB, "at-limit": 64 * KiB, "past-limit": 64 * KiB + 1}
    data = {name: os.urandom(size) for name, size in sizes.items()}
    for name, content in data.items():
        (mnt / name).write_bytes(content)
    for name in ("one", "four-k", "at-limit"):
        kept = info(cluster, mount, mnt / name)
        assert kept["resident"] == sizes[name] and kept["chunks"] == [], (name, kept)
    assert info(cluster, mount, mnt / "empty")["resident"] is None  # nothing written, nothing kept
    past = info(cluster, mount, mnt / "past-limit")
    assert past["resident"] is None and len(past["chunks"]) == 1
    status, summary = http_json("GET", f"{cluster.master_url}/api/admin/status")
    assert status == 200 and summary["resident"]["files"] >= 3 and summary["resident"]["max"] == 64 * KiB
    assert summary["resident"]["bytes"] >= 1 + 4 * KiB + 64 * KiB
    drop_caches()
    for name, content in data.items():
        assert (mnt / name).read_bytes() == content, name
        assert via_gateway(cluster, mount, mnt / name) == content, name
    assert via_gateway(cluster, mount, mnt / "four-k", "100-199") == data["four-k"][100:200]


@pytest.mark.timeout(60)
def test_small_http_uploads_are_kept_by_the_master_too(mnt: Path, mounted_cluster) -> None:
    cluster, mount = mounted_cluster
    assert cluster.gateway is not None
    small, large = os.urandom(10 * KiB), os.urandom(100 * KiB)
    for name, body in (("small", small), ("large", large)):
        request = urllib.request.Request(f"{cluster.gateway.url}/fs/{mnt.relative_to(mount.mountpoint)}/{name}",
                                         data=body, method="PUT", headers=auth_headers(TEST_ADMIN_KEY))
        with urllib.request.urlopen(request, timeout=30):
            pass
    assert info(cluster, mount, mnt / "small")["resident"] == len(small)
    assert info(cluster, mount, mnt / "large")["resident"] is None
    deadline = time.monotonic() + 3  # names made elsewhere show within the entry timeout (1 s)
    while not (mnt / "large").exists():
        assert time.monotonic() < deadline, "the uploaded files never showed on the mount"
        time.sleep(0.05)
    assert (mnt / "small").read_bytes() == small and (mnt / "large").read_bytes() == large


@pytest.mark.timeout(60)
def test_a_resident_file_rewritten_in_place_and_truncated_stays_right(mnt: Path, mounted_cluster) -> None:
    cluster, mount = mounted_cluster
    path, model = mnt / "edited", bytearray(os.urandom(3000))
    path.write_bytes(model)
    with open(path, "r+b") as f:  # a rewrite in the middle and a write past the end, with a hole
        f.seek(1000)
        f.write(b"x" * 100)
        f.seek(5000)
        f.write(b"tail")
    model[1000:1100] = b"x" * 100
    model.extend(bytes(5000 - len(model)) + b"tail")
    assert path.read_bytes() == bytes(model)
    assert info(cluster, mount, path)["resident"] == len(model)
    os.truncate(path, 10)
    assert path.read_bytes() == bytes(model[:10])
    os.truncate(path, 20_000)  # longer: the bytes past the resident ones read as zeros
    drop_caches()
    assert path.read_bytes() == bytes(model[:10]) + bytes(20_000 - 10)
    assert via_gateway(cluster, mount, path) == bytes(model[:10]) + bytes(20_000 - 10)
    assert info(cluster, mount, path)["resident"] == 10
    os.truncate(path, 0)
    assert info(cluster, mount, path)["resident"] is None


@pytest.mark.timeout(60)
def test_a_resident_file_that_grows_moves_into_a_chunk(mnt: Path, mounted_cluster) -> None:
    cluster, mount = mounted_cluster
    path = mnt / "growing"
    start, more = os.urandom(5000), os.urandom(300 * KiB)
    path.write_bytes(start)
    assert info(cluster, mount, path)["resident"] == 5000
    with open(path, "ab") as f:
        f.write(more)
    after = info(cluster, mount, path)
    assert after["resident"] is None and len(after["chunks"]) == 1
    assert all(r["status"] == "ok" for r in after["chunks"][0]["replicas"])  # every replica got the first bytes
    drop_caches()
    assert path.read_bytes() == start + more
    assert via_gateway(cluster, mount, path) == start + more


@pytest.mark.timeout(90)
def test_resident_max_zero_keeps_every_byte_on_chunkservers(tmp_path: Path) -> None:
    cluster = Cluster(root=tmp_path / "cluster", master_args=["--resident-max", "0"])
    mount = Mount("", tmp_path / "mnt", tmp_path / "mount.log")
    try:
        cluster.start(gateway=False)
        mount.master_url = cluster.master_url
        mount.start()
        path = mount.mountpoint / "small"
        path.write_bytes(b"on chunkservers")
        kept = info(cluster, mount, path)
        assert kept["resident"] is None and len(kept["chunks"]) == 1
        assert path.read_bytes() == b"on chunkservers"
    finally:
        mount.stop()
        cluster.stop()


@pytest.mark.timeout(90)
def test_resident_bytes_of_open_files_count_against_the_memory_cap(tmp_path: Path) -> None:
    """50 open files of 60 KiB each hold 3 MB of resident bytes: a 2 MiB cap keeps what fits and
    the rest are asked for again at each read, which still returns the right bytes."""
    cluster = Cluster(root=tmp_path / "cluster")
    port = free_port()
    mount = Mount("", tmp_path / "mnt", tmp_path / "mount.log",
                  args=["--metrics-port", str(port), "--write-buffer", "1MiB", "--memory-cap", "2MiB"])
    files = []
    try:
        cluster.start(gateway=False)
        mount.master_url = cluster.master_url
        mount.start()
        data = [os.urandom(60 * KiB) for _ in range(50)]
        for i, content in enumerate(data):
            (mount.mountpoint / f"f{i}").write_bytes(content)
        drop_caches()
        files = [open(mount.mountpoint / f"f{i}", "rb") for i in range(50)]  # noqa: SIM115
        for f, content in zip(files, data, strict=True):
            assert f.read() == content
        held = scrape(f"http://127.0.0.1:{port}/metrics")
        assert 0 < value(held, "dfs_fuse_memory_used_bytes") <= 2 * 1024 * KiB
    finally:
        for f in files:
            f.close()
        mount.stop()
        cluster.stop()
