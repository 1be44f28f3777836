"""`dfs admin` against real processes: status, nodes, df, balance, decommission, setrep, fsck, info, errors.

The balance cluster: three chunkservers of 1 GiB hold ~200 MiB written with goal 2 in 4 MiB chunks, then
two empty ones of the same size join. A thread samples the placement of every chunk while the balancer
and the drain run, and fails the test if any chunk is ever seen with fewer live copies than its goal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs.client import Client
from tests.harness import Cluster, cs_json, http_json

MiB = 1024 * 1024
FILES = 10
FILE_SIZE = 20 * MiB  # 10 files x 20 MiB x goal 2 = 400 MiB raw over 3 x 1 GiB


def dfs(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFS_MASTER": cluster.master_url}
    return subprocess.run([sys.executable, "-m", "dfs", *args], capture_output=True, env=env, timeout=timeout,
                          check=False, text=True)


def dfs_json(cluster: Cluster, *args: str) -> Any:
    done = dfs(cluster, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def api(cluster: Cluster, name: str, **body: Any) -> Any:
    status, reply = http_json("POST", f"{cluster.master_url}/api/admin/{name}", body, timeout=60)
    assert status == 200, (name, status, reply)
    return reply


def content(seed: int, size: int = FILE_SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


async def _upload(url: str, items: list[tuple[str, bytes]], goal: int) -> None:
    async def source(data: bytes) -> Any:
        for i in range(0, len(data), 4 * MiB):
            yield data[i:i + 4 * MiB]

    async with Client(url) as client:
        for path, data in items:
            await client.makedir(path.rsplit("/", 1)[0] or "/", parents=True)
            await client.upload(path, source(data), goal=goal)


async def _digests(url: str, paths: list[str]) -> dict[str, str]:
    out = {}
    async with Client(url) as client:
        for path in paths:
            h = hashlib.sha256()
            async for piece in client.download(path):
                h.update(piece)
            out[path] = h.hexdigest()
    return out


def upload(cluster: Cluster, items: list[tuple[str, bytes]], goal: int = 2) -> None:
    asyncio.run(_upload(cluster.master_url, items, goal))


def digests(cluster: Cluster, paths: list[str]) -> dict[str, str]:
    return asyncio.run(_digests(cluster.master_url, paths))


def nodes(cluster: Cluster) -> list[dict[str, Any]]:
    return api(cluster, "nodes")["nodes"]


def wait_for(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def deviation(listing: list[dict[str, Any]]) -> float:
    """Largest distance (percentage points) of a node's reported utilisation from the mean."""
    live = [n for n in listing if n["state"] == "live"]
    mean = 100.0 * sum(n["used"] for n in live) / sum(n["capacity"] for n in live)
    return max(abs(n["utilisation"] - mean) for n in live)


class Sampler(threading.Thread):
    """Polls the placement of every chunk (`/api/chunks`) and remembers any chunk seen below its goal."""

    def __init__(self, cluster: Cluster, inodes: dict[int, int]) -> None:
        super().__init__(daemon=True)
        self.url = cluster.master_url
        self.inodes = inodes  # inode -> goal
        self.stop_event = threading.Event()
        self.samples = 0
        self.low: list[tuple[int, int, int]] = []  # (inode, index, copies)

    def run(self) -> None:
        while not self.stop_event.is_set():
            for inode, goal in self.inodes.items():
                status, reply = http_json("POST", f"{self.url}/api/chunks", {"inode": inode})
                if status != 200:
                    continue
                for c in reply["chunks"]:
                    if len(c["servers"]) < goal:
                        self.low.append((inode, c["index"], len(c["servers"])))
                self.samples += 1
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.join(timeout=10)


# -- the balance cluster ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(root=tmp_path_factory.mktemp("admin"), chunk_size=4 * MiB, goal=2)
    try:
        c.start_master()
        for _ in range(3):
            c.add_chunkserver(capacity="1GiB")
        c.wait_servers(3)
        upload(c, [(f"/data/f{i}", content(i)) for i in range(FILES)])
        for _ in range(2):
            c.add_chunkserver(capacity="1GiB")
        c.wait_servers(5)
        yield c
    finally:
        c.stop()


