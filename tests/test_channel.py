"""The master's WebSocket channel (master/channel.py) and the inline client calls over it
(dfs/client/channel.py): the same checks and answers as HTTP, in-band errors, retries."""

from __future__ import annotations

import errno
import json
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from dfs.auth import auth_headers, identity_headers
from dfs.client import Client
from dfs.client.channel import _Link, run_inline
from dfs.client.sync import LoopThread
from dfs.errors import DfsError
from tests.harness import TEST_ADMIN_KEY, Cluster, http_json, inline_client


@pytest.fixture(scope="module")
def inline(cluster: Cluster, loop: LoopThread) -> Iterator[Client]:
    with inline_client(cluster.master_url, loop) as client:
        yield client


def channel_url(cluster: Cluster) -> str:
    return cluster.master_url.replace("http", "ws", 1) + "/api/channel"


def call(ws: websocket.WebSocket, message: object) -> dict:
    ws.send(message if isinstance(message, str) else json.dumps(message))
    return json.loads(ws.recv())


def test_inline_calls_run_without_the_loop(inline: Client) -> None:
    folder = run_inline(inline.mkdir(1, "chan", 0o755))
    made, created = run_inline(inline.create(folder.inode, "f", 0o640, exclusive=True))
    assert created and stat.S_IMODE(made.mode) == 0o640
    assert run_inline(inline.stat("/chan/f")).inode == made.inode
    with pytest.raises(DfsError) as err:
        run_inline(inline.create(folder.inode, "f", 0o640, exclusive=True))
    assert err.value.errno == errno.EEXIST
    names = run_inline(_names(inline, folder.inode))
    assert names == ["f"]
    run_inline(inline.unlink(folder.inode, "f"))
    with pytest.raises(DfsError) as err:
        run_inline(inline.lookup(folder.inode, "f"))
    assert err.value.errno == errno.ENOENT


async def _names(client: Client, inode: int) -> list[str]:
    return [name async for name, _ in client.readdir(inode)]


class _Suspend:
    def __await__(self) -> Iterator[None]:
        yield None  # what awaiting a future of an event loop does


async def _suspends() -> None:
    await _Suspend()


def test_run_inline_refuses_a_coroutine_that_suspends() -> None:
    with pytest.raises(RuntimeError, match="suspended"):
        run_inline(_suspends())


def test_a_view_acting_for_a_user_is_checked_as_that_user(cluster: Cluster, loop: LoopThread) -> None:
    proxy = loop.run(Client(cluster.master_url, key=cluster.create_key("chan-proxy", 0, 0, "proxy")).start())
    try:
        proxy.open_channels()
        root = proxy.inline()
        folder = run_inline(root.mkdir(1, "chan-private", 0o700))
        user = root.acting_for(4242, 4242)
        with pytest.raises(DfsError) as err:
            run_inline(user.create(folder.inode, "x", 0o644))
        assert err.value.errno == errno.EACCES
    finally:
        loop.run(proxy.close())


def test_the_channel_needs_a_key(cluster: Cluster) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(channel_url(cluster), timeout=5)
    assert refused.value.status_code == 401


def test_bad_calls_are_answered_in_band(cluster: Cluster) -> None:
    rw = cluster.create_key("chan-rw", 1000, 1000, "rw")
    ws = websocket.create_connection(channel_url(cluster), header=[f"Authorization: Bearer {rw}"], timeout=5)
    try:
        key = auth_headers(rw)
        assert call(ws, {"id": 1, "op": "getattr", "headers": key, "body": {"inode": 1}})["status"] == 200
        cases = [
            ({"id": 2, "op": "getattr", "headers": key, "body": {"inode": "1"}}, 400, "EINVAL"),
            ({"id": 3, "op": "cs/heartbeat", "headers": key, "body": {}}, 400, "EINVAL"),
            ({"id": 4, "op": "nothing", "headers": key, "body": {}}, 400, "EINVAL"),
            ({"id": 5, "op": "getattr", "headers": {}, "body": {"inode": 1}}, 401, "ENOKEY"),
            ({"id": 6, "op": "getattr", "headers": {"Authorization": "Bearer dfs_x_y"}, "body": {"inode": 1}},
             401, "EKEYREJECTED"),
            ({"id": 7, "op": "getattr", "headers": {**key, **identity_headers(0, 0)}, "body": {"inode": 1}},
             403, "EACCES"),  # an rw key may not act for others
            ({"id": 8, "op": "getattr", "headers": key, "body": [1]}, 400, "EINVAL"),
            ("[" * 10_000 + "]" * 10_000, 400, "EINVAL"),
            ("not json", 400, "EINVAL"),
        ]
        for message, status, code in cases:
            answer = call(ws, message)
            assert (answer["status"], answer["body"]["error"]) == (status, code), (message, answer)
            assert "Traceback" not in answer["body"]["message"]
        assert call(ws, {"id": 9, "op": "getattr", "headers": key, "body": {"inode": 1}})["status"] == 200
        # A channel remembers what its headers authenticated as (master/channel.py Callers), but not
        # past a revocation: the next call with the same headers is refused.
        status, _ = http_json("POST", cluster.master_url + "/api/admin/keys/revoke", {"name": "chan-rw"},
                              key=TEST_ADMIN_KEY)
        assert status == 200
        answer = call(ws, {"id": 10, "op": "getattr", "headers": key, "body": {"inode": 1}})
        assert (answer["status"], answer["body"]["error"]) == (401, "EKEYREVOKED"), answer
    finally:
        ws.close()


