"""Short-circuit reads on a real cluster (every chunkserver on this host): the bytes, the fallback to
HTTP on a corrupt local replica, the socket's checks, and the counters that show which path read."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from dfs.client.sync import SyncClient
from dfs.localread import encode, receive
from dfs.tokens import TOKEN_HEADER
from tests.harness import Cluster, http_json
from tests.test_client import fs as fs  # the module's client fixture
from tests.test_client import pattern, put

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reads() -> float:
    return counter("dfs_client_short_circuit_reads_total")


def fallbacks(reason: str) -> float:
    return counter("dfs_client_short_circuit_fallbacks_total", reason=reason)


def first_chunk(fs: SyncClient, path: str) -> dict:
    return fs.chunks(fs.stat(path).inode)["chunks"][0]


def data_file(cluster: Cluster, url: str, chunk_id: int) -> Path:
    index = next(i for i, cs in enumerate(cluster.chunkservers) if cs.url == url)
    return cluster.root / f"cs{index}" / "chunks" / f"{chunk_id & 0xFF:02x}" / f"{chunk_id}.chunk"


def local_socket(url: str) -> str:
    status, body = http_json("GET", f"{url}/local")
    assert status == 200, body
    return str(body["socket"])


def ask(path: str, request: dict) -> tuple[dict, list[int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(encode(request))
        return receive(sock)


def test_reads_across_a_chunk_boundary_and_at_the_end(fs: SyncClient) -> None:
    size = 3 * MiB + 12345
    data = pattern(size, 7)
    put(fs, "/sc-ranges", data)
    before, corrupt = reads(), fallbacks("corrupt")
    with fs.open("/sc-ranges") as f:
        for offset, length in [(0, 4096), (MiB - 100, 200), (2 * MiB - 70000, 140000), (size - 50, 100),
                               (size - 65536 - 10, 65546), (12345, 3 * MiB), (size, 10)]:
            assert f.read(offset, length) == data[offset : offset + length], (offset, length)
    assert b"".join(fs.download("/sc-ranges")) == data
    assert reads() - before >= 12
    assert fallbacks("corrupt") == corrupt


def test_reads_see_writes_in_place_and_growth(fs: SyncClient) -> None:
    data = bytearray(pattern(300_000, 8))
    put(fs, "/sc-grow", bytes(data))
    with fs.open("/sc-grow") as f:
        assert f.read(0, len(data)) == data  # the chunk's files are now open
        f.write(70_000, b"w" * 1000)  # in place, same chunk: the open meta file is the old one
        data[70_000:71_000] = b"w" * 1000
        f.write(len(data), b"tail" * 100)  # past the length the files were opened with
        data += b"tail" * 100
        assert f.read(0, len(data)) == data
    with fs.open("/sc-grow") as f:
        assert f.read(69_000, 3000) == data[69_000:72_000]
        assert f.read(len(data) - 500, 1000) == data[-500:]


def test_corrupt_local_replica_reads_from_another(cluster: Cluster, fs: SyncClient) -> None:
    data = pattern(200_000, 9)
    put(fs, "/sc-corrupt", data)
    chunk = first_chunk(fs, "/sc-corrupt")
    assert len(chunk["servers"]) == 3
    target = data_file(cluster, chunk["servers"][0]["url"], chunk["chunk_id"])  # the replica read first
    with open(target, "r+b") as f:
        f.seek(70_000)
        f.write(bytes(b ^ 0xFF for b in data[70_000:70_016]))
    corrupt, failures = fallbacks("corrupt"), counter("dfs_client_replica_failures_total", problem="corrupt")
    with fs.open("/sc-corrupt") as f:
        assert f.read(0, 4096) == data[:4096]  # an intact block of the corrupt replica: still short-circuit
        assert f.read(65_536, 100_000) == data[65_536:165_536]
    assert fallbacks("corrupt") == corrupt + 1
    # the HTTP read of the same range met the corrupt replica first: it reported it, then read another
    assert counter("dfs_client_replica_failures_total", problem="corrupt") == failures + 1


def test_socket_checks_token_and_version(cluster: Cluster, fs: SyncClient) -> None:
    put(fs, "/sc-token", pattern(100_000, 10))
    chunk = first_chunk(fs, "/sc-token")
    chunk_id, version, url = chunk["chunk_id"], chunk["version"], chunk["servers"][0]["url"]
    path = local_socket(url)

    def token(op: str = "read", v: int = version, lifetime: float = 600.0, cid: int = chunk_id) -> str:
        return cluster.token_header(op, cid, v, lifetime)[TOKEN_HEADER]

    refusals = [
        ({"chunk_id": chunk_id, "version": version, "token": "garbage"}, 401),
        ({"chunk_id": chunk_id, "version": version, "token": token(lifetime=-60)}, 401),  # expired
        ({"chunk_id": chunk_id, "version": version, "token": token("write")}, 403),
        ({"chunk_id": chunk_id, "version": version, "token": token(cid=chunk_id + 1)}, 403),
        ({"chunk_id": chunk_id, "version": version + 1, "token": token(v=version + 1)}, 409),  # not that version
        ({"chunk_id": chunk_id, "version": version}, 400),
    ]
    for request, status in refusals:
        reply, fds = ask(path, request)
        assert (reply["ok"], reply["status"], fds) == (False, status, []), (request, reply)
    reply, fds = ask(path, {"chunk_id": chunk_id, "version": version, "token": token()})
    try:
        assert reply["ok"] and reply["length"] == 100_000 and len(fds) == 2
        for fd in fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(OSError) as exc:
            os.pwrite(fds[0], b"x", 0)
        assert exc.value.errno == errno.EBADF
    finally:
        for fd in fds:
            os.close(fd)
    # one connection serves request after request, a refusal included
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        for request in ({"chunk_id": chunk_id}, {"chunk_id": chunk_id, "version": version, "token": token()}):
            sock.sendall(encode(request))
            reply, fds = receive(sock)
            for fd in fds:
                os.close(fd)
        assert reply["ok"] and len(fds) == 2


def test_local_describes_the_socket(cluster: Cluster) -> None:
    for cs in cluster.chunkservers:
        status, body = http_json("GET", f"{cs.url}/local")
        assert status == 200 and set(body) == {"host", "socket", "instance"}
        assert Path(body["socket"]).is_socket()
        assert json.dumps(body)  # plain JSON


def test_without_short_circuit_reads_go_over_http(cluster: Cluster) -> None:
    data = pattern(150_000, 11)
    with SyncClient(cluster.master_url, short_circuit=False) as plain:
        put(plain, "/sc-off", data)
        before = reads()
        with plain.open("/sc-off") as f:
            assert f.read(1000, 5000) == data[1000:6000]
        assert reads() == before


def test_a_restarted_chunkserver_is_read_again(cluster: Cluster, fs: SyncClient) -> None:
    """Its kept connection and files belong to the old process: the read still returns the right bytes."""
    data, other = pattern(120_000, 12), pattern(90_000, 13)
    put(fs, "/sc-restart", data)
    put(fs, "/sc-restart-2", other)
    url = first_chunk(fs, "/sc-restart-2")["servers"][0]["url"]  # the server short-circuit reads it from
    with fs.open("/sc-restart") as f, fs.open("/sc-restart-2") as g:
        assert f.read(0, 1000) == data[:1000]
        cs = next(cs for cs in cluster.chunkservers if cs.url == url)
        cs.stop()
        cs.start()
        cs.wait_healthy()
        cluster.wait_servers(len(cluster.chunkservers))
        assert f.read(70_000, 1000) == data[70_000:71_000]  # files held open stay readable
        unreachable = fallbacks("unreachable")
        assert g.read(0, len(other)) == other  # a new chunk: the socket is another process's now
        assert fallbacks("unreachable") == unreachable + 1
        assert f.read(0, len(data)) == data


def test_socket_removed_at_stop(cluster: Cluster) -> None:
    """Last: it stops a chunkserver of the module's cluster."""
    cs = cluster.chunkservers[-1]
    path = Path(local_socket(cs.url))
    assert path.is_socket()
    cs.stop()
    assert not path.exists()
