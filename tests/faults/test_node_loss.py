"""(a) kill -9 a chunkserver during a large write and a read; (f) SIGSTOP one during reads."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Callable

from dfs.client.sync import SyncClient
from dfs.protocol import ChunkLocation, Replica
from tests.faults.helpers import (
    MiB,
    at_goal,
    check_placement,
    digest_of,
    locations,
    pattern,
    server_id_of,
    sha,
    state_of,
    status,
    upload,
    wait_until,
)
from tests.harness import Cluster


def test_kill_9_during_write_and_read(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=2)
    cluster.start(chunkservers=3, gateway=False)
    victim = cluster.chunkservers[1]
    big = pattern(100 * MiB, 1)
    other = pattern(40 * MiB + 123, 2)
    halfway = threading.Event()

    async def source():
        for i in range(0, len(big), MiB):
            if i == 30 * MiB:
                halfway.set()
            yield big[i : i + MiB]

    with SyncClient(cluster.master_url, retry_for=20) as fs:
        upload(fs, "/read.bin", other)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            written = pool.submit(fs.upload, "/write.bin", source())
            read = pool.submit(lambda: [digest_of(fs, "/read.bin") for _ in range(3)])
            assert halfway.wait(60)
            victim.kill()
            killed = time.monotonic()
            written.result(timeout=120)
            digests = read.result(timeout=120)
        assert digests == [sha(other)] * 3
        assert digest_of(fs, "/write.bin") == sha(big)

        wait_until("the killed chunkserver declared dead", lambda: state_of(cluster, victim) == "dead", 10)
        declared = time.monotonic() - killed
        wait_until("goal 2 restored for every chunk",
                   lambda: at_goal(fs, "/write.bin", 2) and at_goal(fs, "/read.bin", 2), 60)
        restored = time.monotonic() - killed
        dead_id = server_id_of(cluster, victim)
        for path in ("/write.bin", "/read.bin"):
            assert all(dead_id not in [s["id"] for s in c["servers"]] for c in locations(fs, path))
        assert digest_of(fs, "/write.bin") == sha(big)
        assert check_placement(cluster) == []
        print(f"dead declared after {declared:.1f}s, goal restored after {restored:.1f}s")


def test_sigstop_during_reads_fails_over(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=3)
    cluster.start(chunkservers=3, gateway=False)
    data = pattern(3 * MiB, 3)
    stopped = cluster.chunkservers[0]
    with SyncClient(cluster.master_url, retry_for=20, read_timeout=2.0) as fs:
        upload(fs, "/f", data)
        inode = fs.stat("/f").inode
        stopped_id = server_id_of(cluster, stopped)
        stopped.signal(signal.SIGSTOP)
        try:
            began = time.monotonic()
            slowest = 0.0
            reads = 0
            while time.monotonic() - began < 10:
                for item in fs.chunks(inode, 0, 100)["chunks"]:
                    # the stopped server first, as a location cached before it stopped would have it
                    loc = ChunkLocation.from_json(item)
                    loc.servers = [Replica(stopped_id, stopped.url)] + [r for r in loc.servers if r.id != stopped_id]
                    start = loc.index * MiB + 1000
                    t0 = time.monotonic()
                    got = b"".join(fs._runner.iterate(fs.chunkio.read(loc, 1000, 6000)))
                    slowest = max(slowest, time.monotonic() - t0)
                    assert got == data[start : start + 5000]
                    reads += 1
                t0 = time.monotonic()
                assert digest_of(fs, "/f") == sha(data)  # the ordinary path, with the master's locations
                slowest = max(slowest, (time.monotonic() - t0) / 3)
            assert reads >= 3
            assert slowest < 3.0, f"a read took {slowest:.1f}s to fail over"
            # declared dead meanwhile (3 s timeout): no longer listed, reads go straight to the others
            assert state_of(cluster, stopped) == "dead"
            assert all(stopped_id not in [s["id"] for s in c["servers"]] for c in locations(fs, "/f"))
            # goal 3 on 2 live servers cannot be met: reported once, not looped on
            assert status(cluster)["repair"]["goal_unreachable"] == 3
            assert cluster.master.log().count("above the 2 chunkservers") == 1
            assert status(cluster)["repair"]["copies"]["failed"] == 0
        finally:
            stopped.signal(signal.SIGCONT)
        wait_until("the stopped chunkserver back live", lambda: state_of(cluster, stopped) == "live", 15)
        wait_until("its replicas listed again", lambda: at_goal(fs, "/f", 3), 15)
        assert digest_of(fs, "/f") == sha(data)
        assert check_placement(cluster) == []