def expected_digests() -> dict[str, str]:
    return {f"/data/f{i}": hashlib.sha256(content(i)).hexdigest() for i in range(FILES)}


def data_inodes(cluster: Cluster) -> dict[int, int]:
    out = {}
    for i in range(FILES):
        status, reply = http_json("POST", f"{cluster.master_url}/api/resolve", {"path": f"/data/f{i}"})
        assert status == 200
        out[reply["attr"]["inode"]] = reply["attr"]["goal"]
    return out


def placement(cluster: Cluster) -> dict[int, list[int]]:
    out = {}
    for inode in data_inodes(cluster):
        _, reply = http_json("POST", f"{cluster.master_url}/api/chunks", {"inode": inode})
        for c in reply["chunks"]:
            out[c["chunk_id"]] = sorted(s["id"] for s in c["servers"])
    return out


def test_status_nodes_df(big: Cluster) -> None:
    status = dfs_json(big, "admin", "status")
    assert status["healthy"] and status["nodes"]["live"] == 5
    assert status["chunks"]["total"] == FILES * FILE_SIZE // (4 * MiB)
    assert status["chunks"]["healthy"] == status["chunks"]["total"]
    listing = dfs_json(big, "admin", "nodes")["nodes"]
    assert len(listing) == 5 and all(n["capacity"] == 1 << 30 for n in listing)
    assert sorted(n["chunks"] for n in listing)[:2] == [0, 0]  # the two new ones are empty
    df = dfs_json(big, "admin", "df")
    assert df["size"] == 5 << 30 and df["data"] == FILES * FILE_SIZE
    table = dfs(big, "admin", "nodes")
    assert table.returncode == 0 and "LAST HEARTBEAT" in table.stdout and "live" in table.stdout
    assert "HEALTHY" in dfs(big, "admin", "status").stdout


def test_balance_dry_run_changes_nothing(big: Cluster) -> None:
    before = placement(big)
    done = dfs(big, "admin", "balance", "--dry-run", "--threshold", "2")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout and "FROM" in done.stdout
    plan = dfs_json(big, "admin", "balance", "--dry-run", "--threshold", "2")
    assert plan["moves"] and all(m["source"] != m["target"] and m["reason"] for m in plan["moves"])
    assert placement(big) == before
    assert api(big, "balance")["state"] == "idle"


def test_balance_threshold_10_is_already_met(big: Cluster) -> None:
    """400 MiB over 5 GiB: the full nodes are 13% against a mean of 7.8%, inside 10 points already."""
    done = dfs_json(big, "admin", "balance", "--threshold", "10")
    assert done["state"] == "done" and done["moves_done"] == 0 and done["message"] == "balanced"
    assert deviation(nodes(big)) <= 10


