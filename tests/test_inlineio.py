"""Chunk I/O from the calling thread (dfs/client/inlineio.py) on a real cluster: a `FileHandle` with an
inline client writes, commits and reads without the event loop, fails over, and survives a
chunkserver that dropped its kept connections."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dfs.client.channel import run_inline
from dfs.client.chunkio import FAN_OUT
from dfs.client.client import Client
from dfs.client.files import FileHandle
from dfs.client.inlineio import Connections, inline_client
from dfs.client.sync import LoopThread
from dfs.tokens import TOKEN_HEADER
from tests.harness import Cluster
from tests.scrape import scrape, value

MiB = 1024 * 1024


class Inline:
    """A started client on its loop, and the inline view of it a mount gives its open files."""

    def __init__(self, master_url: str) -> None:
        self.loop = LoopThread()
        self.client = Client(master_url)
        self.loop.run(self.client.start())
        self.client.open_channels()
        self.connections = Connections()
        self.view = inline_client(self.client, self.connections)

    def create(self, name: str) -> FileHandle:
        attr, _ = run_inline(self.view.create(1, name, 0o644))
        return FileHandle(self.client, attr, inline=self.view)

    def open(self, name: str) -> FileHandle:
        attr = run_inline(self.view.lookup(1, name))
        return FileHandle(self.client, attr, inline=self.view)

    def close(self) -> None:
        self.connections.close()
        self.loop.run(self.client.close())
        self.loop.stop()


@pytest.fixture
def inline(fresh_cluster: Cluster) -> Iterator[Inline]:
    fresh_cluster.start(gateway=False)
    io = Inline(fresh_cluster.master_url)
    try:
        yield io
    finally:
        io.close()


@pytest.mark.timeout(60)
def test_write_commit_read_without_the_loop(inline: Inline) -> None:
    data = os.urandom(2 * MiB + 4321)  # three 1 MiB chunk slots
    handle = inline.create("f")
    assert run_inline(handle.write(0, data)) == len(data)
    run_inline(handle.close())  # one commit that also gives the leases back
    assert not handle._leases
    again = inline.open("f")
    assert again.size == len(data)
    assert run_inline(again.read(0, len(data))) == data
    assert run_inline(again.read(MiB - 10, 4096)) == data[MiB - 10 : MiB + 4086]
    assert inline.loop.run(again.read(5, 100)) == data[5:105]  # the same handle on the loop: the asyncio client


@pytest.mark.timeout(90)
def test_reads_fail_over_and_kept_connections_recover(inline: Inline, fresh_cluster: Cluster) -> None:
    data = os.urandom(300_000)
    handle = inline.create("g")
    run_inline(handle.write(0, data))
    run_inline(handle.close())
    reader = inline.open("g")
    assert run_inline(reader.read(0, 10)) == data[:10]  # every replica's connection may now be kept
    first = run_inline(reader._location(0)).servers[0]
    server = next(s for s in fresh_cluster.chunkservers if s.url.rstrip("/") == first.url.rstrip("/"))
    server.stop()
    server.start()  # its kept connection is dead: the request goes again on a new one
    server.wait_healthy()
    fresh_cluster.wait_servers(3)
    assert run_inline(reader.read(1000, 5000)) == data[1000:6000]
    server.kill()  # gone: the read moves on to another replica
    assert run_inline(reader.read(200_000, 4096)) == data[200_000:204_096]


@pytest.mark.timeout(120)
def test_small_pieces_go_to_every_replica_at_once(inline: Inline, fresh_cluster: Cluster) -> None:
    """A piece of at most FAN_OUT bytes goes from the client to each replica (no chain hop): every
    replica holds it and no chunkserver forwarded a byte. A replica that is down is named failed and
    the write goes on without it."""
    def forwarded() -> float:
        return sum(value(scrape(s.url + "/metrics"), "dfs_chunkserver_forwarded_bytes_total")
                   for s in fresh_cluster.chunkservers if s.running)

    data = os.urandom(FAN_OUT)
    handle = inline.create("small")
    run_inline(handle.write(0, data))  # from this thread (the mount's FUSE threads)
    run_inline(handle.close())
    on_loop = inline.create("small-on-the-loop")
    inline.loop.run(on_loop.write(0, data))  # through the asyncio client (the gateway's)
    inline.loop.run(on_loop.close())
    for name in ("small", "small-on-the-loop"):
        loc = run_inline(inline.open(name)._location(0))
        assert len(loc.servers) == 3  # goal 3
        for replica in loc.servers:
            reply = inline.connections.request(replica.url, "GET", f"/chunks/{loc.chunk_id}?version={loc.version}",
                                               {TOKEN_HEADER: loc.token, "Range": f"bytes=0-{len(data) - 1}"})
            assert reply.status == 206 and reply.body == data, (name, replica.url)
    assert forwarded() == 0

    down = fresh_cluster.chunkservers[0]
    down.kill()
    again = inline.create("small-again")
    run_inline(again.write(0, data[:5000]))
    run_inline(again.close())
    reader = inline.open("small-again")
    assert reader.size == 5000 and run_inline(reader.read(0, 5000)) == data[:5000]
    servers = {r.url.rstrip("/") for r in run_inline(reader._location(0)).servers}
    assert down.url.rstrip("/") not in servers and len(servers) == 2
    assert forwarded() == 0
