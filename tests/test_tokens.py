"""Security of the data path: the cluster secret, chunkserver join, chunk tokens on every chunkserver route.

Every chunkserver endpoint is called with a missing, forged, expired, wrong-op, wrong-chunk (and, where
the route has a version, wrong-version) token: each gets 401 or 403 with a JSON message that does not
repeat the token, and nothing changes on any server. A chunkserver without the join token never
registers, and unsigned or replayed chunkserver calls to the master are refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs.client import Client
from dfs.client.sync import SyncClient
from dfs.errors import DfsError
from dfs.tokens import (
    AUTH_HEADER,
    SECRET_FILE,
    TOKEN_HEADER,
    VERIFIED_TOKENS,
    ChunkTokens,
    ClusterKeys,
    RequestVerifier,
    SecretError,
    join_token,
    load_or_create_secret,
    read_secret_file,
)
from tests.harness import Cluster, Service, cs_json, free_port, http_json

MiB = 1024 * 1024


# -- units: tokens, signatures, the secret file -----------------------------------------------------------

def test_tokens_mint_verify_and_refuse() -> None:
    tokens = ChunkTokens(b"k" * 32)
    good = tokens.mint("read", 7, 3, 60)
    token = tokens.verify(good)
    assert (token.op, token.chunk_id, token.version) == ("read", 7, 3)
    token.require("read", 7, 3)
    token.require("read", 7)  # version-less routes (info)
    refusals = {
        None: errno.EKEYREJECTED, "": errno.EKEYREJECTED, "read.7.3": errno.EKEYREJECTED,
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"): errno.EKEYREJECTED,
        ChunkTokens(b"x" * 32).mint("read", 7, 3, 60): errno.EKEYREJECTED,
        good.replace("read.", "write.", 1): errno.EKEYREJECTED,  # the payload is signed
        tokens.mint("read", 7, 3, -3600): errno.EKEYEXPIRED,
    }
    for text, code in refusals.items():
        with pytest.raises(DfsError) as caught:
            tokens.verify(text)
        assert caught.value.errno == code and caught.value.status == 401, text
        assert not text or text not in caught.value.message
    tokens.verify(tokens.mint("read", 7, 3, -10))  # within the clock skew allowance
    for op, chunk_id, version in [("write", 7, 3), ("read", 8, 3), ("read", 7, 4)]:
        with pytest.raises(DfsError) as caught:
            token.require(op, chunk_id, version)
        assert caught.value.errno == errno.EACCES and caught.value.status == 403


def test_remembered_tokens_still_expire_and_forgeries_stay_refused() -> None:
    """`verify` remembers signatures it checked (one HMAC per token, not per read): the expiry is
    still checked on every call, and a text differing from a remembered one is checked afresh."""
    tokens = ChunkTokens(b"k" * 32)
    now = time.time()
    good = tokens.mint("read", 7, 3, 60, now=now)
    assert tokens.verify(good, now=now) == tokens.verify(good, now=now)
    with pytest.raises(DfsError) as caught:
        tokens.verify(good, now=now + 60 + 31 + 1)  # remembered, and expired past the clock skew
    assert caught.value.errno == errno.EKEYEXPIRED
    for forged in (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), good.replace(".3.", ".4.", 1)):
        with pytest.raises(DfsError) as caught:
            tokens.verify(forged, now=now)
        assert caught.value.errno == errno.EKEYREJECTED
    with pytest.raises(DfsError):
        ChunkTokens(b"x" * 32).verify(good, now=now)  # remembered per key: another key checks afresh
    for i in range(VERIFIED_TOKENS + 10):  # bounded
        tokens.verify(tokens.mint("read", i, 1, 60, now=now), now=now)
    assert tokens.verify(good, now=now).chunk_id == 7


def test_signed_requests_refuse_other_keys_changes_and_replays() -> None:
    keys = ClusterKeys.from_join_token("a" * 64)
    verifier = RequestVerifier(keys)
    body = b'{"server_id": 1}'
    header = keys.sign_request("POST", "/api/cs/heartbeat", body)[AUTH_HEADER]
    verifier.verify(header, "POST", "/api/cs/heartbeat", body)
    with pytest.raises(DfsError, match="replayed"):
        verifier.verify(header, "POST", "/api/cs/heartbeat", body)
    fresh = keys.sign_request("POST", "/api/cs/heartbeat", body)[AUTH_HEADER]
    for args in [(fresh, "POST", "/api/cs/heartbeat", b'{"server_id": 2}'),  # body changed
                 (fresh, "POST", "/api/cs/register", body),  # path changed
                 (ClusterKeys.from_join_token("b" * 64).sign_request("POST", "/api/cs/heartbeat", body)[AUTH_HEADER],
                  "POST", "/api/cs/heartbeat", body),
                 (keys.sign_request("POST", "/api/cs/heartbeat", body, now=time.time() - 3600)[AUTH_HEADER],
                  "POST", "/api/cs/heartbeat", body),
                 (None, "POST", "/api/cs/heartbeat", body), ("Bearer x", "POST", "/api/cs/heartbeat", body)]:
        with pytest.raises(DfsError) as caught:
            verifier.verify(*args)
        assert caught.value.status == 401
    verifier.verify(fresh, "POST", "/api/cs/heartbeat", body)  # untouched, it still passes


def test_secret_file_is_private_and_made_once(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 64 and load_or_create_secret(tmp_path) == secret  # kept, not remade
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temp file left
    assert join_token(secret) == join_token(read_secret_file(path)) != join_token(b"z" * 64)
    os.chmod(path, 0o640)
    with pytest.raises(SecretError, match="read by others"):
        read_secret_file(path)
    short = tmp_path / "short"
    short.write_text("tooshort")
    short.chmod(0o600)
    with pytest.raises(SecretError, match="shorter"):
        read_secret_file(short)


# -- a cluster ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and two chunkservers; files of goal 1, so a copy to the other server would be new."""
    c = Cluster(root=tmp_path_factory.mktemp("tokens"), goal=1)
    try:
        c.start(chunkservers=2, gateway=False)
        yield c
    finally:
        c.stop()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state(cluster: Cluster) -> dict[str, Any]:
    """What every chunkserver holds (listing and each chunk's info), read with good tokens."""
    tokens = cluster.chunk_tokens()
    state = {}
    for service in cluster.chunkservers:
        listing = cs_json(tokens, "GET", service.url + "/chunks")[1]["chunks"]
        infos = [cs_json(tokens, "GET", f"{service.url}/chunks/{c['chunk_id']}/info")[1] for c in listing]
        state[service.url] = (listing, infos)
    return state


