"""The copy primitive end to end: `POST /chunks/{id}/replicate` and `/recover` on real chunkservers,
and the store's install of a verified copy and recovery of a pending chunk."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.checksum import digests_of
from dfs.chunkserver.store import ChunkStore, chunk_paths
from dfs.client.sync import SyncClient
from dfs.errors import DfsError
from tests.faults.helpers import chunk_file, fast_cluster, flip, held, locations, pattern, upload
from tests.harness import Cluster, cs_json, free_port

MiB = 1024 * 1024
_cluster: Cluster  # of the module's `pair`


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, SyncClient]]:
    """A master and two chunkservers; files of goal 1, so a copy has somewhere to go."""
    cluster = fast_cluster(tmp_path_factory.mktemp("replication"), goal=1)
    try:
        cluster.start(chunkservers=2, gateway=False)
        global _cluster
        _cluster = cluster
        with SyncClient(cluster.master_url, retry_for=10) as fs:
            yield cluster, fs
    finally:
        cluster.stop()


def _source_and_target(cluster: Cluster, fs: SyncClient, path: str) -> tuple[dict, str, str, int]:
    loc = locations(fs, path)[0]
    source = loc["servers"][0]["url"]
    target = next(s.url for s in cluster.chunkservers if s.url != source)
    return loc, source, target, next(i for i, s in enumerate(cluster.chunkservers) if s.url == source)


def _replicate(target: str, chunk_id: int, body: dict) -> tuple[int, dict]:
    """The copy order as the master gives it: a replicate token, and a read token for the source."""
    tokens = _cluster.chunk_tokens()
    body = {"source_token": tokens.mint("read", chunk_id, body["version"], 600), **body}
    return cs_json(tokens, "POST", f"{target}/chunks/{chunk_id}/replicate", body)


def test_replicate_copies_verifies_and_is_idempotent(pair: tuple[Cluster, SyncClient]) -> None:
    cluster, fs = pair
    data = pattern(MiB - 1000, 40)
    upload(fs, "/copy-me", data)
    loc, source, target, _ = _source_and_target(cluster, fs, "/copy-me")
    code, reply = _replicate(target, loc["chunk_id"], {"source": source, "version": loc["version"]})
    assert code == 200, reply
    assert reply["copied"] == len(data) and reply["length"] == len(data) and not reply["pending"]
    _, mine = cs_json(cluster.chunk_tokens(), "GET", f"{target}/chunks/{loc['chunk_id']}/info")
    _, theirs = cs_json(cluster.chunk_tokens(), "GET", f"{source}/chunks/{loc['chunk_id']}/info")
    assert mine == theirs
    code, again = _replicate(target, loc["chunk_id"], {"source": source, "version": loc["version"]})
    assert code == 200 and again["copied"] == 0  # already there, identical
    # no temp file is left behind
    assert not list((cluster.root).glob("cs*/chunks/*/*.tmp"))


def test_replicate_refuses_what_it_cannot_verify(pair: tuple[Cluster, SyncClient]) -> None:
    cluster, fs = pair
    upload(fs, "/refuse", pattern(300_000, 41))
    loc, source, target, source_index = _source_and_target(cluster, fs, "/refuse")
    cid, version = loc["chunk_id"], loc["version"]
    assert _replicate(target, cid, {"source": source, "version": version + 1})[1]["error"] == "ESTALE"
    assert _replicate(target, cid, {"source": target, "version": version})[1]["error"] == "EINVAL"
    assert _replicate(target, cid, {"source": "ftp://x", "version": version})[1]["error"] == "EINVAL"
    assert _replicate(target, 10**12, {"source": source, "version": 1})[1]["error"] == "ENOENT"
    dead = f"http://127.0.0.1:{free_port()}"
    assert _replicate(target, cid, {"source": dead, "version": version})[1]["error"] == "EIO"
    # a corrupt source: the copy fails, nothing is installed
    flip(chunk_file(cluster, source_index, cid), 70_000)
    code, reply = _replicate(target, cid, {"source": source, "version": version})
    assert code >= 400, reply
    assert cid not in held(next(s for s in cluster.chunkservers if s.url == target))
    assert not list((cluster.root).glob("cs*/chunks/*/*.tmp"))


def test_recover_endpoint(pair: tuple[Cluster, SyncClient]) -> None:
    cluster, fs = pair
    upload(fs, "/recover", pattern(100_000, 42))  # past resident_max: a chunk
    loc, source, _, _ = _source_and_target(cluster, fs, "/recover")
    cid, version = loc["chunk_id"], loc["version"]
    tokens = cluster.chunk_tokens()
    code, reply = cs_json(tokens, "POST", f"{source}/chunks/{cid}/recover?from={version + 5}&to={version + 6}")
    assert code == 409 and reply["error"] == "ESTALE"
    code, reply = cs_json(tokens, "POST", f"{source}/chunks/{cid}/recover?from={version}&to={version}")
    assert code == 400
    code, reply = cs_json(tokens, "POST", f"{source}/chunks/{cid}/recover?from={version}&to={version + 1}")
    assert code == 200 and reply["version"] == version + 1 and not reply["pending"]


async def test_store_install_and_recover(tmp_path: Path) -> None:
    store = ChunkStore([tmp_path])
    await store.open()
    # a pending chunk (a write that broke off) becomes readable at a newer version by recovery
    with pytest.raises(DfsError):
        async with store.writer(7, 3, 0, 200_000) as writer:
            await writer.feed(b"a" * 100_000)
            raise DfsError(5, "client gone")
    assert store.index[7].pending
    await store.recover(7, 3, 4)
    got = b"".join([bytes(p) async for p in store.read(7, 4, 0, 100_000)])
    assert got == b"a" * 100_000
    # an installed copy is complete and survives a reopen; the temp file is gone
    data = pattern(3 * 65536 + 10, 43)
    with store.reserve(9, len(data)) as root:
        tmp = store.copy_path(root, 9)
        tmp.write_bytes(data)
        await store.install_copy(9, 2, root, tmp, len(data), array("Q", digests_of(data)))
    assert not tmp.exists()
    again = ChunkStore([tmp_path])
    await again.open()
    assert again.index[9].version == 2 and not again.index[9].pending
    got = b"".join([bytes(p) async for p in again.read(9, 2, 0, len(data))])
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert chunk_paths(tmp_path, 9)[0].stat().st_size == len(data)
