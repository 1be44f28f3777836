"""Input limits and validation on live services: every bad request is a 4xx with a JSON message, never a 5xx,
and the logs carry neither a traceback nor the refused bytes. Each case here was a 500 or a silent accept once."""

from __future__ import annotations

import errno
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dfs.apispec import checked
from dfs.auth import auth_headers
from dfs.errors import DfsError, describe
from dfs.limits import LIST_MAX, MAX_HEADER_FIELD, MAX_HEADERS, MAX_JSON_DEPTH, MAX_REQUEST_LINE
from dfs.master import api_schema
from dfs.master.app import create_app
from dfs.master.config import MasterConfig
from dfs.tokens import ClusterKeys
from dfs.web import Params, error_middleware, read_json
from tests.harness import TEST_ADMIN_KEY, Cluster, http_json


def send(url: str, raw: bytes, method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=raw, method=method,
                                     headers={"Content-Type": "application/json", **auth_headers(TEST_ADMIN_KEY),
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def raw_http(base: str, head: str) -> tuple[int, bytes]:
    """Send `head` (request line and headers, no body) as is; the status and the body of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode("latin-1"))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    reply = b"".join(chunks)
    return int(reply.split(b" ", 2)[1]), reply.partition(b"\r\n\r\n")[2]


def assert_refused(result: tuple[int, Any], status: int, *words: str) -> None:
    code, body = result
    assert code == status, (code, body)
    assert isinstance(body, dict) and body["error"] and "Traceback" not in body["message"], body
    for word in words:
        assert word in body["message"], body


# -- JSON bodies --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                                 b'{"parent": 1, "name": "x", "deep": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" *
                                 (MAX_JSON_DEPTH + 1) + b"}"],
                         ids=["arrays", "objects", "just-too-deep"])
def test_deep_json_is_a_400(cluster: Cluster, raw: bytes) -> None:
    assert_refused(send(cluster.master_url + "/api/lookup", raw), 400, "nested deeper")
    token = cluster.token_header("replicate", 1, 1)  # a good token: the body itself is what is refused
    assert_refused(send(cluster.chunkservers[0].url + "/chunks/1/replicate", raw, headers=token), 400)


@pytest.mark.parametrize(("op", "body", "words"), [
    ("lookup", {"parent": "1", "name": "x"}, "'parent' must be an integer"),
    ("lookup", {"parent": True, "name": "x"}, "'parent' must be an integer"),
    ("lookup", {"parent": 1.5, "name": "x"}, "'parent' must be an integer"),
    ("lookup", {"parent": 1, "name": ["x"]}, "'name' must be a string"),
    ("lookup", {"parent": 1}, "missing field 'name'"),
    ("getattr", {"inode": 2**63}, "'inode' must be at most"),
    ("getattr", {"inode": 0}, "'inode' must be at least 1"),
    ("readdir", {"inode": 1, "limit": LIST_MAX + 1}, f"'limit' must be at most {LIST_MAX}"),
    ("setattr", {"inode": 1, "mtime_ns": 2**63}, "'mtime_ns' must be at most"),
    ("unlink", {"parent": 1, "name": "x", "held": [2**64]}, "'held[0]' must be at most"),
    ("unlink", {"parent": 1, "name": "x", "held": "1"}, "'held' must be a list"),
    ("mkdir", {"parent": 1, "name": "x", "exclusive": "yes", "mode": "0755"}, "'mode' must be an integer"),
    ("create", {"parent": 1, "name": "x", "exclusive": "true"}, "'exclusive' must be true or false"),
    ("lease", {"inode": 1, "index": 0, "client": "a\0b"}, "'client' may not contain NUL"),
    ("report", {"chunk_id": 1, "server_id": 1, "version": 1, "problem": "bogus"}, "'problem' must be one of"),
    ("cs/heartbeat", {"server_id": 1, "capacity": 1, "used": 0, "free": 1, "bad": [{"version": 1}]},
     "missing field 'bad[0].chunk_id'"),
    ("cs/register", {"uuid": "u", "url": "http://127.0.0.1:9", "capacity": 1, "used": 0, "free": 1,
                     "chunks": [7]}, "'chunks[0]' must be an object"),
    ("cs/goodbye", {"server_id": "1"}, "'server_id' must be an integer"),
    ("admin/setrep", {"path": "/", "goal": 0}, "'goal' must be at least 1"),
    ("admin/balance/plan", {"threshold": 0}, "'threshold' must be more than 0"),
    ("admin/decommission", {"node": 1}, "'node' must be a string"),
])
def test_wrong_types_and_bounds_are_400(cluster: Cluster, op: str, body: dict[str, Any], words: str) -> None:
    if op.startswith("cs/"):  # signed as a chunkserver would: the body itself is what is refused
        raw = json.dumps(body).encode()
        signed = ClusterKeys.from_join_token(cluster.join_token()).sign_request("POST", f"/api/{op}", raw)
        assert_refused(send(f"{cluster.master_url}/api/{op}", raw, headers=signed), 400, words)
    else:
        assert_refused(http_json("POST", f"{cluster.master_url}/api/{op}", body), 400, words)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe", b"{", b"NaN"])
def test_a_body_that_is_no_json_object_is_a_400(cluster: Cluster, raw: bytes) -> None:
    assert_refused(send(cluster.master_url + "/api/getattr", raw), 400)


# -- names, paths, surrogates -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "body"), [
    ("resolve", '{"path": "/\\ud800"}'),
    ("lookup", '{"parent": 1, "name": "\\ud800"}'),
    ("getxattr", '{"inode": 1, "name": "user.\\ud800"}'),
    ("setxattr", '{"inode": 1, "name": "user.\\udfff", "value_b64": ""}'),
    ("symlink", '{"parent": 1, "name": "s", "target": "\\ud800"}'),
    ("readdir", '{"inode": 1, "after": "\\ud800"}'),
    ("lease", '{"inode": 1, "index": 0, "client": "\\ud800"}'),
    ("admin/info", '{"path": "/\\ud800"}'),
    ("admin/fsck", '{"path": "/\\ud800"}'),
    ("mkdir", '{"parent": 1, "name": "\\udcc3\\udca9"}'),  # escapes for the bytes of "é": a second spelling
    ("admin/setrep", '{"path": "/a/../..", "goal": 1}'),
])
def test_lone_surrogates_and_tricks_are_400(cluster: Cluster, op: str, body: str) -> None:
    assert_refused(send(f"{cluster.master_url}/api/{op}", body.encode()), 400)


def test_undecodable_bytes_still_travel_as_escapes(cluster: Cluster) -> None:
    """What FUSE hands over for a name that is not UTF-8 (b"\\xff") keeps working."""
    status, body = send(cluster.master_url + "/api/mkdir", b'{"parent": 1, "name": "raw-\\udcff"}')
    assert status == 200, body
    status, body = http_json("POST", cluster.master_url + "/api/lookup", {"parent": 1, "name": "raw-\udcff"})
    assert status == 200 and body["attr"]["mode"] & 0o040000, body


# -- HTTP transport ----------------------------------------------------------------------------------------------

SECRET = "s3cr3t-key-material"


@pytest.mark.parametrize("head", [
    f"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}{'a' * MAX_HEADER_FIELD}\r\n\r\n",
    "GET /health HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-H{i}: 1\r\n" for i in range(MAX_HEADERS + 1)) + "\r\n",
    f"GET /fs/{'a' * MAX_REQUEST_LINE} HTTP/1.1\r\nHost: x\r\n\r\n",
    f"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\x01\r\n\r\n",
], ids=["long-header", "many-headers", "long-request-line", "control-char"])
def test_oversized_or_malformed_requests_are_400_and_logged_quietly(cluster: Cluster, head: str) -> None:
    for service in (cluster.master, cluster.gateway, cluster.chunkservers[0]):
        assert service is not None
        status, _ = raw_http(service.url, head + "")
        assert status in (400, 414, 431), (service.name, status)
        assert http_json("GET", service.url + "/health")[0] == 200
        log = service.log()
        assert SECRET not in log and "Traceback" not in log, log[-3000:]


def test_a_request_line_of_a_long_encoded_path_fits(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    path = "/".join(["%C3%A9" * 100] * 7)  # 700 two-byte characters, 4200 bytes encoded
    auth = f"Authorization: Bearer {TEST_ADMIN_KEY}\r\n"
    status, _ = raw_http(cluster.gateway.url, f"GET /fs/{path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
    assert status == 404


def test_listing_pages_are_bounded(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    for limit in (0, LIST_MAX + 1, 2**70):
        assert_refused(http_json("GET", f"{cluster.gateway.url}/fs?limit={limit}"), 400, "'limit'")


# -- chunkserver ---------------------------------------------------------------------------------------------------
# Statuses are only required to be 4xx with a JSON body: chunk tokens may refuse some of these first.

@pytest.mark.parametrize(("method", "target", "body", "headers"), [
    ("GET", "/chunks/abc?version=1", b"", {}),
    ("GET", f"/chunks/{2**64}?version=1", b"", {}),
    ("GET", "/chunks/1?version=0", b"", {}),
    ("GET", "/chunks/1?version=-1", b"", {}),
    ("GET", "/chunks/1?version=1", b"", {"Range": "bytes=99999999999999999999999-"}),
    ("GET", "/chunks/1?version=1", b"", {"Range": "bytes=1-2,3-4"}),
    ("GET", "/chunks/1?version=1", b"", {"Range": "pages=1-2"}),
    ("PUT", "/chunks/1?version=1&offset=-1", b"x", {}),
    ("PUT", f"/chunks/1?version=1&offset={2**63}", b"x", {}),
    ("PUT", "/chunks/1?version=1&offset=0", b"x" * (1024 * 1024 + 1), {}),
    ("POST", "/chunks/1/truncate?version=1&length=-1", b"", {}),
    ("POST", "/chunks/1/recover?from=0&to=1", b"", {}),
    ("POST", "/chunks/1/replicate", b'{"source": "http://127.0.0.1:9", "version": "1"}', {}),
    ("POST", "/chunks/1/replicate", b'{"source": "ftp://127.0.0.1:9", "version": 1}', {}),
    ("DELETE", "/chunks/1?version=x", b"", {}),
])
def test_chunkserver_bad_inputs_are_4xx(cluster: Cluster, method: str, target: str, body: bytes,
                                        headers: dict[str, str]) -> None:
    status, reply = send(cluster.chunkservers[0].url + target, body, method, headers)
    assert 400 <= status < 500, (status, reply)
    assert isinstance(reply, dict) and reply["error"], reply


# -- the request table and the document -------------------------------------------------------------------------------

def test_the_document_describes_every_route(cluster: Cluster, tmp_path: Path) -> None:
    status, doc = http_json("GET", cluster.master_url + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert {f"/api/{op}" for op in api_schema.OPS} | {f"/api/admin/{op}" for op in api_schema.ADMIN} \
        | {"/api/status", "/api/whoami", "/api/dashboard", "/api/channel", "/health", "/openapi.json"} == set(paths)
    routes = {(r.method.lower(), r.resource.canonical) for r in create_app(MasterConfig(tmp_path)).router.routes()
              if r.resource is not None and r.resource.canonical.startswith(("/api/", "/health", "/openapi"))}
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert routes - {("head", path) for _, path in routes} == documented
    mkdir = paths["/api/mkdir"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert mkdir["required"] == ["parent", "name"]
    assert mkdir["properties"]["parent"]["minimum"] == 1 and mkdir["properties"]["mode"]["maximum"] == 0o177777
    assert set(paths["/api/admin/status"]) == {"get", "post"} and set(paths["/api/admin/fsck"]) == {"post"}


def test_a_handler_cannot_read_an_undeclared_field() -> None:
    params = checked(Params({"inode": 5, "extra": 1}, typed=True), api_schema.OPS["getattr"].fields)
    assert params.int("inode") == 5
    with pytest.raises(LookupError):
        params.int("extra")


# -- errors and logs ------------------------------------------------------------------------------------------------

async def test_a_large_json_body_is_read_whole() -> None:
    """Bodies past the first buffer of the connection were cut, so a chunkserver registering ~8,000
    chunks (a body of ~1 MB) was refused as a bad signature, and big valid bodies got 400."""
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"items": len((await read_json(request)).data["items"])})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/echo", echo)
    body = json.dumps({"items": [{"chunk": i, "version": 7, "checksum": "x" * 64} for i in range(20_000)]}).encode()
    assert len(body) > 1024 * 1024

    async def pieces():  # as a slow sender's body arrives: over many reads of the server's buffer
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    async with TestClient(TestServer(app)) as client:
        response = await client.post("/echo", data=pieces(), headers={"Content-Type": "application/json"})
        assert response.status == 200, await response.text()
        assert await response.json() == {"items": 20_000}


async def test_a_bug_is_a_bare_500_logged_by_route(caplog: pytest.LogCaptureFixture) -> None:
    """The body says nothing of the bug; the log names the route (not the URL, whose query may hold a key)."""
    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("bug in a handler")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/boom/{name}", boom)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(f"/boom/x?key={SECRET}")
        assert response.status == 500
        assert await response.json() == {"error": "EIO", "message": "internal server error"}
    line = next(r for r in caplog.records if r.name == "dfs.web")
    assert line.getMessage() == "internal error on GET /boom/{name}"
    assert SECRET not in caplog.text and "bug in a handler" in caplog.text  # the traceback stays in the log


def test_described_errors_lose_query_strings() -> None:
    text = describe(ValueError(f"404, message='Not Found', url='http://127.0.0.1:1/chunks/1?version=2&token={SECRET}'"))
    assert SECRET not in text and "http://127.0.0.1:1/chunks/1?..." in text
    assert describe(DfsError(errno.EIO, "source http://h:1 failed")) == "EIO source http://h:1 failed"


@pytest.mark.parametrize("target", ["/fs/a%2Fb", "/fs/a%2fb", "/fs/a//b", "/fs//a", "/fs/a/%2e%2e/b", "/fs/a%00"])
def test_gateway_refuses_encoded_separators_and_empty_names(cluster: Cluster, target: str) -> None:
    assert cluster.gateway is not None
    for method in ("GET", "PUT", "DELETE"):
        status, body = raw_http(cluster.gateway.url, f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
                                                     f"Authorization: Bearer {TEST_ADMIN_KEY}\r\n"
                                                     "Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert status == 400 and json.loads(body)["error"] == "EINVAL", (method, target, status, body)


def test_an_empty_after_lists_from_the_start(cluster: Cluster) -> None:
    assert cluster.gateway is not None
    status, body = http_json("GET", f"{cluster.gateway.url}/fs?after=&limit=5")
    assert status == 200 and body["path"] == "/", body