@pytest.mark.timeout(240)
def test_balance_interrupt_bandwidth_rerun(big: Cluster) -> None:
    cap = 16 * MiB
    env = {**os.environ, "DFS_MASTER": big.master_url}
    with Sampler(big, data_inodes(big)) as sampler:
        proc = subprocess.Popen([sys.executable, "-m", "dfs", "admin", "balance", "--threshold", "2",
                                 "--max-bandwidth", "16MiB"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: api(big, "balance").get("moves_done", 0) >= 6, 30, "six moves")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (out, err)
        assert "stopping the balance" in err and "balance stopped" in out
        st = api(big, "balance")
        assert st["state"] == "stopped" and not st["in_flight"]
        # the cap held: bytes moved over the time taken, from the master's own figures
        assert st["bytes_moved"] / st["elapsed"] <= cap * 1.05, st
        assert st["bytes_moved"] / st["elapsed"] >= cap * 0.5, st
        assert deviation(nodes(big)) > 2 or st["moves_done"] < st["moves_planned"]

        again = dfs(big, "admin", "balance", "--threshold", "2")
        assert again.returncode == 0, again.stderr
        assert "balance done: balanced" in again.stdout
    assert sampler.samples > 10 and not sampler.low, sampler.low[:5]
    st = api(big, "balance")
    assert st["spread_after"]["deviation"] <= 2
    # what the servers report agrees once the moved-away copies are deleted (heartbeats)
    wait_for(lambda: deviation(nodes(big)) <= 2.5, 20, "reported utilisation within 2 points")
    assert all(n["chunks"] > 0 for n in nodes(big))
    assert digests(big, list(expected_digests())) == expected_digests()


@pytest.mark.timeout(180)
def test_decommission_and_recommission(big: Cluster) -> None:
    victim = nodes(big)[0]
    address = victim["url"].split("://", 1)[1]  # host:port
    with Sampler(big, data_inodes(big)) as sampler:
        done = dfs(big, "admin", "decommission", address)
    assert done.returncode == 0, done.stderr
    assert "decommissioned" in done.stdout
    assert not sampler.low, sampler.low[:5]
    after = {n["id"]: n for n in nodes(big)}
    assert after[victim["id"]]["state"] == "decommissioned" and after[victim["id"]]["chunks"] == 0
    # its files go with the garbage queue (heartbeat replies)
    wait_for(lambda: not cs_json(big.chunk_tokens(), "GET", victim["url"] + "/chunks")[1]["chunks"], 20,
             "the drained node to empty")
    assert digests(big, list(expected_digests())) == expected_digests()
    fsck = dfs(big, "admin", "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # a decommissioned node takes no new chunks
    upload(big, [("/data/after-drain", content(99, 8 * MiB))])
    assert all(n["chunks"] == 0 for n in nodes(big) if n["id"] == victim["id"])
    back = dfs(big, "admin", "recommission", str(victim["id"]))
    assert back.returncode == 0 and "in service again" in back.stdout
    assert {n["id"]: n for n in nodes(big)}[victim["id"]]["state"] == "live"


@pytest.mark.timeout(120)
def test_setrep_up_down_and_recursive(big: Cluster) -> None:
    upload(big, [("/rep/a", content(7, 10 * MiB)), ("/rep/sub/b", content(8, 6 * MiB))])
    done = dfs(big, "admin", "setrep", "3", "/rep/a", "--wait")
    assert done.returncode == 0, done.stderr
    info = dfs_json(big, "admin", "info", "/rep/a")
    assert [c["copies"] for c in info["chunks"]] == [3, 3, 3]
    for c in info["chunks"]:
        servers = [r["server_id"] for r in c["replicas"]]
        assert len(set(servers)) == len(servers)  # never two copies on one node
        assert len({r["digest"] for r in c["replicas"]}) == 1
    utilisation = {n["id"]: n["used"] / n["capacity"] for n in nodes(big)}
    done = dfs(big, "admin", "setrep", "1", "/rep", "-R", "--wait")
    assert done.returncode == 0, done.stderr
    info = dfs_json(big, "admin", "info", "/rep/a")
    assert [c["copies"] for c in info["chunks"]] == [1, 1, 1]
    kept = [c["replicas"][0]["server_id"] for c in info["chunks"]]
    assert all(utilisation[k] <= max(utilisation.values()) for k in kept)
    assert dfs_json(big, "admin", "info", "/rep/sub/b")["goal"] == 1
    assert digests(big, ["/rep/a", "/rep/sub/b"]) == {
        "/rep/a": hashlib.sha256(content(7, 10 * MiB)).hexdigest(),
        "/rep/sub/b": hashlib.sha256(content(8, 6 * MiB)).hexdigest()}


def test_info_shows_replicas_and_checksums(big: Cluster) -> None:
    text = dfs(big, "admin", "info", "/data/f0")
    assert text.returncode == 0, text.stderr
    assert "chunk 0: id" in text.stdout and "digest" in text.stdout
    info = dfs_json(big, "admin", "info", "/data/f0")
    assert info["size"] == FILE_SIZE and len(info["chunks"]) == 5
    assert all(r["status"] == "ok" and r["version"] == c["version"] for c in info["chunks"] for r in c["replicas"])


# -- fsck -------------------------------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(root=tmp_path / "cluster", chunk_size=4 * MiB, goal=2)
    try:
        c.start_master()
        for _ in range(3):
            c.add_chunkserver(capacity="1GiB")
        c.wait_servers(3)
        yield c
    finally:
        c.stop()


def chunk_file(cluster: Cluster, server_index: int, chunk_id: int) -> Path:
    return cluster.root / f"cs{server_index}" / "chunks" / f"{chunk_id & 0xFF:02x}" / f"{chunk_id}.chunk"


def server_index(cluster: Cluster, url: str) -> int:
    return next(i for i, s in enumerate(cluster.chunkservers) if s.url == url)


@pytest.mark.timeout(120)
def test_fsck_finds_and_repairs_deleted_and_corrupt_replicas(small: Cluster) -> None:
    data = content(3, 12 * MiB)
    upload(small, [("/f", data)])
    assert dfs(small, "admin", "fsck").returncode == 0
    info = dfs_json(small, "admin", "info", "/f")
    first, second = info["chunks"][0], info["chunks"][1]
    gone = first["replicas"][0]
    chunk_file(small, server_index(small, gone["url"]), first["chunk_id"]).unlink()
    bad = second["replicas"][1]
    path = chunk_file(small, server_index(small, bad["url"]), second["chunk_id"])
    with open(path, "r+b") as f:
        f.seek(100_000)
        byte = f.read(1)
        f.seek(100_000)
        f.write(bytes([byte[0] ^ 0xFF]))

    found = dfs(small, "admin", "fsck", "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    kinds = {(p["kind"], p.get("chunk_id"), p.get("server_id")) for p in report["problems"]}
    # the data file is gone but the chunkserver still indexes it: its read finds a damaged replica
    assert ("corrupt-replica", first["chunk_id"], gone["server_id"]) in kinds, kinds
    assert ("corrupt-replica", second["chunk_id"], bad["server_id"]) in kinds, kinds

    fixed = dfs(small, "admin", "fsck", "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    again = dfs(small, "admin", "fsck")
    assert again.returncode == 0, again.stdout
    assert "healthy" in again.stdout
    info = dfs_json(small, "admin", "info", "/f")
    assert all(c["copies"] == 2 for c in info["chunks"]), info
    assert digests(small, ["/f"]) == {"/f": hashlib.sha256(data).hexdigest()}


@pytest.mark.timeout(120)
def test_fsck_orphan_and_decommission_refusal(small: Cluster) -> None:
    upload(small, [("/g", content(4, 4 * MiB))], goal=3)
    target = small.chunkservers[0].url
    orphan_id = 10**9 + 7  # no chunk of the master has this id
    status, _ = http_json("GET", f"{target}/health")
    assert status == 200
    req = urllib.request.Request(f"{target}/chunks/{orphan_id}?version=1&offset=0", data=b"x" * 1000, method="PUT",
                                 headers=small.token_header("write", orphan_id, 1))
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    report = dfs_json_code(small, "admin", "fsck")
    assert any(p["kind"] == "orphan" and p["chunk_id"] == orphan_id for p in report["problems"])
    assert dfs(small, "admin", "fsck", "--repair").returncode == 0
    wait_for(lambda: all(c["chunk_id"] != orphan_id
                         for c in cs_json(small.chunk_tokens(), "GET", f"{target}/chunks")[1]["chunks"]),
             20, "the orphan to be deleted")
    # goal 3 on 3 servers: nowhere to drain to
    refused = dfs(small, "admin", "decommission", "1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("dfs: cannot decommission 1: cannot decommission server 1")
    assert "--force" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    forced = dfs(small, "admin", "decommission", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert {n["id"]: n for n in nodes(small)}[1]["chunks"] == 0
    assert digests(small, ["/g"]) == {"/g": hashlib.sha256(content(4, 4 * MiB)).hexdigest()}


def dfs_json_code(cluster: Cluster, *args: str) -> Any:
    done = dfs(cluster, *args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


# -- errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("admin", "balance", "--threshold", "-1"), 2, "dfs: admin balance: Invalid value for '--threshold'"),
        (("admin", "balance", "--threshold", "101"), 2, "dfs: admin balance: Invalid value for '--threshold'"),
        (("admin", "balance", "--max-bandwidth", "fast"), 2, "dfs: admin balance: Invalid value for '--max-bandwidth'"),
        (("admin", "setrep", "0", "/data"), 2, "dfs: admin setrep: Invalid value for 'GOAL'"),
        (("admin", "decommission", "nosuch:1"), 1, "dfs: cannot decommission nosuch:1: no such node: nosuch:1"),
        (("admin", "recommission", "99"), 1, "dfs: cannot recommission 99: no such node: 99"),
        (("admin", "info", "/missing"), 1, "dfs: cannot access '/missing': No such file or directory"),
        (("admin", "fsck", "/missing"), 1, "dfs: cannot check '/missing': No such file or directory"),
        (("admin", "setrep", "2", "/missing"), 1, "dfs: cannot set the goal of '/missing': No such file or directory"),
        (("admin", "info", "/data"), 1, "dfs: cannot access '/data': Is a directory"),
    ],
)
def test_errors_are_one_line(big: Cluster, args: tuple[str, ...], code: int, message: str) -> None:
    done = dfs(big, *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def _write_uncommitted(cluster: Cluster, inode: int, index: int, offset: int, data: bytes) -> int:
    """Write `data` into chunk slot `index` under a lease and give the lease back without committing a size."""
    client = "admin-test-writer"
    lease = http_json("POST", f"{cluster.master_url}/api/lease", {"inode": inode, "index": index, "client": client})[1]
    urls = [s["url"] for s in lease["servers"]]
    req = urllib.request.Request(f"{urls[0]}/chunks/{lease['chunk_id']}?version={lease['version']}&offset={offset}",
                                 data=data, method="PUT", headers={"X-DFS-Chain": ",".join(urls[1:]),
                                                                   "X-DFS-Token": lease["token"]})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and not json.loads(resp.read())["failed"]
    status, _ = http_json("POST", f"{cluster.master_url}/api/commit", {"inode": inode, "client": client})
    assert status == 200
    return int(lease["chunk_id"])


@pytest.mark.timeout(120)
def test_fsck_size_mismatches(small: Cluster) -> None:
    data = content(5, 6 * MiB)  # chunk 0 full, chunk 1 holds 2 MiB
    upload(small, [("/h", data)])
    inode = http_json("POST", f"{small.master_url}/api/resolve", {"path": "/h"})[1]["attr"]["inode"]
    _write_uncommitted(small, inode, 1, 2 * MiB, b"\xee" * MiB)  # data past the file's end in its last chunk
    past = _write_uncommitted(small, inode, 3, 0, b"\xdd" * 1000)  # a chunk wholly past the end
    report = dfs_json_code(small, "admin", "fsck")
    kinds = {p["kind"] for p in report["problems"]}
    assert {"beyond-eof", "past-eof"} <= kinds, report["problems"]
    assert any(p["kind"] == "past-eof" and p["chunk_id"] == past for p in report["problems"])
    fixed = dfs(small, "admin", "fsck", "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert dfs(small, "admin", "fsck").returncode == 0
    assert digests(small, ["/h"]) == {"/h": hashlib.sha256(data).hexdigest()}
    # growing the file now shows zeros, not the bytes that were cut
    status, _ = http_json("POST", f"{small.master_url}/api/setattr", {"inode": inode, "size": 7 * MiB})
    assert status == 200
    assert digests(small, ["/h"]) == {"/h": hashlib.sha256(data + bytes(MiB)).hexdigest()}
