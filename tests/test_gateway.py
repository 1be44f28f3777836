"""The HTTP gateway end to end: a real master, three chunkservers (1 MiB chunks) and gateway processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfs.auth import auth_headers
from tests.harness import TEST_ADMIN_KEY, Cluster, Service, free_port

MiB = 1024 * 1024
CHUNK = MiB  # the cluster fixture's chunk size
NO_FILE = "the form holds no file (send parts with a filename, e.g. curl -F f=@x)"
AUTH = auth_headers(TEST_ADMIN_KEY)  # every caller of the gateway sends an access key
CURL_AUTH = ["-H", f"Authorization: Bearer {TEST_ADMIN_KEY}"]


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def stream_of(size: int, seed: int, digest: Any, piece: int = 256 * 1024) -> AsyncIterator[bytes]:
    """`size` pseudo-random bytes in pieces, hashed into `digest` as they are made (never held whole)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(piece, left)
        block = rng.randbytes(n)
        digest.update(block)
        yield block
        left -= n


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), headers=AUTH) as session:
        yield session


@pytest.fixture
def gw(cluster: Cluster) -> str:
    assert cluster.gateway is not None
    return cluster.gateway.url


@pytest.fixture
async def folder(gw: str, http: aiohttp.ClientSession) -> str:
    """A fresh folder per test: "/t-<hex>"."""
    name = f"/t-{uuid.uuid4().hex[:10]}"
    async with http.post(f"{gw}/fs{name}", params={"op": "mkdir"}) as resp:
        assert resp.status == 201, await resp.text()
    return name


async def put(http: aiohttp.ClientSession, url: str, data: Any, **kw: Any) -> tuple[int, Any]:
    async with http.put(url, data=data, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, bytes, Any]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.read(), resp.headers


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        body = await resp.read()
        if resp.status != 304:
            assert resp.content_type == "application/json", (resp.status, body[:200])
        return resp.status, json.loads(body) if body else None


async def names_in(http: aiohttp.ClientSession, url: str) -> list[str]:
    status, body = await call(http, "GET", url, params={"limit": "10000"})
    assert status == 200, body
    return [e["name"] for e in body["entries"]]


# ---- upload / download ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, MiB, 3 * MiB + MiB // 2], ids=["0B", "1B", "1MiB", "3.5MiB"])
async def test_roundtrip(gw: str, http: aiohttp.ClientSession, folder: str, size: int) -> None:
    data = payload(size, seed=size)
    url = f"{gw}/fs{folder}/f.bin"
    async with http.put(url, data=data) as resp:
        status, body = resp.status, await resp.json()
        assert status == 201, body
        assert resp.headers["Location"] == f"/fs{folder}/f.bin"
        assert resp.headers["ETag"] == body["etag"]
    assert body["size"] == size and body["type"] == "file" and body["path"] == f"{folder}/f.bin"
    status, got, headers = await get(http, url)
    assert status == 200
    assert got == data
    assert int(headers["Content-Length"]) == size
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] == body["etag"] == f'"{body["inode"]}-{body["mtime_ns"]}-{size}"'
    assert headers["Last-Modified"].endswith("GMT")
    # replacing answers 200 and the new content
    status, body2 = await put(http, url, b"new")
    assert status == 200 and body2["size"] == 3
    assert (await get(http, url))[1] == b"new"
    assert await names_in(http, f"{gw}/fs{folder}") == ["f.bin"]  # no temporary files left


