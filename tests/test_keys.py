"""Access keys end to end: every master and gateway endpoint refuses a missing, forged, expired,
revoked or wrong-scope key and changes nothing; `dfs admin keys` through the real CLI; --insecure."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dfs.auth import GID_HEADER, UID_HEADER, auth_headers, new_key
from dfs.master.admin_api import ROUTES as ADMIN_ROUTES
from dfs.master.app import OPS
from dfs.master.auth import PUBLIC_PATHS, required_scope
from tests.harness import TEST_ADMIN_KEY, Cluster, http_json

#: Below the scope each level needs: a key of this scope must get 403.
WEAKER = {"rw": "ro", "admin": "proxy"}
#: What a refused call would have made had it been let through.
INTRUDER = {"parent": 1, "name": "intruder", "inode": 1, "path": "/", "uid": 0, "gid": 0, "mode": 0o777,
            "scope": "admin", "size": 0, "new_parent": 1, "new_name": "intruder2", "target": "/", "node": "x",
            "goal": 1, "client": "c", "index": 0, "chunk_id": 1, "server_id": 1, "version": 1,
            "problem": "corrupt", "value_b64": "", "exclusive": True}


def master_paths() -> list[str]:
    """Every route of the master that needs a key."""
    paths = [f"/api/{op}" for op in OPS] + [f"/api/admin/{name}" for name in ADMIN_ROUTES]
    paths += ["/api/admin/keys", "/api/admin/keys/create", "/api/admin/keys/revoke", "/api/status",
              "/api/whoami", "/api/no-such-op"]
    return [p for p in paths if p not in PUBLIC_PATHS]


@pytest.fixture(scope="module")
def keys(cluster: Cluster) -> dict[str, str]:
    made = {scope: cluster.create_key(f"k-{scope}", 1000, 1000, scope) for scope in ("ro", "rw", "proxy")}
    made["expired"] = cluster.create_key("k-expired", 1000, 1000, "admin", expires=time.time() - 1)
    made["revoked"] = cluster.create_key("k-revoked", 1000, 1000, "admin")
    assert http_json("POST", cluster.master_url + "/api/admin/keys/revoke", {"name": "k-revoked"})[0] == 200
    made["forged"] = new_key()[2]
    return made


def snapshot(cluster: Cluster) -> tuple[Any, ...]:
    """What a refused call must not change: the root folder, its attributes, the keys."""
    url = cluster.master_url
    names = [e["name"] for e in http_json("POST", url + "/api/readdir", {"inode": 1})[1]["entries"]]
    attr = http_json("POST", url + "/api/getattr", {"inode": 1})[1]["attr"]
    listed = [(k["name"], k["state"]) for k in http_json("GET", url + "/api/admin/keys")[1]["keys"]]
    return names, attr["mode"], attr["uid"], listed


def secret_of(key: str) -> str:
    """The secret part of `dfs_<key id>_<secret>` (the secret's own alphabet has "_" in it)."""
    parts = key.split("_", 2)
    return parts[2] if len(parts) == 3 else key


def refused(status: int, body: Any, code: int, errors: tuple[str, ...], key: str) -> str | None:
    if status != code or not isinstance(body, dict) or body.get("error") not in errors:
        return f"{status} {body}"
    if key and (key in str(body) or secret_of(key) in str(body)):
        return "the answer repeats the key"
    return None


def test_every_master_endpoint_refuses_bad_keys(cluster: Cluster, keys: dict[str, str]) -> None:
    before = snapshot(cluster)
    problems = []
    cases = [("", "ENOKEY"), ("not-a-key", "EKEYREJECTED"), (keys["forged"], "EKEYREJECTED"),
             (keys["forged"][:-4] + "AAAA", "EKEYREJECTED"), (keys["expired"], "EKEYEXPIRED"),
             (keys["revoked"], "EKEYREVOKED")]
    for path in master_paths():
        url = cluster.master_url + path
        for key, error in cases:
            status, body = http_json("POST", url, INTRUDER, key=key)
            if (why := refused(status, body, 401, (error,), key)) is not None:
                problems.append(f"POST {path} with {error} key: {why}")
        weaker = WEAKER.get(required_scope(path))
        if weaker is not None:
            status, body = http_json("POST", url, INTRUDER, key=keys[weaker])
            if (why := refused(status, body, 403, ("EACCES",), keys[weaker])) is not None:
                problems.append(f"POST {path} with a {weaker} key: {why}")
        # only proxy and admin keys may act for another user
        status, body = http_json("POST", url, INTRUDER, key=keys["rw"], headers={UID_HEADER: "0", GID_HEADER: "0"})
        if (why := refused(status, body, 403, ("EACCES",), keys["rw"])) is not None:
            problems.append(f"POST {path} as uid 0 with an rw key: {why}")
    assert not problems, "\n".join(problems)
    assert snapshot(cluster) == before


def test_public_paths_need_no_key(cluster: Cluster) -> None:
    status, body = http_json("GET", cluster.master_url + "/health", key="")
    assert status == 200 and body["chunk_size"] > 0


def test_unauthorised_answers_say_how(cluster: Cluster) -> None:
    req = urllib.request.Request(cluster.master_url + "/api/statfs", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 401 and caught.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_scopes_allow_what_they_should(cluster: Cluster, keys: dict[str, str]) -> None:
    url = cluster.master_url
    assert http_json("POST", url + "/api/statfs", {}, key=keys["ro"])[0] == 200
    assert http_json("POST", url + "/api/readdir", {"inode": 1}, key=keys["ro"])[0] == 200
    status, me = http_json("GET", url + "/api/whoami", key=keys["proxy"], headers={UID_HEADER: "7", GID_HEADER: "8"})
    assert status == 200 and (me["uid"], me["gid"], me["scope"], me["may_act_for_others"]) == (7, 8, "proxy", True)
    status, me = http_json("GET", url + "/api/whoami", key=keys["rw"])
    assert status == 200 and (me["uid"], me["key"]["name"], me["may_act_for_others"]) == (1000, "k-rw", False)
    assert http_json("GET", url + "/api/admin/keys", key=keys["proxy"])[0] == 403


# ---- the gateway ---------------------------------------------------------------------------------

def gateway_call(url: str, method: str, target: str, key: str, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url + target, data=data, method=method,
                                 headers={**auth_headers(key), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


FORM = b'--XX\r\nContent-Disposition: form-data; name="f"; filename="intruder"\r\n\r\nx\r\n--XX--\r\n'
GATEWAY_CALLS: list[tuple[str, str, bytes | None, dict[str, str]]] = [
    ("GET", "/fs/", None, {}), ("GET", "/fs/gw/file", None, {}), ("HEAD", "/fs/gw/file", None, {}),
    ("PUT", "/fs/gw/intruder", b"x", {}), ("PUT", "/fs/gw/file", b"changed", {}),
    ("POST", "/fs/gw/intruder?op=mkdir", None, {}), ("POST", "/fs/gw/file?op=rename&to=/gw/intruder", None, {}),
    ("POST", "/fs/gw/", FORM, {"Content-Type": "multipart/form-data; boundary=XX"}),
    ("DELETE", "/fs/gw/file", None, {}), ("DELETE", "/fs/gw?recursive=true", None, {}),
]


def test_every_gateway_endpoint_refuses_bad_keys(cluster: Cluster, keys: dict[str, str]) -> None:
    assert cluster.gateway is not None
    gw = cluster.gateway.url
    assert gateway_call(gw, "POST", "/fs/gw?op=mkdir", TEST_ADMIN_KEY)[0] == 201
    assert gateway_call(gw, "PUT", "/fs/gw/file", TEST_ADMIN_KEY, b"original")[0] == 201
    problems = []
    for method, target, data, headers in GATEWAY_CALLS:
        for key, code in [("", 401), ("not-a-key", 401), (keys["forged"], 401), (keys["expired"], 401),
                          (keys["revoked"], 401)]:
            status, body = gateway_call(gw, method, target, key, data, headers)
            if status != code or (key and key in body):
                problems.append(f"{method} {target} with key {key[:8]!r}: {status} {body[:200]}")
        if method not in ("GET", "HEAD"):  # a read-only key reads, and nothing else
            status, body = gateway_call(gw, method, target, keys["ro"], data, headers)
            if status != 403 or "EACCES" not in body:
                problems.append(f"{method} {target} with an ro key: {status} {body[:200]}")
        else:
            status, body = gateway_call(gw, method, target, keys["ro"], data, headers)
            if status != 200:
                problems.append(f"{method} {target} with an ro key: {status} {body[:200]}")
    assert not problems, "\n".join(problems)
    status, body = gateway_call(gw, "GET", "/fs/gw/", TEST_ADMIN_KEY)
    assert status == 200 and '"file"' in body and "intruder" not in body
    assert gateway_call(gw, "GET", "/fs/gw/file", TEST_ADMIN_KEY) == (200, "original")
    assert gateway_call(gw, "GET", "/health", "")[0] == 200
    # identity headers of a caller are never passed on: they do not make it root
    status, _ = gateway_call(gw, "PUT", "/fs/gw/intruder", keys["ro"], b"x", {UID_HEADER: "0", GID_HEADER: "0"})
    assert status == 403


# ---- dfs admin keys ----------------------------------------------------------------------------------

def dfs(cluster: Cluster, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFS_MASTER": cluster.master_url}
    if key is not None:
        env["DFS_KEY"] = key
    return subprocess.run([sys.executable, "-m", "dfs", *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_admin_keys_commands(cluster: Cluster) -> None:
    made = dfs(cluster, "admin", "keys", "create", "carol", "--uid", "1234", "--gid", "100", "--groups", "5,6",
               "--scope", "ro", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("dfs_") and "not shown again" in made.stderr
    me = http_json("GET", cluster.master_url + "/api/whoami", key=key)[1]
    assert (me["uid"], me["gid"], me["groups"], me["scope"]) == (1234, 100, [5, 6], "ro")
    assert 29 * 86400 < me["key"]["expires"] - time.time() <= 30 * 86400
    listed = dfs(cluster, "admin", "keys", "list")
    assert listed.returncode == 0 and "carol" in listed.stdout and "1234" in listed.stdout
    assert key not in listed.stdout and secret_of(key) not in listed.stdout
    assert secret_of(key) not in dfs(cluster, "admin", "keys", "list", "--json").stdout
    again = dfs(cluster, "admin", "keys", "create", "carol", "--uid", "1", "--gid", "1")
    assert again.returncode == 1 and "exists" in again.stderr
    # only an admin key may manage keys
    denied = dfs(cluster, "admin", "keys", "list", key=key)
    assert denied.returncode == 1 and "Permission denied" in denied.stderr
    assert dfs(cluster, "admin", "keys", "revoke", "carol").returncode == 0
    status, body = http_json("GET", cluster.master_url + "/api/whoami", key=key)
    assert status == 401 and body["error"] == "EKEYREVOKED"
    gone = dfs(cluster, "ls", "/", key=key)
    assert gone.returncode == 1 and "revoked" in gone.stderr
    assert "revoked" in dfs(cluster, "admin", "keys", "list").stdout
    missing = dfs(cluster, "admin", "keys", "revoke", "nobody")
    assert missing.returncode == 1 and "nobody" in missing.stderr
    assert dfs(cluster, "admin", "keys", "create", "carol", "--uid", "1", "--gid", "1").returncode == 0  # reusable


def test_admin_key_file(cluster: Cluster) -> None:
    path = cluster.root / "master" / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env_free = {k: v for k, v in os.environ.items() if k != "DFS_KEY"}
    done = subprocess.run([sys.executable, "-m", "dfs", "admin", "status", "--master", cluster.master_url,
                           "--key-file", str(path)], capture_output=True, text=True, env=env_free, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    none = subprocess.run([sys.executable, "-m", "dfs", "ls", "/", "--master", cluster.master_url],
                          capture_output=True, text=True, env=env_free, timeout=60, check=False)
    assert none.returncode == 1 and "Required key not available" in none.stderr


# ---- a fresh master: the admin key, --insecure ------------------------------------------------------

def test_master_makes_its_admin_key(tmp_path: Path) -> None:
    cluster = Cluster(root=tmp_path / "c", admin_key=None)
    try:
        cluster.start_master()
        key = (tmp_path / "c" / "master" / "admin.key").read_text().strip()
        assert key.startswith("dfs_") and key != TEST_ADMIN_KEY
        assert http_json("GET", cluster.master_url + "/api/admin/status", key=key)[0] == 200
        assert http_json("GET", cluster.master_url + "/api/admin/status")[0] == 401  # the test key is not this one
        assert cluster.master is not None and secret_of(key) not in cluster.master.log()
        # revoked, the file's key is replaced at the next start
        assert http_json("POST", cluster.master_url + "/api/admin/keys/revoke", {"name": "admin"}, key=key)[0] == 200
        assert cluster.master is not None
        cluster.master.stop()
        cluster.start_master()
        fresh = (tmp_path / "c" / "master" / "admin.key").read_text().strip()
        assert fresh != key and http_json("GET", cluster.master_url + "/api/admin/status", key=fresh)[0] == 200
    finally:
        cluster.stop()


def test_insecure_master_says_so(tmp_path: Path) -> None:
    cluster = Cluster(root=tmp_path / "c", master_args=["--insecure"])
    try:
        cluster.start_master()
        status, body = http_json("GET", cluster.master_url + "/api/status", key="")
        assert status == 200 and body["insecure"] is True and "INSECURE" in body["warning"]
        assert http_json("POST", cluster.master_url + "/api/mkdir", {"parent": 1, "name": "anon"}, key="")[0] == 200
        status, me = http_json("GET", cluster.master_url + "/api/whoami", key="", headers={UID_HEADER: "5",
                                                                                          GID_HEADER: "5"})
        assert status == 200 and me["uid"] == 5
        assert cluster.master is not None
        warnings = [line for line in cluster.master.log().splitlines() if "WARNING" in line and "INSECURE" in line]
        assert len(warnings) == 1
    finally:
        cluster.stop()