def test_master_secret_file_is_0600(cluster: Cluster) -> None:
    assert stat.S_IMODE(cluster.secret_file.stat().st_mode) == 0o600


def test_every_chunkserver_endpoint_refuses_bad_tokens(cluster: Cluster) -> None:
    data = os.urandom(300_000)
    with SyncClient(cluster.master_url, retry_for=10) as fs:
        with fs.open("/guarded", create=True) as f:
            f.write(0, data)
        loc = fs.chunks(fs.stat("/guarded").inode)["chunks"][0]
    cid, version, holder = loc["chunk_id"], loc["version"], loc["servers"][0]["url"]
    other = next(s.url for s in cluster.chunkservers if s.url != holder)
    tokens = cluster.chunk_tokens()
    before = _state(cluster)

    # (method, url, op, version the token must name or None, body, what a token of another op is)
    routes: list[tuple[str, str, str, int | None, Any]] = [
        ("GET", f"{holder}/chunks", "list", None, None),
        ("GET", f"{holder}/chunks/{cid}?version={version}", "read", version, None),
        ("HEAD", f"{holder}/chunks/{cid}?version={version}", "read", version, None),
        ("GET", f"{holder}/chunks/{cid}/info", "read", None, None),
        ("PUT", f"{holder}/chunks/{cid}?version={version}&offset=0", "write", version, b"evil" * 100),
        ("POST", f"{holder}/chunks/{cid}/truncate?version={version + 1}&length=0", "truncate", version + 1, None),
        ("DELETE", f"{holder}/chunks/{cid}?version={version}", "delete", version, None),
        ("POST", f"{other}/chunks/{cid}/replicate", "replicate", version,
         {"source": holder, "version": version, "source_token": tokens.mint("read", cid, version, 60)}),
        ("POST", f"{holder}/chunks/{cid}/recover?from={version}&to={version + 1}", "recover", version + 1, None),
    ]
    wrong_key = ChunkTokens(b"not the cluster's key, not at all")
    checked = 0
    for method, url, op, want, body in routes:
        chunk = 0 if op == "list" else cid
        other_op = "write" if op != "write" else "read"
        good = tokens.mint(op, chunk, want or 0, 60)
        cases: dict[str, tuple[str | None, int]] = {
            "missing": (None, 401),
            "forged": (wrong_key.mint(op, chunk, want or 0, 60), 401),
            "tampered": (good.replace(f".{chunk}.", f".{chunk + 1}.", 1) if op != "list" else good[:-3] + "abc", 401),
            "expired": (tokens.mint(op, chunk, want or 0, -3600), 401),
            "wrong op": (tokens.mint(other_op, chunk, want or 0, 60), 403),
            "wrong chunk": (tokens.mint(op, chunk + 1, want or 0, 60), 403),
        }
        if want is not None:
            cases["wrong version"] = (tokens.mint(op, chunk, want + 7, 60), 403)
        for case, (token, expected) in cases.items():
            status, reply = _call(method, url, body, token)
            assert status == expected, (method, url, case, status, reply)
            if method != "HEAD":
                assert reply["error"] in ("EKEYREJECTED", "EKEYEXPIRED", "EACCES"), (url, case, reply)
                assert not token or (token not in str(reply) and token.rsplit(".", 1)[1] not in str(reply))
            checked += 1
    assert checked >= 55
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{holder}/chunks", timeout=10)
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == TOKEN_HEADER
    assert _state(cluster) == before  # nothing changed anywhere: data, versions, listings
    status, _ = _call("GET", f"{holder}/chunks/{cid}?version={version}", None, tokens.mint("read", cid, version, 60))
    assert status == 200  # and the same request with a good token works
    with SyncClient(cluster.master_url, retry_for=10) as fs, fs.open("/guarded") as f:
        assert _sha(f.read(0, len(data))) == _sha(data)
    log = "\n".join(s.log() for s in cluster.chunkservers)
    assert "refused" in log and good.rsplit(".", 1)[1] not in log  # refusals logged, tokens never