def test_inline_calls_wait_for_a_restarting_master(fresh_cluster: Cluster, loop: LoopThread) -> None:
    fresh_cluster.start(chunkservers=1, gateway=False)
    client = loop.run(Client(fresh_cluster.master_url, key=TEST_ADMIN_KEY, retry_for=30).start())
    try:
        client.open_channels()
        inline = client.inline()
        run_inline(inline.mkdir(1, "before", 0o755))
        assert fresh_cluster.master is not None
        fresh_cluster.master.stop()
        started = time.monotonic()
        fresh_cluster.master.start()  # same port and data: the pooled connection is dead, a new one is made
        fresh_cluster.master.wait_healthy()
        assert run_inline(inline.stat("/before")).inode > 1
        assert time.monotonic() - started < 30
    finally:
        loop.run(client.close())


def test_a_short_retry_ends_in_eio_when_the_master_is_gone(fresh_cluster: Cluster, loop: LoopThread,
                                                          tmp_path: Path) -> None:
    fresh_cluster.start(chunkservers=1, gateway=False)
    client = loop.run(Client(fresh_cluster.master_url, key=TEST_ADMIN_KEY, retry_for=1).start())
    try:
        client.open_channels()
        inline = client.inline()
        assert fresh_cluster.master is not None
        fresh_cluster.master.stop()
        with pytest.raises(DfsError) as err:
            run_inline(inline.stat("/"))
        assert err.value.errno == errno.EIO and "unreachable" in err.value.message
    finally:
        loop.run(client.close())


def test_the_master_stops_with_channels_open(fresh_cluster: Cluster, loop: LoopThread) -> None:
    """Open channels are closed on shutdown: they do not hold the master until aiohttp gives up on them."""
    fresh_cluster.start(chunkservers=1, gateway=False)
    client = loop.run(Client(fresh_cluster.master_url, key=TEST_ADMIN_KEY, retry_for=1).start())
    try:
        client.open_channels()
        run_inline(client.inline().stat("/"))  # a pooled, idle connection stays open
        master = fresh_cluster.master
        assert master is not None
        master.signal(signal.SIGTERM)
        deadline = time.monotonic() + 20  # aiohttp would wait its 60 s shutdown timeout for open handlers
        while master.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not master.running, master.log()[-2000:]
    finally:
        loop.run(client.close())


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server's (unmasked) frame."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        return head + bytes([n]) + payload
    if n < 65536:
        return head + bytes([126]) + n.to_bytes(2, "big") + payload
    return head + bytes([127]) + n.to_bytes(8, "big") + payload


def _unmask(frame: bytes) -> tuple[int, bytes]:
    """A client's frame: (opcode, payload)."""
    assert frame[1] & 0x80, "a client's frames are masked"
    n, start = frame[1] & 0x7F, 2
    if n == 126:
        n, start = int.from_bytes(frame[2:4], "big"), 4
    mask, payload = frame[start:start + 4], frame[start + 4:start + 4 + n]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_link_frames() -> None:
    """The channel's own framing (dfs/client/channel.py _Link): lengths of every size, a message in
    fragments, a ping answered, a message split across reads, a close."""
    mine, theirs = socket.socketpair()
    try:
        mine.settimeout(5)
        ws = websocket.WebSocket()
        ws.sock = mine
        link = _Link(ws)
        big = b"x" * 70_000
        theirs.sendall(_frame(0x1, b"short") + _frame(0x1, b"m" * 300) + _frame(0x2, big)
                       + _frame(0x9, b"hi") + _frame(0x1, b"frag", fin=False) + _frame(0x0, b"ments"))
        assert link.receive() == b"short"
        assert link.receive() == b"m" * 300
        assert link.receive() == big
        assert link.receive() == b"fragments"
        assert _unmask(theirs.recv(100)) == (0x9 + 1, b"hi")  # the pong
        whole = _frame(0x1, b'{"id": 1}')
        theirs.sendall(whole[:3])
        theirs.sendall(whole[3:])
        assert link.receive() == b'{"id": 1}'
        link.send(0x1, "é\udcff".encode("utf-8", "surrogatepass") * 50)
        assert _unmask(theirs.recv(1000)) == (0x1, "é\udcff".encode("utf-8", "surrogatepass") * 50)
        theirs.sendall(_frame(0x8, b"\x03\xe8"))
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            link.receive()
    finally:
        mine.close()
        theirs.close()
