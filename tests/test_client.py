"""The client library end to end on a real cluster: data paths, sparse files, replicas, failures."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
from collections.abc import Iterator

import pytest

from dfs.client.sync import SyncClient
from dfs.errors import DfsError
from dfs.tokens import TOKEN_HEADER
from tests.harness import Cluster, http_json

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def fs(cluster: Cluster) -> Iterator[SyncClient]:
    client = SyncClient(cluster.master_url)
    try:
        yield client
    finally:
        client.shutdown()


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-at-chunk-scale bytes."""
    block = hashlib.sha256(f"seed{seed}".encode()).digest() * 4096  # 128 KiB
    reps = size // len(block) + 1
    data = bytearray(block * reps)[:size]
    for i in range(0, size - 8, 4096):  # make every 4 KiB distinct
        data[i : i + 8] = i.to_bytes(8, "little")
    return bytes(data)


async def agen(data: bytes, piece: int = 300_000):
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


def put(fs: SyncClient, path: str, data: bytes, goal: int | None = None) -> None:
    fs.upload(path, agen(data), goal=goal)


def read_all(fs: SyncClient, path: str) -> bytes:
    return b"".join(fs.download(path))


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 12345])
def test_upload_download_sizes(fs: SyncClient, size: int) -> None:
    data = pattern(size, size)
    put(fs, f"/sizes-{size}", data)
    assert fs.stat(f"/sizes-{size}").size == size
    assert hashlib.sha256(read_all(fs, f"/sizes-{size}")).hexdigest() == hashlib.sha256(data).hexdigest()


def test_large_file_by_digest(fs: SyncClient) -> None:
    data = pattern(50 * MiB + 777, 7)
    put(fs, "/large.bin", data)
    digest = hashlib.sha256()
    for piece in fs.download("/large.bin"):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_partial_reads_across_chunks(fs: SyncClient) -> None:
    data = pattern(3 * MiB, 3)
    put(fs, "/ranges.bin", data)
    with fs.open("/ranges.bin") as f:
        for offset, size in [(0, 10), (MiB - 5, 10), (2 * MiB - 1, MiB + 2), (3 * MiB - 3, 100), (5 * MiB, 10)]:
            assert f.read(offset, size) == data[offset : offset + size]


def test_sparse_file_reads_zeros(fs: SyncClient) -> None:
    with fs.open("/sparse", create=True) as f:
        f.write(5 * MiB + 10, b"tail")
        f.write(100, b"head")
    assert fs.stat("/sparse").size == 5 * MiB + 14
    data = read_all(fs, "/sparse")
    expected = bytearray(5 * MiB + 14)
    expected[100:104] = b"head"
    expected[5 * MiB + 10 :] = b"tail"
    assert data == bytes(expected)
    # only the two written slots hold chunks
    assert [c["index"] for c in fs.chunks(fs.stat("/sparse").inode)["chunks"]] == [0, 5]


def test_overwrite_inside_and_across_chunks(fs: SyncClient) -> None:
    data = bytearray(pattern(3 * MiB, 11))
    put(fs, "/overwrite", bytes(data))
    with fs.open("/overwrite") as f:
        f.write(1000, b"x" * 5000)  # inside chunk 0, crossing a 64 KiB block
        data[1000:6000] = b"x" * 5000
        f.write(2 * MiB - 300, b"y" * 700)  # across the chunk 1 / chunk 2 boundary
        data[2 * MiB - 300 : 2 * MiB + 400] = b"y" * 700
        assert f.read(0, len(data)) == bytes(data)  # read-after-write in the same handle
    assert read_all(fs, "/overwrite") == bytes(data)
    assert fs.stat("/overwrite").size == 3 * MiB


def test_truncate_down_and_up(fs: SyncClient) -> None:
    data = pattern(2 * MiB + 500, 12)
    put(fs, "/trunc", data)
    fs.truncate("/trunc", MiB + 100)  # inside chunk 1: chunk 2 dropped, tail of chunk 1 cut
    assert read_all(fs, "/trunc") == data[: MiB + 100]
    fs.truncate("/trunc", 3 * MiB)  # grow: the cut bytes come back as zeros, not as old data
    got = read_all(fs, "/trunc")
    assert len(got) == 3 * MiB
    assert got[: MiB + 100] == data[: MiB + 100]
    assert got[MiB + 100 :] == bytes(3 * MiB - MiB - 100)
    fs.truncate("/trunc", 0)
    assert read_all(fs, "/trunc") == b""


def test_every_replica_identical(fs: SyncClient, cluster: Cluster) -> None:
    data = pattern(2 * MiB + 3, 13)
    put(fs, "/replicas", data)
    with fs.open("/replicas") as f:
        f.write(MiB - 2, b"zz")  # an overwrite must reach every replica too
    attr = fs.stat("/replicas")
    chunks = fs.chunks(attr.inode)["chunks"]
    assert len(chunks) == 3
    for chunk in chunks:
        assert len(chunk["servers"]) == 3, chunk
        infos = []
        for server in chunk["servers"]:
            status, info = http_json("GET", f"{server['url']}/chunks/{chunk['chunk_id']}/info",
                                     headers={TOKEN_HEADER: chunk["token"]})  # the read token of the location
            assert status == 200
            infos.append((info["version"], info["length"], info["digest"], info["pending"]))
        assert len(set(infos)) == 1, infos
        assert infos[0][0] == chunk["version"] and not infos[0][3]