def _call(method: str, url: str, body: Any, token: str | None) -> tuple[int, Any]:
    headers = {TOKEN_HEADER: token} if token else {}
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


async def test_client_refreshes_expired_tokens_once(cluster: Cluster) -> None:
    tokens = cluster.chunk_tokens()
    data = os.urandom(2 * MiB + 5)
    async with Client(cluster.master_url, retry_for=10) as client:
        handle = await client.open("/refresh", create=True)
        await handle.write(0, data)
        await handle.flush()
        # the cached lease's write token expires: the next write asks for a fresh lease and goes through
        lease = handle._leases[0][0]
        lease.token = tokens.mint("write", lease.chunk_id, lease.version, -3600)
        await handle.write(10, b"fresh")
        await handle.close()
        expected = data[:10] + b"fresh" + data[15:]
        reader = await client.open("/refresh")
        assert await reader.read(0, 100) == expected[:100]  # locations (and read tokens) cached
        for loc in reader._locations.values():
            loc.token = tokens.mint("read", loc.chunk_id, loc.version, -3600)
        assert _sha(await reader.read(0, len(expected))) == _sha(expected)
        await reader.close()


def test_chunkserver_without_the_join_token_cannot_register(cluster: Cluster) -> None:
    live = http_json("POST", cluster.master_url + "/api/statfs", {})[1]["servers_live"]
    port = free_port()
    data = cluster.root / "intruder"
    data.mkdir()
    intruder = Service("intruder", ["chunkserver", "--master", cluster.master_url, "--data", str(data),
                                    "--listen", f"127.0.0.1:{port}"], port, cluster.root / "intruder.log",
                       env={"DFS_JOIN_TOKEN": "f" * 64})
    try:
        intruder.start()
        intruder.wait_healthy()
        deadline = time.monotonic() + 20
        while "cannot register" not in intruder.log():
            assert time.monotonic() < deadline, intruder.log()
            time.sleep(0.1)
        assert "EKEYREJECTED" in intruder.log()
        assert http_json("GET", intruder.url + "/health")[1]["registered"] is False
        assert http_json("POST", cluster.master_url + "/api/statfs", {})[1]["servers_live"] == live
        assert "cs/register from" in cluster.master.log() and "f" * 64 not in cluster.master.log()
    finally:
        intruder.stop()
    # unsigned calls of every chunkserver op, and a replayed signed one
    for op, body in [("register", {"uuid": "x", "url": "http://127.0.0.1:1", "capacity": 1, "used": 0, "free": 1,
                                   "chunks": []}),
                     ("heartbeat", {"server_id": 1, "capacity": 1, "used": 0, "free": 1, "bad": []}),
                     ("goodbye", {"server_id": 1})]:
        status, reply = http_json("POST", f"{cluster.master_url}/api/cs/{op}", body)
        assert status == 401 and reply["error"] == "EKEYREJECTED", (op, reply)
    keys = ClusterKeys.from_secret(read_secret_file(cluster.secret_file))
    raw = json.dumps({"server_id": 10**6, "capacity": 1, "used": 0, "free": 1, "bad": []}).encode()
    headers = keys.sign_request("POST", "/api/cs/heartbeat", raw)
    first = _post_raw(cluster.master_url + "/api/cs/heartbeat", raw, headers)
    assert first[0] == 200 and first[1]["reregister"] is True  # signed: accepted (an unknown server)
    again = _post_raw(cluster.master_url + "/api/cs/heartbeat", raw, headers)
    assert again[0] == 401 and "replayed" in again[1]["message"]


