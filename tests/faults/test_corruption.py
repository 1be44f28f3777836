"""(b) A flipped block: reads fail over, the replica is quarantined, reported and rebuilt; the scrubber
finds a second corruption on its own."""

from __future__ import annotations

from collections.abc import Callable

from dfs.client.sync import SyncClient
from dfs.protocol import ChunkLocation
from tests.faults.helpers import (
    MiB,
    at_goal,
    check_placement,
    chunk_file,
    digest_of,
    flip,
    locations,
    pattern,
    sha,
    upload,
    wait_until,
)
from tests.harness import Cluster, http_json


def _index_of(cluster: Cluster, url: str) -> int:
    return next(i for i, s in enumerate(cluster.chunkservers) if s.url == url)


def _quarantined(cluster: Cluster, index: int) -> list[str]:
    return sorted(p.name for p in (cluster.root / f"cs{index}" / "quarantine").iterdir())


def _same_everywhere(loc: dict) -> bool:
    infos = set()
    for server in loc["servers"]:
        code, info = http_json("GET", f"{server['url']}/chunks/{loc['chunk_id']}/info",
                               headers={"X-DFS-Token": loc["token"]})
        if code != 200:
            return False
        infos.add((info["version"], info["length"], info["digest"], info["pending"]))
    return len(infos) == 1


def test_corrupt_block_is_rebuilt_and_scrubbed(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=3)
    cluster.start(chunkservers=3, gateway=False)
    data = pattern(3 * MiB + 4321, 4)
    with SyncClient(cluster.master_url, retry_for=20) as fs:
        upload(fs, "/f", data)
        # 1. corrupt one block of the replica a reader tries first
        loc = locations(fs, "/f")[1]
        first = _index_of(cluster, loc["servers"][0]["url"])
        flip(chunk_file(cluster, first, loc["chunk_id"]), 3 * 65536 + 100)
        located = ChunkLocation.from_json(loc)  # read it with that replica first, as the master lists it
        got = b"".join(fs._runner.iterate(fs.chunkio.read(located, 0, MiB)))
        assert got == data[MiB : 2 * MiB]  # the read failed over to a good replica
        assert digest_of(fs, "/f") == sha(data)
        assert _quarantined(cluster, first), "the corrupt replica was not quarantined"
        wait_until("the master to hear of the corruption",
                   lambda: f"reports chunk {loc['chunk_id']} v{loc['version']} corrupt" in cluster.master.log(), 10)
        # ... and the replica is rebuilt from a good copy on the same (only possible) server
        wait_until("the corrupt replica rebuilt", lambda: at_goal(fs, "/f", 3) and _same_everywhere(
            next(c for c in locations(fs, "/f") if c["chunk_id"] == loc["chunk_id"])), 20)

        # 2. a scrubbing chunkserver finds a corruption nobody reads
        other = next(i for i in range(3) if i != first)
        scrubbing = cluster.chunkservers[other]
        scrubbing.stop()  # graceful: maintenance, no copies while it restarts
        scrubbing.args += ["--scrub-rate", "50MiB", "--scrub-interval", "1"]
        scrubbing.start()
        scrubbing.wait_healthy()
        wait_until("the restarted server listed again", lambda: at_goal(fs, "/f", 3), 15)
        before = len(_quarantined(cluster, other))
        victim = locations(fs, "/f")[2]
        flip(chunk_file(cluster, other, victim["chunk_id"]), 5000)
        wait_until("the scrubber to quarantine the corrupt replica",
                   lambda: len(_quarantined(cluster, other)) > before, 15)
        code, health = http_json("GET", scrubbing.url + "/health")
        assert code == 200 and health["scrub"]["corrupt"] >= 1
        wait_until("the scrubbed replica rebuilt", lambda: at_goal(fs, "/f", 3) and _same_everywhere(
            next(c for c in locations(fs, "/f") if c["chunk_id"] == victim["chunk_id"])), 20)
        assert digest_of(fs, "/f") == sha(data)
        assert check_placement(cluster) == []