def test_concurrent_uploads(fs: SyncClient) -> None:
    bodies = [pattern(2 * MiB + i, 100 + i) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: put(fs, f"/conc-{i}", bodies[i]), range(4)))
        list(pool.map(lambda i: put(fs, "/conc-same", bodies[i]), range(4)))
    for i in range(4):
        assert read_all(fs, f"/conc-{i}") == bodies[i]
    assert read_all(fs, "/conc-same") in bodies
    names = [name for name, _ in fs.listdir("/")]
    assert not [n for n in names if "dfs-upload" in n], "temporary upload files left behind"


def test_bad_input(fs: SyncClient) -> None:
    with pytest.raises(DfsError) as exc:
        fs.makedir("/bad\0name")
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(DfsError) as exc:
        fs.makedir("/" + "n" * 256)
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(DfsError) as exc:
        fs.stat("/a/../etc")
    assert exc.value.errno == errno.EINVAL
    put(fs, "/neg", b"abc")
    with fs.open("/neg") as f, pytest.raises(DfsError) as exc:
        f.read(-1, 10)
    assert exc.value.errno == errno.EINVAL
    with fs.open("/neg") as f, pytest.raises(DfsError) as exc:
        f.write(-5, b"x")
    assert exc.value.errno == errno.EINVAL


def test_namespace_through_paths(fs: SyncClient) -> None:
    fs.makedir("/ns/a/b", parents=True)
    fs.makedir("/ns/a/b", parents=True)  # -p tolerates existing folders
    with pytest.raises(DfsError) as exc:
        fs.makedir("/ns/a")
    assert exc.value.errno == errno.EEXIST
    put(fs, "/ns/a/b/f", b"data")
    with pytest.raises(DfsError) as exc:
        fs.remove("/ns/a")
    assert exc.value.errno == errno.ENOTEMPTY
    fs.rename("/ns/a/b/f", "/ns/g")
    assert read_all(fs, "/ns/g") == b"data"
    fs.symlink("g", "/ns/link")
    assert fs.readlink("/ns/link") == "g"
    assert fs.stat("/ns/link").inode == fs.stat("/ns/g").inode
    fs.remove("/ns", recursive=True)
    assert not fs.exists("/ns")


def test_reads_survive_a_dead_chunkserver(fresh_cluster: Cluster) -> None:
    fresh_cluster.start(chunkservers=3, gateway=False)
    data = pattern(4 * MiB + 99, 21)
    with SyncClient(fresh_cluster.master_url, retry_for=5.0) as client:
        put(client, "/survivor", data)
        fresh_cluster.chunkservers[0].kill()
        assert read_all(client, "/survivor") == data
        with client.open("/survivor") as f:  # a second handle, whose locations still list the dead one
            assert f.read(MiB - 10, 20) == data[MiB - 10 : MiB + 10]


def test_writes_survive_a_dead_chunkserver(fresh_cluster: Cluster) -> None:
    fresh_cluster.start(chunkservers=3, gateway=False)
    data = pattern(3 * MiB, 22)
    with SyncClient(fresh_cluster.master_url, retry_for=5.0) as client:
        put(client, "/before", data)
        fresh_cluster.chunkservers[1].kill()
        with client.open("/before") as f:  # overwrite an existing chunk: its dead replica is dropped
            f.write(10, b"new")
        put(client, "/after", data)  # new chunks: the lease must not wait for the dead server
        expected = data[:10] + b"new" + data[13:]
        assert read_all(client, "/before") == expected
        assert read_all(client, "/after") == data


def test_master_restart_keeps_files(fresh_cluster: Cluster) -> None:
    fresh_cluster.start(chunkservers=3, gateway=False)
    files = {f"/keep/{i}": pattern(MiB // 2 * i + 1, i) for i in range(5)}
    with SyncClient(fresh_cluster.master_url, retry_for=20.0) as client:
        client.makedir("/keep")
        for path, data in files.items():
            put(client, path, data)
    assert fresh_cluster.master is not None
    fresh_cluster.master.kill()  # kill -9: only what was committed survives, and all of it must
    fresh_cluster.start_master()
    fresh_cluster.wait_servers(3)
    with SyncClient(fresh_cluster.master_url, retry_for=20.0) as client:
        assert sorted(name for name, _ in client.listdir("/keep")) == sorted(p.rsplit("/", 1)[1] for p in files)
        for path, data in files.items():
            assert read_all(client, path) == data


def test_random_io_against_a_local_file(fs: SyncClient, tmp_path) -> None:
    """Random writes and reads through one handle give what the same calls give on a local file."""
    import random

    rng = random.Random(5)
    local = tmp_path / "model"
    local.write_bytes(b"")
    with fs.open("/random", create=True) as f, open(local, "r+b") as model:
        for _ in range(60):
            offset = rng.randrange(0, 4 * MiB)
            if rng.random() < 0.6:
                chunk = os.urandom(rng.randrange(1, 300_000))
                f.write(offset, chunk)
                model.seek(offset)
                model.write(chunk)
            else:
                size = rng.randrange(1, 500_000)
                model.seek(offset)
                assert f.read(offset, size) == model.read(size)
    assert read_all(fs, "/random") == local.read_bytes()
