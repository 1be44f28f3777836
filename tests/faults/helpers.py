"""What the fault-injection tests share: fast clusters, waiting, replica files on disk, the invariant check.

Clusters here use 1 MiB chunks, a 0.3 s heartbeat and a 3 s dead timeout, so that a node is declared
dead and its chunks rebuilt within seconds. `check_placement` is the consistency check every test ends
with (there is no fsck command yet): it reads the master's database read-only and asks the
chunkservers what they hold.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, text

from dfs.client.sync import SyncClient
from tests.harness import Cluster, Service, cs_json, http_json, service_tokens
from tests.pgserver import sync_url

MiB = 1024 * 1024
T = TypeVar("T")

FAST_MASTER = ["--dead-timeout", "3", "--heartbeat-interval", "0.3", "--gc-grace", "0"]


def fast_cluster(root: Path, *, goal: int = 2, master_args: Iterable[str] = (),
                 chunkserver_args: Iterable[str] = ("--scrub-rate", "0")) -> Cluster:
    return Cluster(root=root, chunk_size=MiB, goal=goal, master_args=[*FAST_MASTER, *master_args],
                   chunkserver_args=list(chunkserver_args))


def wait_until(what: str, probe: Callable[[], T], timeout: float = 20.0, every: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(every)


def pattern(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"fault{seed}".encode()).digest() * 2048  # 64 KiB
    data = bytearray((block * (size // len(block) + 1))[:size])
    for i in range(0, size - 8, 4096):
        data[i : i + 8] = (i ^ seed).to_bytes(8, "little")
    return bytes(data)


async def agen(data: bytes, piece: int = 1 << 20):
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(fs: SyncClient, path: str) -> str:
    h = hashlib.sha256()
    for piece in fs.download(path):
        h.update(piece)
    return h.hexdigest()


def status(cluster: Cluster) -> dict[str, Any]:
    code, body = http_json("GET", cluster.master_url + "/api/status")
    assert code == 200, body
    return body


def server_id_of(cluster: Cluster, service: Service) -> int:
    for s in status(cluster)["servers"]:
        if s["url"] == service.url:
            return int(s["id"])
    raise AssertionError(f"{service.name} unknown to the master")


def state_of(cluster: Cluster, service: Service) -> str:
    return next(s["state"] for s in status(cluster)["servers"] if s["url"] == service.url)


def locations(fs: SyncClient, path: str) -> list[dict[str, Any]]:
    """The master's chunk list for a file: live replicas at the current version only."""
    return fs.chunks(fs.stat(path).inode, 0, 100_000)["chunks"]


def at_goal(fs: SyncClient, path: str, goal: int) -> bool:
    return all(len(c["servers"]) >= goal for c in locations(fs, path))


def held(service: Service) -> dict[int, dict[str, Any]]:
    """What a chunkserver holds: chunk id -> {version, length, pending}."""
    code, body = cs_json(service_tokens(service), "GET", service.url + "/chunks")
    assert code == 200, body
    return {c["chunk_id"]: c for c in body["chunks"]}


def chunk_file(cluster: Cluster, index: int, chunk_id: int) -> Path:
    return cluster.root / f"cs{index}" / "chunks" / f"{chunk_id & 0xFF:02x}" / f"{chunk_id}.chunk"


def flip(path: Path, offset: int, count: int = 16) -> None:
    """Corrupt `count` bytes at `offset` of a file in place (as a bad disk would)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(count))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def check_placement(cluster: Cluster, *, live_only: bool = True) -> list[str]:
    """Consistency of the master's placement with the chunkservers; a list of problems (empty: fine).

    * no replica row names a chunk the master does not know, and no chunk belongs to a missing file;
    * every chunk of every file has at least one replica at the chunk's version that a live
      chunkserver really holds, complete, at that version.
    """
    problems: list[str] = []
    engine = create_engine(sync_url(cluster.database_url))
    try:
        with engine.connect() as db:
            orphans = db.execute(text("SELECT chunk_id, server_id FROM replicas WHERE chunk_id NOT IN "
                                      "(SELECT chunk_id FROM chunks)")).all()
            problems += [f"replica of unknown chunk {c} on server {s}" for c, s in orphans]
            homeless = db.execute(text("SELECT chunk_id FROM chunks WHERE inode NOT IN (SELECT id FROM inodes)")).all()
            problems += [f"chunk {c} of a missing file" for (c,) in homeless]
            rows = db.execute(text("SELECT c.chunk_id, c.version, r.server_id FROM chunks c LEFT JOIN replicas r "
                                   "ON r.chunk_id = c.chunk_id AND r.version = c.version")).all()
            urls = dict(db.execute(text("SELECT id, url FROM servers")).all())
    finally:
        engine.dispose()
    states = {s["id"]: s["state"] for s in status(cluster)["servers"]}
    holdings: dict[int, dict[int, dict[str, Any]]] = {}
    for sid, url in urls.items():
        if live_only and states.get(sid) != "live":
            continue
        code, body = cs_json(cluster.chunk_tokens(), "GET", url + "/chunks", timeout=5)
        if code == 200:
            holdings[sid] = {c["chunk_id"]: c for c in body["chunks"]}
    good: dict[int, int] = {}
    versions: dict[int, int] = {}
    for chunk_id, version, sid in rows:
        versions[chunk_id] = version
        have = holdings.get(sid, {}).get(chunk_id) if sid is not None else None
        if have and have["version"] == version and not have["pending"]:
            good[chunk_id] = good.get(chunk_id, 0) + 1
    problems += [f"chunk {c} v{v} has no good replica" for c, v in versions.items() if not good.get(c)]
    return problems


def upload(fs: SyncClient, path: str, data: bytes, goal: int | None = None) -> None:
    fs.upload(path, agen(data), goal=goal)