def _post_raw(url: str, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=raw, method="POST", headers={"Content-Type": "application/json",
                                                                             **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_master_refuses_a_readable_secret(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 64)
    secret.chmod(0o644)
    port = free_port()
    master = Service("master", ["master", "--data", str(tmp_path / "m"), "--listen", f"127.0.0.1:{port}",
                                "--secret-file", str(secret)], port, tmp_path / "m.log")
    try:
        master.start()
        assert master.proc is not None and master.proc.wait(timeout=30) != 0
        assert "may be read by others" in master.log()
    finally:
        master.stop()


def test_join_with_the_secret_file_and_the_printed_join_token(cluster: Cluster) -> None:
    printed = subprocess.run([sys.executable, "-m", "dfs", "admin", "join-token", "--data",
                              str(cluster.secret_file.parent)], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and printed.stdout.strip() == cluster.join_token(), printed.stderr
    copy = cluster.root / "secret-copy"
    copy.write_bytes(cluster.secret_file.read_bytes())
    copy.chmod(0o644)
    port = free_port()
    argv = ["chunkserver", "--master", cluster.master_url, "--data", str(cluster.root / "joiner"),
            "--listen", f"127.0.0.1:{port}", "--secret-file", str(copy)]
    refused = subprocess.run([sys.executable, "-m", "dfs", *argv], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "DFS_JOIN_TOKEN"})
    assert refused.returncode != 0 and "read by others" in refused.stderr
    copy.chmod(0o600)
    live = http_json("POST", cluster.master_url + "/api/statfs", {})[1]["servers_live"]
    joiner = Service("joiner", argv, port, cluster.root / "joiner.log")
    try:
        joiner.start()
        joiner.wait_healthy()
        cluster.wait_servers(live + 1)
        assert http_json("GET", joiner.url + "/health")[1]["registered"] is True
    finally:
        joiner.stop()
