"""(e) Full disks: new chunks go elsewhere; with every disk full the client gets ENOSPC (507 over HTTP) and
nothing half-written is committed. (g) Deleting files frees their space after the GC grace period."""

from __future__ import annotations

import contextlib
import errno
import http.client
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from dfs.auth import auth_headers
from dfs.client.sync import SyncClient
from dfs.errors import DfsError
from tests.faults.helpers import (
    MiB,
    at_goal,
    check_placement,
    chunk_file,
    digest_of,
    held,
    locations,
    pattern,
    sha,
    upload,
    wait_until,
)
from tests.harness import TEST_ADMIN_KEY, Cluster


def _put(url: str, body: bytes) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may answer before reading it all
        conn.request("PUT", parts.path, body=body, headers={"Content-Type": "application/octet-stream",
                                                            **auth_headers(TEST_ADMIN_KEY)})
    try:
        return conn.getresponse().status
    finally:
        conn.close()


def _no_temp_files(fs: SyncClient, folder: str) -> bool:
    return not [name for name, _ in fs.listdir(folder) if "dfs-upload" in name]


def test_full_disks(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=2)
    cluster.start_master()
    small = cluster.add_chunkserver(capacity="4MiB")
    for _ in range(2):
        cluster.add_chunkserver(capacity="12MiB")
    cluster.wait_servers(3)
    cluster.start_gateway()
    files = {f"/data/f{i}": pattern(2 * MiB, 10 + i) for i in range(6)}  # 12 MiB, 24 MiB of replicas
    with SyncClient(cluster.master_url, retry_for=20) as fs:
        fs.makedir("/data")
        for path, data in files.items():
            upload(fs, path, data)
        # the small server filled up and took no more; everything was placed elsewhere, at goal
        assert sum(c["length"] for c in held(small).values()) <= 4 * MiB
        for path, data in files.items():
            assert digest_of(fs, path) == sha(data)
        wait_until("every chunk at goal 2", lambda: all(at_goal(fs, p, 2) for p in files), 20)

        # now every server is (nearly) full: a big upload fails with ENOSPC and leaves nothing behind
        with pytest.raises(DfsError) as exc:
            upload(fs, "/data/too-big", pattern(12 * MiB, 99))
        assert exc.value.errno == errno.ENOSPC
        assert not fs.exists("/data/too-big")
        assert _no_temp_files(fs, "/data")
        # over HTTP: 507
        assert cluster.gateway is not None
        code = _put(f"{cluster.gateway.url}/fs/data/via-http", pattern(3 * MiB // 2, 98))
        assert code == 507
        assert not fs.exists("/data/via-http")
        assert _no_temp_files(fs, "/data")
        for path, data in files.items():  # what was there is intact
            assert digest_of(fs, path) == sha(data)
    # the failed uploads' chunks are garbage: gone from the master's placement and, soon, from the disks
    assert check_placement(cluster) == []


def test_deleted_files_free_space_after_grace(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=2, master_args=["--gc-grace", "3"])
    cluster.start(chunkservers=3, gateway=False)
    data = pattern(8 * MiB, 20)
    with SyncClient(cluster.master_url, retry_for=20) as fs:
        upload(fs, "/big", data)
        chunk_ids = [c["chunk_id"] for c in locations(fs, "/big")]
        wait_until("statfs to count the replicas", lambda: fs.statfs()["used"] >= 16 * MiB, 10)
        used = fs.statfs()["used"]
        fs.remove("/big")
        deleted = time.monotonic()
        time.sleep(1.5)
        assert fs.statfs()["used"] == used, "space freed before the grace period"
        wait_until("space freed", lambda: fs.statfs()["used"] <= used - 16 * MiB, 15)
        assert time.monotonic() - deleted >= 3
        for index, service in enumerate(cluster.chunkservers):
            assert not set(chunk_ids) & set(held(service))
            assert not any(chunk_file(cluster, index, cid).exists() for cid in chunk_ids)
    assert check_placement(cluster) == []
