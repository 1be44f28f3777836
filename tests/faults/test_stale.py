"""(c) A chunkserver away during overwrites comes back with stale replicas: never read, deleted, rebuilt.
Also: a graceful stop is maintenance (no copy storm), and after --maintenance-timeout the node is dead."""

from __future__ import annotations

import time
from collections.abc import Callable

from dfs.client.sync import SyncClient
from tests.faults.helpers import (
    MiB,
    at_goal,
    check_placement,
    digest_of,
    held,
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


def test_stale_replicas_are_never_read_and_are_deleted(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=3)
    cluster.start(chunkservers=3, gateway=False)
    old = pattern(3 * MiB, 5)
    new = pattern(3 * MiB, 6)
    away = cluster.chunkservers[2]
    with SyncClient(cluster.master_url, retry_for=20) as fs:
        upload(fs, "/f", old)
        before = {c["chunk_id"]: c["version"] for c in locations(fs, "/f")}
        away_id = server_id_of(cluster, away)
        away.kill()
        with fs.open("/f") as f:  # overwrite every chunk while it is away
            f.write(0, new)
        after = {c["chunk_id"]: c["version"] for c in locations(fs, "/f")}
        assert all(after[cid] > before[cid] for cid in before)
        assert digest_of(fs, "/f") == sha(new)

        away.start()
        away.wait_healthy()
        # while it comes back, the master never lists it for a chunk it does not hold at the current version,
        # and it refuses to serve the old version under the new one
        deadline = time.monotonic() + 60
        while True:
            # placement first, then what the server holds: a copy the master lists was installed before it
            # was listed, so the server must show it (the other order races with a copy in progress)
            listed = locations(fs, "/f")
            holding = held(away)
            for c in listed:
                if away_id in [s["id"] for s in c["servers"]]:
                    mine = holding.get(c["chunk_id"])
                    assert mine is not None and mine["version"] == c["version"] and not mine["pending"], (c, mine)
                elif c["chunk_id"] in holding and holding[c["chunk_id"]]["version"] < c["version"]:
                    status_code, body = _get(away.url, c["chunk_id"], c["version"], c["token"])
                    assert status_code == 409, (status_code, body)
            assert digest_of(fs, "/f") == sha(new)
            if at_goal(fs, "/f", 3) and all(holding.get(cid, {}).get("version") == v for cid, v in after.items()):
                break
            assert time.monotonic() < deadline, f"stale replicas not replaced: {holding} vs {after}"
            time.sleep(0.2)
        # no old version is left anywhere
        for service in cluster.chunkservers:
            for cid, info in held(service).items():
                if cid in after:
                    assert info["version"] == after[cid], (service.name, cid, info)
        assert check_placement(cluster) == []


def _get(url: str, chunk_id: int, version: int, token: str) -> tuple[int, object]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/chunks/{chunk_id}?version={version}", headers={"X-DFS-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read(100)
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_graceful_stop_is_maintenance_then_dead(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=2, master_args=["--maintenance-timeout", "4"])
    cluster.start(chunkservers=3, gateway=False)
    data = pattern(4 * MiB, 7)
    resting = cluster.chunkservers[0]
    with SyncClient(cluster.master_url, retry_for=20) as fs:
        upload(fs, "/f", data)
        resting_id = server_id_of(cluster, resting)
        assert any(resting_id in [s["id"] for s in c["servers"]] for c in locations(fs, "/f"))
        copies = status(cluster)["repair"]["copies"]["copies"]

        # a restart within the maintenance time: no copies at all
        resting.stop()
        assert state_of(cluster, resting) == "maintenance"
        wait_until("re-replication to see chunks resting in maintenance",
                   lambda: status(cluster)["repair"]["in_maintenance"] > 0, 8)
        time.sleep(1)
        assert state_of(cluster, resting) == "maintenance"
        assert status(cluster)["repair"]["under_replicated"] == 0
        assert digest_of(fs, "/f") == sha(data)
        resting.start()
        resting.wait_healthy()
        wait_until("back live", lambda: state_of(cluster, resting) == "live", 10)
        wait_until("every chunk at goal", lambda: at_goal(fs, "/f", 2), 10)
        assert status(cluster)["repair"]["copies"]["copies"] == copies, "a maintenance restart caused copies"

        # a stop longer than the maintenance time: dead, then re-replicated elsewhere
        resting.stop()
        began = time.monotonic()
        wait_until("declared dead after the maintenance timeout", lambda: state_of(cluster, resting) == "dead", 10)
        assert time.monotonic() - began >= 3.5
        wait_until("goal restored without it", lambda: at_goal(fs, "/f", 2), 20)
        assert status(cluster)["repair"]["copies"]["copies"] > copies
        assert all(resting_id not in [s["id"] for s in c["servers"]] for c in locations(fs, "/f"))
        assert digest_of(fs, "/f") == sha(data)
        assert check_placement(cluster) == []