async def test_big_file_streamed(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    size = 50 * MiB + 12345
    sent = hashlib.sha256()
    url = f"{gw}/fs{folder}/big.bin"
    status, body = await put(http, url, stream_of(size, 7, sent))  # chunked transfer encoding
    assert status == 201, body
    assert body["size"] == size
    received = hashlib.sha256()
    total = 0
    async with http.get(url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == size
        async for piece in resp.content.iter_chunked(MiB):
            received.update(piece)
            total += len(piece)
    assert total == size
    assert received.hexdigest() == sent.hexdigest()


async def test_content_type_guessed(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    await put(http, f"{gw}/fs{folder}/page.html", b"<p>hi</p>")
    await put(http, f"{gw}/fs{folder}/a.tar.gz", b"\x1f\x8b")
    assert (await get(http, f"{gw}/fs{folder}/page.html"))[2]["Content-Type"].startswith("text/html")
    assert (await get(http, f"{gw}/fs{folder}/a.tar.gz"))[2]["Content-Type"] == "application/octet-stream"


# ---- ranges, HEAD, validators --------------------------------------------------------------------

@pytest.fixture
async def ranged(gw: str, http: aiohttp.ClientSession, folder: str) -> tuple[str, bytes]:
    data = payload(3 * MiB + MiB // 2, seed=35)
    url = f"{gw}/fs{folder}/r.bin"
    assert (await put(http, url, data))[0] == 201
    return url, data


@pytest.mark.parametrize(("spec", "start", "end"), [
    ("bytes=0-0", 0, 1),
    ("bytes=100-199", 100, 200),
    ("bytes=1048566-1048585", CHUNK - 10, CHUNK + 10),  # across the first chunk boundary
    ("bytes=1000000-3200000", 1000000, 3200001),  # across three boundaries
    (f"bytes={CHUNK}-", CHUNK, None),
    ("bytes=-100", -100, None),  # suffix
    ("bytes=-99999999", 0, None),  # suffix longer than the file: all of it
    ("bytes=3000000-99999999", 3000000, None),  # end past the file: clamped
])
async def test_range(ranged: tuple[str, bytes], http: aiohttp.ClientSession, spec: str, start: int,
                     end: int | None) -> None:
    url, data = ranged
    expected = data[start:end] if end is not None else data[start:]
    status, got, headers = await get(http, url, headers={"Range": spec})
    assert status == 206
    assert got == expected
    first = start % len(data) if start < 0 else start
    assert headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert int(headers["Content-Length"]) == len(expected)


@pytest.mark.parametrize("spec", ["bytes=3670016-", "bytes=9999999-10000000", "bytes=-0"])
async def test_range_not_satisfiable(ranged: tuple[str, bytes], http: aiohttp.ClientSession, spec: str) -> None:
    url, data = ranged
    async with http.get(url, headers={"Range": spec}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(data)}"
        assert (await resp.json())["error"] == "ERANGE"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-5", "bytes=abc", "bytes=9-3"])
async def test_range_ignored(ranged: tuple[str, bytes], http: aiohttp.ClientSession, spec: str) -> None:
    url, data = ranged
    status, got, _ = await get(http, url, headers={"Range": spec})
    assert status == 200 and got == data


async def test_head(ranged: tuple[str, bytes], http: aiohttp.ClientSession) -> None:
    url, data = ranged
    async with http.head(url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(data)
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"].startswith('"')
        assert await resp.read() == b""
    async with http.head(url, headers={"Range": "bytes=-10"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    async with http.head(url + ".missing") as resp:
        assert resp.status == 404


async def test_conditional(ranged: tuple[str, bytes], http: aiohttp.ClientSession) -> None:
    url, data = ranged
    _, _, headers = await get(http, url)
    tag, modified = headers["ETag"], headers["Last-Modified"]
    for value in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
        async with http.get(url, headers={"If-None-Match": value}) as resp:
            assert resp.status == 304, value
            assert resp.headers["ETag"] == tag
            assert await resp.read() == b""
    assert (await get(http, url, headers={"If-None-Match": '"other"'}))[0] == 200
    assert (await get(http, url, headers={"If-Modified-Since": modified}))[0] == 304
    assert (await get(http, url, headers={"If-Modified-Since": "Thu, 01 Jan 2004 00:00:00 GMT"}))[0] == 200
    # If-None-Match wins over If-Modified-Since
    assert (await get(http, url, headers={"If-None-Match": '"x"', "If-Modified-Since": modified}))[0] == 200
    # If-Range: the range only while the validator matches
    assert (await get(http, url, headers={"Range": "bytes=0-9", "If-Range": tag}))[0] == 206
    status, got, _ = await get(http, url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert status == 200 and got == data
    # a new upload changes the ETag
    await put(http, url, b"changed")
    _, _, headers2 = await get(http, url)
    assert headers2["ETag"] != tag
    assert (await get(http, url, headers={"If-None-Match": tag}))[0] == 200


# ---- folders -------------------------------------------------------------------------------------

async def test_listing_paging(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    names = [f"f{i:02d}" for i in range(23)]
    await asyncio.gather(*(put(http, f"{gw}/fs{folder}/{n}", n.encode()) for n in names))
    await call(http, "POST", f"{gw}/fs{folder}/sub", params={"op": "mkdir"})
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"limit": "10", **({"after": after} if after else {})}
        status, body = await call(http, "GET", f"{gw}/fs{folder}/", params=params)
        assert status == 200
        assert body["path"] == folder
        assert len(body["entries"]) <= 10
        seen += [e["name"] for e in body["entries"]]
        pages += 1
        after = body["next"]
        if after is None:
            break
    assert pages == 3
    assert seen == [*names, "sub"]
    _, body = await call(http, "GET", f"{gw}/fs{folder}")
    entries = {e["name"]: e for e in body["entries"]}
    assert set(entries["f03"]) == {"name", "type", "size", "mode", "mtime_ns", "inode"}
    assert entries["f03"]["type"] == "file" and entries["f03"]["size"] == 3
    assert entries["sub"]["type"] == "dir"
    assert body["next"] is None
    for bad in ({"limit": "0"}, {"limit": "10001"}, {"limit": "x"}, {"after": "a/b"}):
        status, body = await call(http, "GET", f"{gw}/fs{folder}", params=bad)
        assert status == 400 and body["error"] == "EINVAL", bad
    status, body = await call(http, "GET", f"{gw}/fs/")  # the root lists too
    assert status == 200 and folder[1:] in [e["name"] for e in body["entries"]]


async def test_multipart_upload(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    big = payload(2 * MiB + 3, seed=9)
    form = aiohttp.FormData()
    form.add_field("note", "a plain field is skipped")
    form.add_field("a", b"alpha", filename="a.txt", content_type="text/plain")
    form.add_field("b", big, filename="b.bin", content_type="application/octet-stream")
    form.add_field("c", b"", filename="empty")
    async with http.post(f"{gw}/fs{folder}/", data=form) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    assert [c["path"] for c in created] == [f"{folder}/a.txt", f"{folder}/b.bin", f"{folder}/empty"]
    assert [c["size"] for c in created] == [5, len(big), 0]
    assert (await get(http, f"{gw}/fs{folder}/a.txt"))[1] == b"alpha"
    assert (await get(http, f"{gw}/fs{folder}/b.bin"))[1] == big
    assert sorted(await names_in(http, f"{gw}/fs{folder}")) == ["a.txt", "b.bin", "empty"]

    async def post_form(url: str, filename: str | None) -> tuple[int, Any]:
        form = aiohttp.FormData(default_to_multipart=True)
        if filename is None:
            form.add_field("f", "x")
        else:
            form.add_field("f", b"x", filename=filename)
        return await call(http, "POST", url, data=form)

    assert (await post_form(f"{gw}/fs{folder}/", ".."))[0] == 400
    assert (await post_form(f"{gw}/fs{folder}/", None)) == (400, {"error": "EINVAL", "message": NO_FILE})
    assert (await post_form(f"{gw}/fs{folder}/a.txt", "x"))[1]["error"] == "ENOTDIR"
    assert (await post_form(f"{gw}/fs{folder}/missing/", "x"))[0] == 404


# ---- namespace operations ------------------------------------------------------------------------

async def test_mkdir_rename_delete(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    base = f"{gw}/fs{folder}"
    status, body = await call(http, "POST", f"{base}/d", params={"op": "mkdir"})
    assert status == 201 and body["type"] == "dir" and body["path"] == f"{folder}/d"
    assert (await call(http, "POST", f"{base}/d", params={"op": "mkdir"}))[1]["error"] == "EEXIST"
    assert (await call(http, "POST", f"{base}/x/y", params={"op": "mkdir"}))[0] == 404
    status, body = await call(http, "POST", f"{base}/p/q/r", params={"op": "mkdir", "parents": "true"})
    assert status == 201 and body["type"] == "dir"
    assert (await call(http, "POST", f"{base}/p/q", params={"op": "mkdir", "parents": "true"}))[0] == 201
    await put(http, f"{base}/d/file", b"data")
    # rename
    status, body = await call(http, "POST", f"{base}/d/file", params={"op": "rename", "to": f"{folder}/moved"})
    assert status == 200 and body["path"] == f"{folder}/moved" and body["from"] == f"{folder}/d/file"
    assert (await get(http, f"{base}/moved"))[1] == b"data"
    assert (await get(http, f"{base}/d/file"))[0] == 404
    await put(http, f"{base}/other", b"o")
    status, body = await call(http, "POST", f"{base}/other",
                              params={"op": "rename", "to": f"{folder}/moved", "noreplace": "1"})
    assert (status, body["error"]) == (409, "EEXIST")
    assert (await call(http, "POST", f"{base}/other", params={"op": "rename", "to": f"{folder}/nodir/x"}))[0] == 404
    assert (await call(http, "POST", f"{base}/nothing", params={"op": "rename", "to": f"{folder}/y"}))[0] == 404
    assert (await call(http, "POST", f"{base}/other", params={"op": "rename", "to": "/../x"}))[0] == 400
    assert (await call(http, "POST", f"{base}/other", params={"op": "rename"}))[0] == 400
    status, _ = await call(http, "POST", f"{base}/other", params={"op": "rename", "to": f"{folder}/moved"})
    assert status == 200
    assert (await get(http, f"{base}/moved"))[1] == b"o"
    # delete
    assert (await call(http, "DELETE", f"{base}/moved")) == (200, {"deleted": f"{folder}/moved"})
    assert (await call(http, "DELETE", f"{base}/moved"))[0] == 404
    await put(http, f"{base}/p/q/r/leaf", b"leaf")
    status, body = await call(http, "DELETE", f"{base}/p")
    assert (status, body["error"]) == (409, "ENOTEMPTY")
    assert (await call(http, "DELETE", f"{base}/p", params={"recursive": "true"}))[0] == 200
    assert (await get(http, f"{base}/p"))[0] == 404
    assert (await call(http, "DELETE", f"{base}/d"))[0] == 200  # an empty folder
    assert await names_in(http, base) == []
    assert (await call(http, "DELETE", f"{gw}/fs/"))[0] == 400  # never the root
    assert (await call(http, "POST", f"{base}", params={"op": "chmod"}))[0] == 400
    assert (await call(http, "POST", f"{base}"))[0] == 400  # neither op nor form


async def test_put_errors(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    base = f"{gw}/fs{folder}"
    await call(http, "POST", f"{base}/dir", params={"op": "mkdir"})
    await put(http, f"{base}/file", b"x")
    cases = [
        (f"{base}/dir", {}, 409, "EISDIR"),
        (f"{gw}/fs/", {}, 409, "EISDIR"),
        (f"{base}/missing/f", {}, 404, "ENOENT"),
        (f"{base}/file/f", {}, 409, "ENOTDIR"),
        (f"{base}/g", {"goal": "0"}, 400, "EINVAL"),
        (f"{base}/g", {"goal": "17"}, 400, "EINVAL"),
        (f"{base}/g", {"goal": "two"}, 400, "EINVAL"),
        (f"{base}/{'n' * 256}", {}, 400, "ENAMETOOLONG"),
    ]
    for url, params, status, error in cases:
        got = await call(http, "PUT", url, params=params, data=b"body")
        assert got[0] == status and got[1]["error"] == error, (url, params, got)
    status, body = await put(http, f"{base}/g", b"two", params={"goal": "2"})
    assert status == 201 and body["goal"] == 2
    assert sorted(await names_in(http, base)) == ["dir", "file", "g"]
    assert (await call(http, "GET", f"{gw}/fs{folder}/nothing"))[1]["error"] == "ENOENT"
    assert (await call(http, "PATCH", f"{base}/file"))[0] == 405


def raw_request(url: str, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send `target` byte for byte (no client-side normalisation); (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                     f"Authorization: {AUTH['Authorization']}\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("target", [
    "/fs/../etc/passwd", "/fs/../../../../etc/passwd", "/fs/%2e%2e/etc/passwd", "/fs/%2E%2E/%2e%2e/etc/passwd",
    "/fs/a/..%2f..%2fetc/passwd", "/fs/./x", "/fs/x/.", "/fs/%00", "/fs/a%00b", "/fs/%ff%fe", "/fs/..",
    "/fs/..%2F", "/fs%2f..%2fetc/passwd", "/../fs/x", "/etc/passwd",
])
async def test_bad_paths_never_escape(gw: str, target: str) -> None:
    for method in ("GET", "PUT", "DELETE", "HEAD"):
        status, body = await asyncio.to_thread(raw_request, gw, target, method)
        assert status in (400, 404), (method, target, status)
        if method != "HEAD":
            assert json.loads(body)["error"] in ("EINVAL", "ENOENT"), (method, target, body)


async def test_names_with_odd_characters(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    for name, quoted in [("spa ce", "spa%20ce"), ("ünï", "%C3%BCn%C3%AF"), ("q?x", "q%3Fx"), ("h#1", "h%231"),
                         ("%41", "%2541")]:
        assert (await put(http, f"{gw}/fs{folder}/{quoted}", name.encode()))[0] == 201
        assert await asyncio.to_thread(raw_request, gw, f"/fs{folder}/{quoted}") == (200, name.encode())
    assert sorted(await names_in(http, f"{gw}/fs{folder}")) == sorted(["spa ce", "ünï", "q?x", "h#1", "%41"])


async def test_cut_off_upload_leaves_nothing(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    host, port = gw.removeprefix("http://").split(":")

    def send_half() -> None:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"PUT /fs{folder}/cut HTTP/1.1\r\nHost: {host}\r\nContent-Length: {3 * MiB}\r\n\r\n".encode())
            sock.sendall(payload(MiB + MiB // 2, seed=1))

    await asyncio.to_thread(send_half)
    for _ in range(20):  # the gateway may not have started the upload yet: wait for its temporary file
        if await names_in(http, f"{gw}/fs{folder}"):
            break
        await asyncio.sleep(0.1)
    for _ in range(100):
        if await names_in(http, f"{gw}/fs{folder}") == []:
            break
        await asyncio.sleep(0.1)
    assert await names_in(http, f"{gw}/fs{folder}") == []  # neither "cut" nor a temporary file


# ---- limits --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_gateway(cluster: Cluster) -> Iterator[str]:
    """A second gateway with --max-upload 1MiB."""
    port = free_port()
    service = Service("gateway-small", ["gateway", "--master", cluster.master_url, "--listen", f"127.0.0.1:{port}",
                                        "--max-upload", "1MiB"], port, cluster.root / "gateway-small.log")
    service.start()
    try:
        service.wait_healthy()
        yield service.url
    finally:
        service.stop()


async def test_max_upload(small_gateway: str, gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    base = f"{small_gateway}/fs{folder}"
    over = payload(MiB + 1, seed=3)
    status, body = await call(http, "PUT", f"{base}/over", data=over)  # Content-Length up front
    assert (status, body["error"]) == (413, "EFBIG")

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(over), 100_000):
            yield over[i:i + 100_000]

    status, body = await call(http, "PUT", f"{base}/over", data=chunked())  # counted while streaming
    assert (status, body["error"]) == (413, "EFBIG")
    form = aiohttp.FormData()
    form.add_field("f", over, filename="over")
    assert (await call(http, "POST", f"{base}/", data=form))[0] == 413
    exact = payload(MiB, seed=4)
    assert (await put(http, f"{base}/exact", exact))[0] == 201
    assert (await get(http, f"{base}/exact"))[1] == exact
    assert await names_in(http, f"{gw}/fs{folder}") == ["exact"]  # nothing half-written left behind


async def test_max_upload_curl(small_gateway: str, folder: str, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    big = tmp_path / "big.bin"
    big.write_bytes(payload(3 * MiB, seed=5))
    out = subprocess.run([curl, "-s", *CURL_AUTH, "-T", str(big), "-w", "\n%{http_code}",
                          f"{small_gateway}/fs{folder}/big"], capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "413" and json.loads(body)["error"] == "EFBIG"


# ---- concurrency ---------------------------------------------------------------------------------

async def test_concurrent_puts_same_path(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    bodies = [payload(MiB + MiB // 2 + i, seed=100 + i) for i in range(6)]
    url = f"{gw}/fs{folder}/contended"
    results = await asyncio.gather(*(put(http, url, b) for b in bodies))
    assert all(status in (200, 201) for status, _ in results), results
    _, got, _ = await get(http, url)
    assert got in bodies
    assert await names_in(http, f"{gw}/fs{folder}") == ["contended"]


async def test_concurrent_puts_different_paths(gw: str, http: aiohttp.ClientSession, folder: str) -> None:
    bodies = {f"f{i}": payload(MiB // 2 + 7919 * i, seed=200 + i) for i in range(8)}
    results = await asyncio.gather(*(put(http, f"{gw}/fs{folder}/{n}", b) for n, b in bodies.items()))
    assert all(status == 201 for status, _ in results)
    got = await asyncio.gather(*(get(http, f"{gw}/fs{folder}/{n}") for n in bodies))
    assert [g[1] for g in got] == list(bodies.values())


async def test_chunkservers_lost_mid_download(fresh_cluster: Cluster) -> None:
    """A read that fails after the headers went out cuts the connection: a short body, never wrong bytes."""
    await asyncio.to_thread(fresh_cluster.start)
    assert fresh_cluster.gateway is not None
    url = f"{fresh_cluster.gateway.url}/fs/big.bin"
    size = 48 * MiB
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), headers=AUTH) as http:
        assert (await put(http, url, stream_of(size, 3, hashlib.sha256())))[0] == 201
        expected = payload(size, seed=3)  # stream_of(size, 3, ...) in one piece: the same bytes
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as resp:
                assert resp.status == 200
                received += await resp.content.readexactly(MiB)
                for service in fresh_cluster.chunkservers:
                    service.kill()
                async for piece in resp.content.iter_chunked(MiB):
                    received += piece
        assert len(received) < size
        assert received == expected[:len(received)]
        # a read that fails before the first byte is an ordinary JSON error
        status, body = await call(http, "GET", url)
        assert status == 502 and body["error"] == "EIO"


# ---- curl, OpenAPI -------------------------------------------------------------------------------

def test_with_curl(gw: str, cluster: Cluster, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")

    def run(*args: str) -> str:
        return subprocess.run([curl, "-sS", "--fail-with-body", *CURL_AUTH, *args], check=True, capture_output=True,
                              timeout=60).stdout.decode()

    folder = f"/curl-{uuid.uuid4().hex[:8]}"
    run("-X", "POST", f"{gw}/fs{folder}?op=mkdir")
    data = payload(2 * MiB + 5, seed=11)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert json.loads(run("-T", str(src), f"{gw}/fs{folder}/up.bin"))["size"] == len(data)
    assert json.loads(run("-T", str(src), f"{gw}/fs{folder}/"))["path"] == f"{folder}/src.bin"  # curl adds the name
    created = json.loads(run("-F", f"file=@{src}", "-F", f"again=@{src};filename=two.bin", f"{gw}/fs{folder}/"))
    assert [c["path"] for c in created] == [f"{folder}/src.bin", f"{folder}/two.bin"]
    out = tmp_path / "out.bin"
    run("-o", str(out), f"{gw}/fs{folder}/two.bin")
    assert out.read_bytes() == data
    run("-r", "1048570-1048599", "-o", str(out), f"{gw}/fs{folder}/up.bin")
    assert out.read_bytes() == data[1048570:1048600]
    run("-r", "-7", "-o", str(out), f"{gw}/fs{folder}/up.bin")
    assert out.read_bytes() == data[-7:]
    piped = subprocess.run([curl, "-sS", "-u", f"me:{TEST_ADMIN_KEY}", "-T", "-", f"{gw}/fs{folder}/piped"],
                           input=b"via stdin",
                           capture_output=True, check=True, timeout=60)  # chunked transfer encoding
    assert json.loads(piped.stdout)["size"] == 9
    for target in (f"/fs{folder}/../../etc/passwd", "/fs/%2e%2e/etc/passwd"):
        res = subprocess.run([curl, "-s", *CURL_AUTH, "--path-as-is", "-w", "\n%{http_code}", gw + target],
                             capture_output=True, text=True, timeout=30)
        body, _, code = res.stdout.rpartition("\n")
        assert code in ("400", "404") and "error" in json.loads(body), res.stdout
    run("-X", "DELETE", f"{gw}/fs{folder}?recursive=true")


async def test_openapi(gw: str, http: aiohttp.ClientSession) -> None:
    status, doc = await call(http, "GET", f"{gw}/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.0")
    paths = doc["paths"]
    assert {"/fs/{path}", "/fs", "/health", "/openapi.json"} <= set(paths)
    assert set(paths["/fs/{path}"]) == {"get", "head", "put", "post", "delete"}
    for method, op in paths["/fs/{path}"].items():
        assert any(p["name"] == "path" and p["in"] == "path" for p in op["parameters"]), method
        assert "404" in op["responses"], method
    assert {"206", "304", "416"} <= set(paths["/fs/{path}"]["get"]["responses"])
    assert "413" in paths["/fs/{path}"]["put"]["responses"]
    assert "multipart/form-data" in paths["/fs/{path}"]["post"]["requestBody"]["content"]
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "message"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref


async def test_unknown_routes_are_json(gw: str, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", f"{gw}/nothing/here")
    assert status == 404 and body["error"] == "ENOENT"
    status, body = await call(http, "GET", f"{gw}/health")
    assert status == 200 and body["service"] == "gateway"
