"""Chunkservers as real processes (`python -m dfs chunkserver`) behind a small fake master.

The fake master runs in a thread with its own event loop: it registers every chunkserver with
1 MiB chunks and a 0.2 s heartbeat, records what they report and hands out the delete lists
the tests set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dfs.checksum import chunk_digest, digests_of
from dfs.chunkserver.store import BLOCK_SIZE, chunk_paths
from dfs.protocol import CHAIN_HEADER
from dfs.tokens import AUTH_HEADER, TOKEN_HEADER, ClusterKeys, RequestVerifier
from tests.harness import Service, cs_json, free_port, http_json, request_token

MiB = 1024 * 1024
JOIN_TOKEN = "0123456789abcdef" * 4  # what the chunkservers of these tests join with
KEYS = ClusterKeys.from_join_token(JOIN_TOKEN)
TOKENS = KEYS.tokens


@dataclass
class FakeMaster:
    chunk_size: int = MiB
    port: int = field(default_factory=free_port)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, int]] = field(default_factory=list)
    reregister: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _verifier: RequestVerifier = field(default_factory=lambda: RequestVerifier(KEYS))

    async def _signed(self, request: web.Request) -> Any:
        """The body of a chunkserver request, checked as the real master does (401 unless signed)."""
        raw = await request.read()
        self._verifier.verify(request.headers.get(AUTH_HEADER), request.method, request.path, raw)
        return json.loads(raw)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._signed(request)
        self.registrations.append(body)
        ids = [r["uuid"] for r in self.registrations]
        return web.json_response({"server_id": ids.index(body["uuid"]) + 1, "chunk_size": self.chunk_size,
                                  "heartbeat_interval": 0.2})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(await self._signed(request))
        reply = {"delete": self.delete, "reregister": self.reregister}
        self.delete, self.reregister = [], False
        return web.json_response(reply)

    def start(self) -> FakeMaster:
        ready = threading.Event()

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/api/cs/register", self._register)
            app.router.add_post("/api/cs/heartbeat", self._heartbeat)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(main(), self._loop).result(10)
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def bad_reports(self) -> list[dict[str, Any]]:
        return [b for h in self.heartbeats for b in h["bad"]]


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Servers:
    """Starts chunkservers for one test and stops every one of them afterwards."""

    def __init__(self, root: Path, master: FakeMaster) -> None:
        self.root = root
        self.master = master
        self.started: list[Service] = []

    def start(self, capacity: str | None = None, master_url: str | None = None, registered: bool = True,
              data: Path | None = None, port: int | None = None) -> Service:
        index = len(self.started)
        data = data or self.root / f"cs{index}"
        port = port or free_port()
        args = ["chunkserver", "--master", master_url or self.master.url, "--data", str(data),
                "--listen", f"127.0.0.1:{port}"]
        if capacity:
            args += ["--capacity", capacity]
        service = Service(f"cs{index}", args, port, self.root / f"cs{index}.log", env={"DFS_JOIN_TOKEN": JOIN_TOKEN})
        self.started.append(service)
        service.start()
        service.wait_healthy()
        if registered:
            wait_for(lambda: http_json("GET", service.url + "/health")[1].get("registered"), what="registration")
        return service

    def stop(self) -> None:
        for service in self.started:
            service.stop()


@pytest.fixture
def master() -> Iterator[FakeMaster]:
    fake = FakeMaster().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def servers(tmp_path: Path, master: FakeMaster) -> Iterator[Servers]:
    group = Servers(tmp_path, master)
    try:
        yield group
    finally:
        group.stop()


async def put(url: str, chunk_id: int, data: bytes, version: int = 1, offset: int = 0,
              chain: list[str] | None = None, **params: str) -> tuple[int, Any]:
    headers = {CHAIN_HEADER: ",".join(chain)} if chain else {}
    headers[TOKEN_HEADER] = TOKENS.mint("write", chunk_id, version, 600)
    async with aiohttp.ClientSession() as session, session.put(
            f"{url}/chunks/{chunk_id}", params={"version": str(version), "offset": str(offset), **params},
            data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def get(url: str, chunk_id: int, version: int = 1, range_: str | None = None,
              method: str = "GET") -> tuple[int, Any, Any]:
    headers = {"Range": range_} if range_ else {}
    headers[TOKEN_HEADER] = TOKENS.mint("read", chunk_id, version, 600)
    async with aiohttp.ClientSession() as session, session.request(
            method, f"{url}/chunks/{chunk_id}", params={"version": str(version)}, headers=headers) as resp:
        body = await resp.read()
        if resp.content_type == "application/json" and body:
            body = json.loads(body)
        return resp.status, resp.headers, body


def info(url: str, chunk_id: int) -> dict[str, Any]:
    status, body = cs_json(TOKENS, "GET", f"{url}/chunks/{chunk_id}/info")
    assert status == 200, body
    return body


async def test_put_get_range_head_info_truncate_delete(servers: Servers) -> None:
    cs = servers.start()
    data = random.randbytes(300_000)
    status, body = await put(cs.url, 42, data, version=3)
    assert status == 200, body
    assert body == {"chunk_id": 42, "version": 3, "length": 300_000, "written": 300_000, "failed": []}
    # whole chunk: the chunk size, zeros past the data
    status, headers, got = await get(cs.url, 42, 3)
    assert status == 200 and int(headers["Content-Length"]) == MiB
    assert got == data + bytes(MiB - len(data))
    # ranges
    status, headers, got = await get(cs.url, 42, 3, "bytes=100-199")
    assert status == 206 and got == data[100:200] and headers["Content-Range"] == f"bytes 100-199/{MiB}"
    status, headers, got = await get(cs.url, 42, 3, "bytes=299990-")
    assert status == 206 and got == data[-10:] + bytes(MiB - 300_000)
    status, headers, got = await get(cs.url, 42, 3, "bytes=-5")
    assert status == 206 and got == bytes(5) and headers["Content-Range"] == f"bytes {MiB - 5}-{MiB - 1}/{MiB}"
    status, headers, got = await get(cs.url, 42, 3, f"bytes=299000-{2 * MiB}")
    assert status == 206 and got == data[299_000:] + bytes(MiB - 300_000)
    # HEAD: headers only
    status, headers, got = await get(cs.url, 42, 3, "bytes=0-9", method="HEAD")
    assert status == 206 and got == b"" and headers["Content-Length"] == "10"
    status, headers, got = await get(cs.url, 42, 2, method="HEAD")
    assert status == 409
    # overwrite in the middle, info digest follows
    status, body = await put(cs.url, 42, b"Z" * 70_000, version=4, offset=60_000)
    assert status == 200 and body["length"] == 300_000
    model = data[:60_000] + b"Z" * 70_000 + data[130_000:]
    assert info(cs.url, 42) == {"chunk_id": 42, "version": 4, "length": 300_000, "pending": False,
                                "digest": chunk_digest(digests_of(model))}
    assert (await get(cs.url, 42, 4, "bytes=0-299999"))[2] == model
    # truncate
    status, body = cs_json(TOKENS, "POST", f"{cs.url}/chunks/42/truncate?version=5&length=1000")
    assert status == 200 and body == {"chunk_id": 42, "version": 5, "length": 1000}
    assert (await get(cs.url, 42, 5, "bytes=0-1999"))[2] == model[:1000] + bytes(1000)
    status, body = cs_json(TOKENS, "GET", f"{cs.url}/chunks")
    assert body == {"chunks": [{"chunk_id": 42, "version": 5, "length": 1000, "pending": False}]}
    # delete: not when ours is newer
    assert cs_json(TOKENS, "DELETE", f"{cs.url}/chunks/42?version=4") == (200, {"deleted": False})
    assert cs_json(TOKENS, "DELETE", f"{cs.url}/chunks/42?version=5") == (200, {"deleted": True})
    assert cs_json(TOKENS, "DELETE", f"{cs.url}/chunks/42?version=5") == (200, {"deleted": False})
    assert (await get(cs.url, 42, 5))[0] == 404
    health = http_json("GET", f"{cs.url}/health")[1]
    assert health["used"] == 0 and health["service"] == "chunkserver" and health["capacity"] > 0


async def test_chain_replication(servers: Servers) -> None:
    a, b, c = servers.start(), servers.start(), servers.start()
    data = random.randbytes(MiB)
    status, body = await put(a.url, 7, data, chain=[b.url, c.url], sync="1")
    assert status == 200 and body["failed"] == [], body
    digests = {info(s.url, 7)["digest"] for s in (a, b, c)}
    assert digests == {chunk_digest(digests_of(data))}
    # an overwrite through the chain at a new version
    status, body = await put(a.url, 7, b"abc" * 1000, version=2, offset=12345, chain=[b.url, c.url])
    assert status == 200 and body["failed"] == []
    infos = [info(s.url, 7) for s in (a, b, c)]
    assert len({i["digest"] for i in infos}) == 1 and {i["version"] for i in infos} == {2}
    for s in (a, b, c):
        status, _, got = await get(s.url, 7, 2, "bytes=12345-15344")
        assert status == 206 and got == b"abc" * 1000


async def test_dead_downstream_is_skipped_and_reported(servers: Servers) -> None:
    a, c = servers.start(), servers.start()
    dead = f"http://127.0.0.1:{free_port()}"
    data = random.randbytes(500_000)
    status, body = await put(a.url, 9, data, chain=[dead, c.url])
    assert status == 200 and body["failed"] == [dead]
    assert info(c.url, 9)["digest"] == info(a.url, 9)["digest"] == chunk_digest(digests_of(data))
    # a downstream that refuses (stale version) is reported with the rest of its chain
    status, body = await put(c.url, 10, b"new", version=5)
    assert status == 200
    status, body = await put(a.url, 10, b"old", version=4, chain=[c.url])
    assert status == 200 and body["failed"] == [c.url]


async def test_small_new_chunks_through_the_chain(servers: Servers) -> None:
    """Small new chunks (finished on the event loop once the next server has the body: INLINE_WRITE)
    reach every server of the chain; a dead or refusing downstream is reported and holds nothing up."""
    a, b, c = servers.start(), servers.start(), servers.start()
    for chunk_id in range(20, 26):
        data = random.randbytes(4096 + chunk_id)
        status, body = await put(a.url, chunk_id, data, chain=[b.url, c.url])
        assert status == 200 and body["failed"] == [] and body["length"] == len(data), body
        assert {info(s.url, chunk_id)["digest"] for s in (a, b, c)} == {chunk_digest(digests_of(data))}
        for s in (a, b, c):
            assert (await get(s.url, chunk_id, 1, f"bytes=0-{len(data) - 1}"))[2] == data
    dead = f"http://127.0.0.1:{free_port()}"
    status, body = await put(a.url, 30, b"z" * 4096, chain=[dead, c.url])
    assert status == 200 and body["failed"] == [dead]
    assert info(c.url, 30)["digest"] == info(a.url, 30)["digest"]
    assert (await put(c.url, 31, b"new", version=5))[0] == 200
    status, body = await put(a.url, 31, b"old" * 1000, version=4, chain=[c.url])
    assert status == 200 and body["failed"] == [c.url]
    assert info(a.url, 31)["version"] == 4 and info(c.url, 31)["version"] == 5


async def test_downstream_dying_midway(servers: Servers) -> None:
    a, b, c = servers.start(), servers.start(), servers.start()
    first_half = asyncio.Event()

    async def body() -> Any:
        yield b"x" * (MiB // 2)
        first_half.set()
        await asyncio.sleep(0.5)
        yield b"y" * (MiB // 2)

    async def killer() -> None:
        await first_half.wait()
        await asyncio.sleep(0.1)
        b.kill()

    async with aiohttp.ClientSession() as session:
        kill = asyncio.create_task(killer())
        async with session.put(f"{a.url}/chunks/11", params={"version": "1", "offset": "0"}, data=body(),
                               headers={"Content-Length": str(MiB), CHAIN_HEADER: f"{b.url},{c.url}",
                                        TOKEN_HEADER: TOKENS.mint("write", 11, 1, 60)}) as resp:
            status, reply = resp.status, await resp.json()
        await kill
    assert status == 200 and reply["failed"] == [b.url, c.url], reply
    assert info(a.url, 11)["digest"] == chunk_digest(digests_of(b"x" * (MiB // 2) + b"y" * (MiB // 2)))
    # c got only part of the body: its copy stays pending and refuses reads
    wait_for(lambda: info(c.url, 11)["pending"], what="c pending")
    assert (await get(c.url, 11, 1))[0] == 409


async def test_error_statuses(servers: Servers) -> None:
    cs = servers.start()
    small = servers.start(capacity="100KiB")
    assert (await put(cs.url, 1, b"data", version=2))[0] == 200
    async with aiohttp.ClientSession() as session:
        async def status_of(method: str, path: str, **kw: Any) -> tuple[int, Any]:
            kw["headers"] = {**request_token(TOKENS, method, cs.url + path), **kw.get("headers", {})}
            async with session.request(method, cs.url + path, **kw) as resp:
                return resp.status, await resp.json()

        # 400 malformed
        for method, path in [("GET", "/chunks/abc?version=1"), ("GET", "/chunks/0?version=1"),
                             ("GET", "/chunks/1"), ("GET", "/chunks/1?version=0"), ("GET", "/chunks/1?version=x"),
                             ("PUT", "/chunks/1?version=2&offset=-1"), ("DELETE", "/chunks/1"),
                             ("POST", "/chunks/1/truncate?version=2"), ("GET", "/chunks/-3/info")]:
            status, body = await status_of(method, path)
            assert status == 400 and body["error"] == "EINVAL", (method, path, body)

        async def chunked() -> Any:
            yield b"abc"

        status, body = await status_of("PUT", "/chunks/1?version=2&offset=0", data=chunked())
        assert status == 400 and "Content-Length" in body["message"]
        for bad_range in ["bytes=a-b", "items=0-1", "bytes=0-1,5-6", "bytes=-"]:
            status, body = await status_of("GET", "/chunks/1?version=2", headers={"Range": bad_range})
            assert status == 400, bad_range
        status, body = await status_of("PUT", "/chunks/1?version=2&offset=0", data=b"x",
                                       headers={CHAIN_HEADER: "ftp://nowhere"})
        assert status == 400
        # 404
        assert (await status_of("GET", "/chunks/5?version=1"))[0] == 404
        assert (await status_of("GET", "/chunks/5/info"))[0] == 404
        assert (await status_of("POST", "/chunks/5/truncate?version=1&length=0"))[0] == 404
        # 409 stale
        status, body = await status_of("GET", "/chunks/1?version=1")
        assert status == 409 and body["error"] == "ESTALE"
        assert (await status_of("GET", "/chunks/1?version=3"))[0] == 409
        assert (await status_of("PUT", "/chunks/1?version=1&offset=0", data=b"x"))[0] == 409
        assert (await status_of("POST", "/chunks/1/truncate?version=1&length=0"))[0] == 409
        # 416
        status, body = await status_of("PUT", f"/chunks/1?version=2&offset={MiB - 1}", data=b"xy")
        assert status == 416 and body["error"] == "ERANGE"
        assert (await status_of("PUT", f"/chunks/1?version=2&offset={MiB + 1}", data=b""))[0] == 416
        assert (await status_of("POST", f"/chunks/1/truncate?version=2&length={MiB + 1}"))[0] == 416
        for bad_range in [f"bytes={MiB}-", "bytes=-0", "bytes=5-4"]:
            async with session.get(cs.url + "/chunks/1?version=2",
                                   headers={"Range": bad_range, TOKEN_HEADER: TOKENS.mint("read", 1, 2, 60)}) as resp:
                assert resp.status == 416, bad_range
                assert resp.headers["Content-Range"] == f"bytes */{MiB}"
        # 507 on a server with little room; nothing is left behind
        status, body = await put(small.url, 3, bytes(100 * 1024 - 5))
        assert status == 200
        status, body = await put(small.url, 4, bytes(10))
        assert status == 507 and body["error"] == "ENOSPC", body
        assert cs_json(TOKENS, "GET", small.url + "/chunks/4/info")[0] == 404
        health = http_json("GET", small.url + "/health")[1]
        assert health["capacity"] == 100 * 1024 and health["free"] == 5


async def test_short_body_leaves_chunk_pending(servers: Servers) -> None:
    cs = servers.start()
    assert (await put(cs.url, 2, b"a" * 1000))[0] == 200
    _reader, writer = await asyncio.open_connection("127.0.0.1", cs.port)
    token = TOKENS.mint("write", 2, 2, 60).encode()
    writer.write(b"PUT /chunks/2?version=2&offset=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                 b"X-DFS-Token: " + token + b"\r\n\r\n" + b"b" * 2000)
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    pending = {"chunk_id": 2, "version": 2, "length": 2000, "pending": True}
    wait_for(lambda: cs_json(TOKENS, "GET", cs.url + "/chunks")[1]["chunks"] == [pending], what="pending chunk")
    assert (await get(cs.url, 2, 2))[0] == 409
    # a later complete write at a newer version makes it readable again
    assert (await put(cs.url, 2, b"c" * 10, version=3))[0] == 200
    assert (await get(cs.url, 2, 3, "bytes=0-11"))[2] == b"c" * 10 + b"b" * 2


async def test_checksum_mismatch_other_replica_fine(servers: Servers, master: FakeMaster) -> None:
    a, b = servers.start(), servers.start()
    data = random.randbytes(MiB)
    assert (await put(a.url, 300, data, chain=[b.url]))[1]["failed"] == []
    data_path = chunk_paths(servers.root / "cs0", 300)[0]
    with open(data_path, "r+b") as f:
        f.seek(3 * BLOCK_SIZE)
        f.write(b"\0" if data[3 * BLOCK_SIZE] else b"\1")
    status, _, body = await get(a.url, 300, 1)
    assert status == 502 and body["error"] == "EBADMSG"
    assert (await get(a.url, 300, 1))[0] == 404  # quarantined
    assert (await get(b.url, 300, 1))[2] == data
    assert os.listdir(servers.root / "cs0" / "quarantine")
    wait_for(lambda: {"chunk_id": 300, "version": 1, "problem": "corrupt"} in master.bad_reports(),
             what="bad chunk in a heartbeat")


async def test_mid_stream_mismatch_aborts_connection(tmp_path: Path) -> None:
    fake = FakeMaster(chunk_size=4 * MiB).start()
    group = Servers(tmp_path, fake)
    try:
        cs = group.start()
        data = random.randbytes(4 * MiB)
        assert (await put(cs.url, 5, data))[0] == 200
        with open(chunk_paths(tmp_path / "cs0", 5)[0], "r+b") as f:  # in the third slice
            f.seek(2 * MiB + 100)
            f.write(bytes([data[2 * MiB + 100] ^ 1]))
        async with aiohttp.ClientSession() as session, session.get(
                f"{cs.url}/chunks/5", params={"version": "1"},
                headers={TOKEN_HEADER: TOKENS.mint("read", 5, 1, 60)}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert cs_json(TOKENS, "GET", f"{cs.url}/chunks/5/info")[0] == 404
    finally:
        group.stop()
        fake.stop()


async def test_gc_through_heartbeat(servers: Servers, master: FakeMaster) -> None:
    cs = servers.start()
    for chunk_id in (1, 2, 3):
        assert (await put(cs.url, chunk_id, b"x" * 100, version=2))[0] == 200
    master.delete = [{"chunk_id": 1, "version": 2}, {"chunk_id": 2, "version": 1}, {"chunk_id": 99, "version": 1}]
    wait_for(lambda: [c["chunk_id"] for c in cs_json(TOKENS, "GET", cs.url + "/chunks")[1]["chunks"]] == [2, 3],
             what="chunk 1 deleted")
    body = cs_json(TOKENS, "GET", cs.url + "/chunks")[1]
    assert sorted(c["chunk_id"] for c in body["chunks"]) == [2, 3]  # chunk 2 is newer than the delete
    beat = wait_for(lambda: master.heartbeats[-1]["used"] == 200 and master.heartbeats[-1], what="heartbeat")
    assert beat["server_id"] == 1 and beat["capacity"] >= beat["free"] > 0


async def test_register_retry_reregister_and_restart(tmp_path: Path) -> None:
    fake = FakeMaster()  # not started yet
    group = Servers(tmp_path, fake)
    try:
        cs = group.start(registered=False)
        status, body = await put(cs.url, 1, b"x")
        assert status == 503 and body["error"] == "EAGAIN"
        time.sleep(0.5)
        fake.start()
        wait_for(lambda: http_json("GET", cs.url + "/health")[1].get("registered"), what="late registration")
        assert (await put(cs.url, 1, b"hello", version=2))[0] == 200
        fake.reregister = True
        wait_for(lambda: len(fake.registrations) >= 2, what="reregistration")
        assert fake.registrations[-1]["chunks"] == [{"chunk_id": 1, "version": 2, "length": 5, "pending": False}]
        # restart: same identity, same chunks
        cs.stop()
        count = len(fake.registrations)
        cs2 = group.start(data=tmp_path / "cs0")
        wait_for(lambda: len(fake.registrations) > count, what="registration after restart")
        first, last = fake.registrations[0], fake.registrations[-1]
        assert first["uuid"] == last["uuid"] and last["url"] == cs2.url
        assert last["chunks"] == [{"chunk_id": 1, "version": 2, "length": 5, "pending": False}]
        assert (await get(cs2.url, 1, 2, "bytes=0-4"))[2] == b"hello"
        log = (tmp_path / "cs0.log").read_text()
        assert log.count("cannot register") < 10  # backoff, not a flood
    finally:
        group.stop()
        fake.stop()
