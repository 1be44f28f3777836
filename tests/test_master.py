"""The metadata master over HTTP: a real `dfs master` process, fake chunkservers (register payloads only)."""

from __future__ import annotations

import base64
import itertools
import json
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dfs.protocol import MAX_FILE_SIZE
from dfs.tokens import ClusterKeys
from tests.harness import Cluster, free_port, http_json

CHUNK = 1024 * 1024
GiB = 1 << 30


class Api:
    """POST /api/<op> on one master; `api(op, ...)` expects success, `api.err(op, ...)` an error code.
    Chunkserver ops (cs/...) are signed with the cluster's join token, as chunkservers do."""

    def __init__(self, cluster: Cluster) -> None:
        self.url = cluster.master_url
        self.keys = ClusterKeys.from_join_token(cluster.join_token())

    def call(self, op: str, **body: Any) -> tuple[int, Any]:
        if not op.startswith("cs/"):
            return http_json("POST", f"{self.url}/api/{op}", body)
        raw = json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/{op}", data=raw, method="POST", headers={
            "Content-Type": "application/json", **self.keys.sign_request("POST", f"/api/{op}", raw)})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def __call__(self, op: str, **body: Any) -> Any:
        status, reply = self.call(op, **body)
        assert status == 200, (op, body, status, reply)
        return reply

    def err(self, op: str, **body: Any) -> str:
        status, reply = self.call(op, **body)
        assert status >= 400, (op, body, status, reply)
        assert isinstance(reply, dict) and reply.get("message"), reply
        return str(reply["error"])

    # shorthands
    def mkdir(self, parent: int, name: str, mode: int = 0o755) -> dict[str, Any]:
        return self("mkdir", parent=parent, name=name, mode=mode, uid=1000, gid=1000)["attr"]

    def create(self, parent: int, name: str, **extra: Any) -> dict[str, Any]:
        body = {"mode": stat.S_IFREG | 0o644, "uid": 1000, "gid": 1000, "exclusive": True, **extra}
        return self("create", parent=parent, name=name, **body)["attr"]

    def attr(self, inode: int) -> dict[str, Any]:
        return self("getattr", inode=inode)["attr"]

    def names(self, inode: int) -> list[str]:
        return [e["name"] for e in self("readdir", inode=inode, limit=10000)["entries"]]

    def register(self, uuid: str, *, capacity: int = 10 * GiB, used: int = 0, free: int | None = None,
                 chunks: list[dict[str, Any]] | None = None, url: str | None = None) -> int:
        reply = self("cs/register", uuid=uuid, url=url or f"http://127.0.0.1:{free_port()}", capacity=capacity,
                     used=used, free=capacity - used if free is None else free, chunks=chunks or [])
        return int(reply["server_id"])

    def heartbeat(self, server_id: int, *, capacity: int = 10 * GiB, used: int = 0,
                  bad: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return self("cs/heartbeat", server_id=server_id, capacity=capacity, used=used, free=capacity - used,
                    bad=bad or [])


def _start(root: Path, *args: str) -> Cluster:
    cluster = Cluster(root=root, chunk_size=CHUNK, goal=3, master_args=list(args))
    cluster.start_master()
    return cluster


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One master for the namespace tests; each test works in a directory of its own."""
    cluster = Cluster(root=tmp_path_factory.mktemp("master"), chunk_size=CHUNK)
    try:
        cluster.start_master()
        yield Api(cluster)
    finally:
        cluster.stop()


_dirs = itertools.count()


@pytest.fixture
def ns(shared: Api, request: pytest.FixtureRequest) -> tuple[Api, int]:
    """(api, inode of a fresh directory for this test)."""
    return shared, shared.mkdir(1, f"{request.node.name[:200]}-{next(_dirs)}")["inode"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A master of its own (placement tests need a known set of chunkservers)."""
    c = _start(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def api(cluster: Cluster) -> Api:
    return Api(cluster)


# -- basics ---------------------------------------------------------------------------------------

def test_health_and_root(shared: Api) -> None:
    status, body = http_json("GET", shared.url + "/health")
    assert status == 200 and body["service"] == "master"
    root = shared.attr(1)
    assert root["inode"] == 1 and stat.S_ISDIR(root["mode"]) and root["nlink"] >= 2
    assert shared("resolve", path="/")["attr"]["inode"] == 1


def test_bad_requests(shared: Api) -> None:
    status, body = http_json("POST", shared.url + "/api/getattr", None)
    assert status == 400 and body["error"] == "EINVAL"  # missing inode
    assert shared.err("getattr", inode="one") == "EINVAL"
    assert shared.err("getattr", inode=1.5) == "EINVAL"
    assert shared.err("getattr", inode=0) == "EINVAL"
    assert shared.err("getattr", inode=10**12) == "ENOENT"
    status, body = http_json("POST", shared.url + "/api/nosuchop", {})
    assert status == 404 and body["error"] == "ENOENT"
    status, body = http_json("GET", shared.url + "/api/getattr")
    assert status == 405
    space = {"capacity": 1, "used": 0, "free": 1, "chunks": []}
    assert shared.err("cs/register", uuid="a\0b", url="http://127.0.0.1:1", **space) == "EINVAL"
    assert shared.err("cs/register", uuid="ab", url="http://127.0.0.1:1/\0", **space) == "EINVAL"


# -- namespace ------------------------------------------------------------------------------------

def test_mkdir_lookup_nlink(ns: tuple[Api, int]) -> None:
    api, d = ns
    before = api.attr(d)
    sub = api.mkdir(d, "sub", 0o700)
    assert stat.S_ISDIR(sub["mode"]) and stat.S_IMODE(sub["mode"]) == 0o700 and sub["nlink"] == 2
    assert sub["uid"] == 1000 and sub["gid"] == 1000
    after = api.attr(d)
    assert after["nlink"] == before["nlink"] + 1
    assert after["mtime_ns"] >= before["mtime_ns"] and after["ctime_ns"] >= before["ctime_ns"]
    assert api("lookup", parent=d, name="sub")["attr"] == sub
    api.create(d, "file")
    assert api.attr(d)["nlink"] == before["nlink"] + 1  # files do not count
    assert api.err("mkdir", parent=d, name="sub", mode=0o755) == "EEXIST"
    assert api.err("mkdir", parent=d, name="file", mode=0o755) == "EEXIST"
    assert api.err("lookup", parent=d, name="nope") == "ENOENT"
    assert api.err("mkdir", parent=10**9, name="x", mode=0o755) == "ENOENT"
    file_inode = api("lookup", parent=d, name="file")["attr"]["inode"]
    assert api.err("mkdir", parent=file_inode, name="x", mode=0o755) == "ENOTDIR"
    assert api.err("lookup", parent=file_inode, name="x") == "ENOTDIR"
    assert api.err("create", parent=file_inode, name="x", mode=0o644, exclusive=True) == "ENOTDIR"


def test_bad_names(ns: tuple[Api, int]) -> None:
    api, d = ns
    for name in ["", ".", "..", "a/b", "/", "a\0b"]:
        assert api.err("mkdir", parent=d, name=name, mode=0o755) == "EINVAL", name
        assert api.err("create", parent=d, name=name, mode=0o644) == "EINVAL", name
        assert api.err("lookup", parent=d, name=name) == "EINVAL", name
    assert api.err("create", parent=d, name="x" * 256, mode=0o644) == "ENAMETOOLONG"
    assert api.err("create", parent=d, name="é" * 128, mode=0o644) == "ENAMETOOLONG"  # 256 bytes
    assert api.create(d, "x" * 255)["nlink"] == 1
    assert api.create(d, "é" * 127)["nlink"] == 1
    assert api.err("rename", parent=d, name="x" * 255, new_parent=d, new_name="a/b") == "EINVAL"
    assert api.err("symlink", parent=d, name="l/l", target="x") == "EINVAL"
    assert api.err("create", parent=d, name=5, mode=0o644) == "EINVAL"


def test_unicode_and_undecodable_names(ns: tuple[Api, int]) -> None:
    api, d = ns
    for name in ["ünïcødé", "日本語", "sp ace", "\udcff\udcfe"]:  # the last: bytes ff fe, not UTF-8
        api.create(d, name)
        assert api("lookup", parent=d, name=name)["attr"]["nlink"] == 1
    assert set(api.names(d)) == {"ünïcødé", "日本語", "sp ace", "\udcff\udcfe"}


def test_create_kinds(ns: tuple[Api, int]) -> None:
    api, d = ns
    reply = api("create", parent=d, name="f", mode=0o640, uid=5, gid=6, exclusive=False)
    assert reply["created"] is True
    f = reply["attr"]
    assert f["mode"] == stat.S_IFREG | 0o640 and f["size"] == 0 and f["nlink"] == 1 and f["goal"] == 3
    again = api("create", parent=d, name="f", mode=0o600, exclusive=False)
    assert again["created"] is False and again["attr"]["inode"] == f["inode"]
    assert api.err("create", parent=d, name="f", mode=0o600, exclusive=True) == "EEXIST"
    api.mkdir(d, "dir")
    assert api.err("create", parent=d, name="dir", mode=0o644, exclusive=False) == "EISDIR"
    fifo = api.create(d, "fifo", mode=stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(fifo["mode"])
    assert api.err("create", parent=d, name="fifo", mode=0o644, exclusive=False) == "EEXIST"
    dev = api.create(d, "dev", mode=stat.S_IFCHR | 0o600, rdev=0x0103)
    assert stat.S_ISCHR(dev["mode"]) and dev["rdev"] == 0x0103
    assert stat.S_ISSOCK(api.create(d, "sock", mode=stat.S_IFSOCK | 0o600)["mode"])
    assert stat.S_ISBLK(api.create(d, "blk", mode=stat.S_IFBLK | 0o600)["mode"])
    assert api.create(d, "g1", goal=1)["goal"] == 1
    assert api.err("create", parent=d, name="g0", mode=0o644, goal=0) == "EINVAL"
    assert api.err("create", parent=d, name="dd", mode=stat.S_IFDIR | 0o755) == "EINVAL"
    assert api.err("create", parent=d, name="ll", mode=stat.S_IFLNK | 0o777) == "EINVAL"


def test_readdir_paging(ns: tuple[Api, int]) -> None:
    api, d = ns
    names = [f"n{i:05d}" for i in range(2500)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: api("create", parent=d, name=name, mode=0o644, exclusive=True),
                      reversed(names)))
    api.mkdir(d, "zdir")
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        body: dict[str, Any] = {"inode": d, "limit": 1000}
        if after is not None:
            body["after"] = after
        page = api("readdir", **body)
        pages += 1
        seen += [e["name"] for e in page["entries"]]
        for entry in page["entries"]:
            assert entry["attr"]["inode"] > 1
        after = page["next"]
        if after is None:
            break
    assert pages == 3 and seen == [*names, "zdir"]
    last = api("readdir", inode=d, after="n02400", limit=5000)
    assert len(last["entries"]) == 100 and last["next"] is None
    assert last["entries"][-1]["attr"]["nlink"] == 2  # zdir, with its attributes
    assert api("readdir", inode=d, after="zzz")["entries"] == []
    assert api.err("readdir", inode=d, limit=0) == "EINVAL"
    assert api.err("readdir", inode=d, limit=10001) == "EINVAL"
    file_inode = api("lookup", parent=d, name="n00000")["attr"]["inode"]
    assert api.err("readdir", inode=file_inode) == "ENOTDIR"
    assert api.err("readdir", inode=10**9) == "ENOENT"


def test_unlink_rmdir(ns: tuple[Api, int]) -> None:
    api, d = ns
    f = api.create(d, "f")
    sub = api.mkdir(d, "sub")
    api.create(sub["inode"], "inner")
    nlink = api.attr(d)["nlink"]
    assert api.err("unlink", parent=d, name="sub") == "EISDIR"
    assert api.err("unlink", parent=d, name="nope") == "ENOENT"
    assert api.err("rmdir", parent=d, name="f") == "ENOTDIR"
    assert api.err("rmdir", parent=d, name="sub") == "ENOTEMPTY"
    assert api.err("rmdir", parent=d, name="nope") == "ENOENT"
    stamped = api("unlink", parent=d, name="f")["mtime_ns"]
    folder = api.attr(d)
    assert folder["mtime_ns"] == folder["ctime_ns"] == stamped  # the reply says the folder's new times
    assert api.err("getattr", inode=f["inode"]) == "ENOENT"
    api("unlink", parent=sub["inode"], name="inner")
    assert api("rmdir", parent=d, name="sub") == {}
    assert api.attr(d)["nlink"] == nlink - 1
    assert api.err("getattr", inode=sub["inode"]) == "ENOENT"
    assert api.names(d) == []


def test_rename_move_and_replace(ns: tuple[Api, int]) -> None:
    api, d = ns
    a = api.mkdir(d, "a")
    b = api.mkdir(d, "b")
    f = api.create(a["inode"], "f")
    api("rename", parent=a["inode"], name="f", new_parent=b["inode"], new_name="g")
    assert api.names(a["inode"]) == [] and api.names(b["inode"]) == ["g"]
    assert api("lookup", parent=b["inode"], name="g")["attr"]["inode"] == f["inode"]
    # replace a file
    other = api.create(b["inode"], "other")
    api("rename", parent=b["inode"], name="g", new_parent=b["inode"], new_name="other")
    assert api.names(b["inode"]) == ["other"]
    assert api("lookup", parent=b["inode"], name="other")["attr"]["inode"] == f["inode"]
    assert api.err("getattr", inode=other["inode"]) == "ENOENT"
    # move a directory: link counts follow
    d_nlink = api.attr(d)["nlink"]
    api("rename", parent=d, name="a", new_parent=b["inode"], new_name="a2")
    assert api.attr(d)["nlink"] == d_nlink - 1 and api.attr(b["inode"])["nlink"] == 3
    # replace an empty directory with a directory
    api.mkdir(d, "empty")
    api("rename", parent=b["inode"], name="a2", new_parent=d, new_name="empty")
    assert api.attr(d)["nlink"] == d_nlink and api.attr(b["inode"])["nlink"] == 2
    assert api("lookup", parent=d, name="empty")["attr"]["inode"] == a["inode"]
    assert api.err("rename", parent=d, name="nope", new_parent=d, new_name="x") == "ENOENT"
    assert api.err("rename", parent=d, name="b", new_parent=10**9, new_name="x") == "ENOENT"


def test_rename_errors(ns: tuple[Api, int]) -> None:
    api, d = ns
    top = api.mkdir(d, "top")
    mid = api.mkdir(top["inode"], "mid")
    full = api.mkdir(d, "full")
    api.create(full["inode"], "x")
    api.create(d, "file")
    api.mkdir(d, "emptydir")
    assert api.err("rename", parent=d, name="top", new_parent=top["inode"], new_name="t") == "EINVAL"
    assert api.err("rename", parent=d, name="top", new_parent=mid["inode"], new_name="t") == "EINVAL"
    assert api.err("rename", parent=d, name="emptydir", new_parent=d, new_name="full") == "ENOTEMPTY"
    assert api.err("rename", parent=d, name="emptydir", new_parent=d, new_name="file") == "ENOTDIR"
    assert api.err("rename", parent=d, name="file", new_parent=d, new_name="emptydir") == "EISDIR"
    assert api.err("rename", parent=d, name="file", new_parent=d, new_name="full", noreplace=True) == "EEXIST"
    assert api.err("rename", parent=d, name="file", new_parent=d, new_name="new", noreplace=True,
                   exchange=True) == "EINVAL"
    api("rename", parent=d, name="file", new_parent=d, new_name="new", noreplace=True)
    assert sorted(api.names(d)) == ["emptydir", "full", "new", "top"]
    # onto itself, and onto another name of the same file: nothing happens
    api("rename", parent=d, name="new", new_parent=d, new_name="new")
    inode = api("lookup", parent=d, name="new")["attr"]["inode"]
    api("link", inode=inode, new_parent=d, new_name="alias")
    api("rename", parent=d, name="new", new_parent=d, new_name="alias")
    assert sorted(api.names(d)) == ["alias", "emptydir", "full", "new", "top"]
    assert api.attr(inode)["nlink"] == 2


def test_rename_exchange(ns: tuple[Api, int]) -> None:
    api, d = ns
    p1 = api.mkdir(d, "p1")
    p2 = api.mkdir(d, "p2")
    f = api.create(p1["inode"], "x")
    sub = api.mkdir(p2["inode"], "y")
    api("rename", parent=p1["inode"], name="x", new_parent=p2["inode"], new_name="y", exchange=True)
    assert api("lookup", parent=p1["inode"], name="x")["attr"]["inode"] == sub["inode"]
    assert api("lookup", parent=p2["inode"], name="y")["attr"]["inode"] == f["inode"]
    assert api.attr(p1["inode"])["nlink"] == 3 and api.attr(p2["inode"])["nlink"] == 2
    assert api.err("rename", parent=p1["inode"], name="x", new_parent=p2["inode"], new_name="none",
                   exchange=True) == "ENOENT"
    # a directory cannot be swapped into its own subtree
    api.mkdir(sub["inode"], "deep")
    assert api.err("rename", parent=d, name="p1", new_parent=sub["inode"], new_name="deep", exchange=True) == "EINVAL"


def test_link(ns: tuple[Api, int]) -> None:
    api, d = ns
    f = api.create(d, "f")
    other = api.mkdir(d, "other")
    attr = api("link", inode=f["inode"], new_parent=other["inode"], new_name="f2")["attr"]
    assert attr["inode"] == f["inode"] and attr["nlink"] == 2
    api("link", inode=f["inode"], new_parent=d, new_name="f3")
    assert api.attr(f["inode"])["nlink"] == 3
    assert api.err("link", inode=f["inode"], new_parent=d, new_name="f3") == "EEXIST"
    assert api.err("link", inode=other["inode"], new_parent=d, new_name="dirlink") == "EPERM"
    assert api.err("link", inode=10**9, new_parent=d, new_name="zz") == "ENOENT"
    api("unlink", parent=d, name="f")
    assert api.attr(f["inode"])["nlink"] == 2
    api("unlink", parent=other["inode"], name="f2")
    # replacing the last name by rename deletes the file
    api.create(d, "g")
    api("rename", parent=d, name="g", new_parent=d, new_name="f3")
    assert api.err("getattr", inode=f["inode"]) == "ENOENT"


def test_symlink_readlink_resolve(ns: tuple[Api, int]) -> None:
    api, d = ns
    base = api("readdir", inode=1, limit=10000)["entries"]
    dname = next(e["name"] for e in base if e["attr"]["inode"] == d)
    a = api.mkdir(d, "a")
    b = api.mkdir(a["inode"], "b")
    f = api.create(b["inode"], "f")
    link = api("symlink", parent=d, name="rel", target="a/b", uid=1, gid=2)["attr"]
    assert stat.S_ISLNK(link["mode"]) and link["size"] == 3 and link["uid"] == 1
    assert api("readlink", inode=link["inode"]) == {"target": "a/b"}
    assert api.err("readlink", inode=f["inode"]) == "EINVAL"
    assert api.err("symlink", parent=d, name="rel", target="x", uid=0, gid=0) == "EEXIST"
    api("symlink", parent=d, name="abs", target=f"/{dname}/a", uid=0, gid=0)
    api("symlink", parent=b["inode"], name="up", target="../../a/./b/f", uid=0, gid=0)
    api("symlink", parent=d, name="loop1", target="loop2", uid=0, gid=0)
    api("symlink", parent=d, name="loop2", target="loop1", uid=0, gid=0)
    api("symlink", parent=d, name="dangling", target="nowhere", uid=0, gid=0)

    def resolve(path: str, follow: bool = False) -> int:
        return int(api("resolve", path=f"/{dname}/{path}", follow=follow)["attr"]["inode"])

    assert resolve("a/b/f") == f["inode"]
    assert resolve("rel/f") == f["inode"]  # intermediate link followed
    assert resolve("rel") == link["inode"]  # last one not, by default
    assert resolve("rel", follow=True) == b["inode"]
    assert resolve("abs/b/f") == f["inode"]
    assert resolve("a/b/up", follow=True) == f["inode"]
    assert resolve("rel/up", follow=True) == f["inode"]
    assert resolve("loop1") != f["inode"]
    assert api.err("resolve", path=f"/{dname}/loop1", follow=True) == "ELOOP"
    assert api.err("resolve", path=f"/{dname}/loop1/x") == "ELOOP"
    assert api.err("resolve", path=f"/{dname}/dangling", follow=True) == "ENOENT"
    assert api.err("resolve", path=f"/{dname}/a/b/f/x") == "ENOTDIR"
    assert api.err("resolve", path=f"/{dname}/a/nope") == "ENOENT"
    assert api.err("resolve", path="relative/path") == "EINVAL"
    assert api.err("resolve", path=f"/{dname}/../x") == "EINVAL"
    assert api.err("symlink", parent=d, name="empty", target="", uid=0, gid=0) == "ENOENT"
    assert api.err("symlink", parent=d, name="long", target="x" * 4097, uid=0, gid=0) == "ENAMETOOLONG"


def test_setattr(ns: tuple[Api, int]) -> None:
    api, d = ns
    f = api.create(d, "f")
    time.sleep(0.002)
    attr = api("setattr", inode=f["inode"], mode=0o4711, uid=7, gid=8)["attr"]
    assert attr["mode"] == stat.S_IFREG | 0o4711 and attr["uid"] == 7 and attr["gid"] == 8
    assert attr["ctime_ns"] > f["ctime_ns"] and attr["mtime_ns"] == f["mtime_ns"]
    attr = api("setattr", inode=f["inode"], atime_ns=1_234_567_890_123_456_789, mtime_ns=5)["attr"]
    assert attr["atime_ns"] == 1_234_567_890_123_456_789 and attr["mtime_ns"] == 5
    attr = api("setattr", inode=f["inode"], size=10 * CHUNK + 5)["attr"]  # growing: a hole
    assert attr["size"] == 10 * CHUNK + 5 and attr["mtime_ns"] > 5
    assert api("chunks", inode=f["inode"])["chunks"] == []
    assert api("setattr", inode=f["inode"], size=MAX_FILE_SIZE)["attr"]["size"] == MAX_FILE_SIZE
    assert api("setattr", inode=f["inode"], size=0)["attr"]["size"] == 0
    assert api.err("setattr", inode=f["inode"], size=MAX_FILE_SIZE + 1) == "EFBIG"
    assert api.err("setattr", inode=f["inode"], size=-1) == "EINVAL"
    assert api.err("setattr", inode=f["inode"], mode=0o10000) == "EINVAL"
    assert api.err("setattr", inode=f["inode"], uid=-1) == "EINVAL"
    assert api.err("setattr", inode=d, size=0) == "EISDIR"
    link = api("symlink", parent=d, name="l", target="f", uid=0, gid=0)["attr"]
    assert api.err("setattr", inode=link["inode"], size=0) == "EINVAL"
    assert api.err("setattr", inode=10**9, mode=0o644) == "ENOENT"
    dattr = api("setattr", inode=d, mode=0o700)["attr"]
    assert dattr["mode"] == stat.S_IFDIR | 0o700


def test_xattrs(ns: tuple[Api, int]) -> None:
    api, d = ns
    f = api.create(d, "f")["inode"]
    value = bytes(range(256)) * 4

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    assert api("listxattr", inode=f) == {"names": []}
    assert api.err("getxattr", inode=f, name="user.a") == "ENODATA"
    api("setxattr", inode=f, name="user.a", value_b64=b64(value))
    assert base64.b64decode(api("getxattr", inode=f, name="user.a")["value_b64"]) == value
    assert api.err("setxattr", inode=f, name="user.a", value_b64=b64(b"x"), flags=1) == "EEXIST"
    assert api.err("setxattr", inode=f, name="user.b", value_b64=b64(b"x"), flags=2) == "ENODATA"
    api("setxattr", inode=f, name="user.a", value_b64=b64(b""), flags=2)
    assert api("getxattr", inode=f, name="user.a")["value_b64"] == ""
    api("setxattr", inode=f, name="user.b", value_b64=b64(b"2"), flags=1)
    assert api("listxattr", inode=f) == {"names": ["user.a", "user.b"]}
    api("removexattr", inode=f, name="user.a")
    assert api.err("removexattr", inode=f, name="user.a") == "ENODATA"
    assert api("listxattr", inode=f) == {"names": ["user.b"]}
    assert api.err("setxattr", inode=f, name="user.c", value_b64="!!notbase64") == "EINVAL"
    assert api.err("setxattr", inode=f, name="u" * 256, value_b64="") == "ERANGE"
    assert api.err("setxattr", inode=f, name="user.big", value_b64=b64(b"x" * 65537)) == "E2BIG"
    assert api.err("getxattr", inode=10**9, name="user.a") == "ENOENT"


def test_statfs_and_status(shared: Api) -> None:
    fs = shared("statfs")
    assert fs["chunk_size"] == CHUNK and fs["files"] >= 1
    assert {"total", "used", "free", "servers_live"} <= set(fs)
    status, body = http_json("GET", shared.url + "/api/status")
    assert status == 200 and body["inodes"] >= 1 and "servers" in body


# -- placement ------------------------------------------------------------------------------------

def test_lease_placement(api: Api) -> None:
    full = api.register("full", capacity=10 * GiB, used=10 * GiB, free=0)
    busy = api.register("busy", capacity=10 * GiB, used=8 * GiB)
    idle = api.register("idle", capacity=10 * GiB, used=1 * GiB)
    half = api.register("half", capacity=10 * GiB, used=5 * GiB)
    assert api("statfs")["servers_live"] == 4
    f = api.create(1, "f")["inode"]
    lease = api("lease", inode=f, index=0, client="c1")
    assert [s["id"] for s in lease["servers"]] == [idle, half, busy]  # least utilised first, not the full one
    assert lease["version"] == 1 and lease["chunk_id"] >= 1 and lease["inode"] == f and lease["index"] == 0
    assert 0 < lease["expires_in"] <= 60
    again = api("lease", inode=f, index=0, client="c1")
    assert again["chunk_id"] == lease["chunk_id"] and again["version"] == 1 and again["servers"] == lease["servers"]
    assert api.err("lease", inode=f, index=0, client="c2") == "EBUSY"
    # a failed write: drop a replica, bump the version
    ex = api("lease", inode=f, index=0, client="c1", exclude=[half])
    assert ex["chunk_id"] == lease["chunk_id"] and ex["version"] == 2
    assert [s["id"] for s in ex["servers"]] == [idle, busy]
    attr = api("commit", inode=f, client="c1", size=1000, mtime_ns=42)["attr"]
    assert attr["size"] == 1000 and attr["mtime_ns"] == 42
    assert api("commit", inode=f, client="c1", size=10)["attr"]["size"] == 1000  # never shrinks
    # released: another client may write now, and its grant bumps the version
    other = api("lease", inode=f, index=0, client="c2")
    assert other["version"] == 3 and {s["id"] for s in other["servers"]} == {idle, busy}
    locations = api("chunks", inode=f)
    assert locations["size"] == 1000 and locations["chunk_size"] == CHUNK
    [loc] = locations["chunks"]
    token = loc.pop("token")  # a read token of the chunk at its version (dfs/tokens.py)
    assert token.startswith(f"read.{lease['chunk_id']}.3.")
    assert other["token"].startswith(f"write.{lease['chunk_id']}.3.")
    assert loc == {"index": 0, "chunk_id": lease["chunk_id"], "version": 3,
                   "servers": other["servers"]}
    # each chunk gets a new id; goal from the inode
    g = api.create(1, "g", goal=2)["inode"]
    lg = api("lease", inode=g, index=5, client="c1")
    assert len(lg["servers"]) == 2 and lg["chunk_id"] > lease["chunk_id"]
    assert full not in {s["id"] for s in lg["servers"]}
    assert [c["index"] for c in api("chunks", inode=g, first=0, count=10)["chunks"]] == [5]
    assert api("chunks", inode=g, first=6)["chunks"] == []
    d = api.mkdir(1, "d")["inode"]
    assert api.err("lease", inode=d, index=0, client="c1") == "EISDIR"
    assert api.err("lease", inode=10**9, index=0, client="c1") == "ENOENT"
    assert api.err("lease", inode=f, index=0, client="") == "EINVAL"
    assert api.err("commit", inode=f, client="c1", size=MAX_FILE_SIZE + 1) == "EFBIG"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _resident(api: Api, inode: int) -> bytes | None:
    """The resident bytes `chunks` answers for slot 0 (None: none)."""
    reply = api("chunks", inode=inode)
    return base64.b64decode(reply["resident_b64"]) if "resident_b64" in reply else None


def test_resident_commits(ns: tuple[Api, int]) -> None:
    api, d = ns
    f = api.create(d, "small")["inode"]
    resident_files = http_json("GET", api.url + "/api/status")[1]["resident_files"]
    attr = api("commit", inode=f, client="c1", size=5, resident=[{"offset": 0, "data_b64": _b64(b"hello")}])["attr"]
    assert attr["size"] == 5 and _resident(api, f) == b"hello"
    assert http_json("GET", api.url + "/api/status")[1]["resident_files"] == resident_files + 1
    assert api("getattr", inode=f, chunks=1)["resident_b64"] == _b64(b"hello")  # an open's getattr brings them
    # pieces patch what is there; a gap reads as zeros
    api("commit", inode=f, client="c1", size=9, resident=[{"offset": 3, "data_b64": _b64(b"LO")},
                                                          {"offset": 7, "data_b64": _b64(b"!!")}])
    assert _resident(api, f) == b"helLO\0\0!!"
    # refused, with nothing changed: past resident_max (64 KiB), past the size committed, bad base64
    assert api.err("commit", inode=f, client="c1", size=70_000,
                   resident=[{"offset": 65_535, "data_b64": _b64(b"ab")}]) == "EXDEV"
    assert api.err("commit", inode=f, client="c1", size=9, resident=[{"offset": 8, "data_b64": _b64(b"ab")}]) \
        == "EINVAL"
    assert api.err("commit", inode=f, client="c1", size=9, resident=[{"offset": 0, "data_b64": "*"}]) == "EINVAL"
    assert _resident(api, f) == b"helLO\0\0!!" and api.attr(f)["size"] == 9
    # truncates cut them; a longer size keeps them (the rest reads as zeros); size 0 drops them
    api("setattr", inode=f, size=4)
    assert _resident(api, f) == b"helL"
    api("setattr", inode=f, size=100)
    assert _resident(api, f) == b"helL" and api.attr(f)["size"] == 100
    api("setattr", inode=f, size=0)
    assert _resident(api, f) is None
    # deleting the file drops them
    api("commit", inode=f, client="c1", size=1, resident=[{"offset": 0, "data_b64": _b64(b"x")}])
    api("unlink", parent=d, name="small")
    assert http_json("GET", api.url + "/api/status")[1]["resident_files"] == resident_files
    assert api.err("commit", inode=d, client="c1", size=1, resident=[{"offset": 0, "data_b64": _b64(b"x")}]) \
        == "EISDIR"


def test_resident_bytes_stay_when_they_cannot_move_into_a_chunk(api: Api) -> None:
    """A lease of slot 0 first writes the resident bytes into the chunk: with its only chunkserver
    unreachable that fails, the lease answer says try again, and the bytes stay readable."""
    api.register("gone")  # a URL nothing listens on
    f = api.create(1, "small")["inode"]
    api("commit", inode=f, client="c1", size=3, resident=[{"offset": 0, "data_b64": _b64(b"abc")}])
    status, reply = api.call("lease", inode=f, index=0, client="c1")
    assert status == 503 and reply["error"] == "EAGAIN" and "moving to chunk" in reply["message"]
    assert _resident(api, f) == b"abc"
    # the file has a chunk slot now: its bytes go to chunkservers from here on
    assert api.err("commit", inode=f, client="c1", size=3, resident=[{"offset": 0, "data_b64": _b64(b"x")}]) \
        == "EXDEV"
    assert _resident(api, f) == b"abc"
    # fsck names that chunk (never read: the resident bytes stand for slot 0), and its repair forgets it
    chunk_id = api("chunks", inode=f)["chunks"][0]["chunk_id"]

    def shadowed(repair: bool) -> list[dict[str, Any]]:
        status, report = http_json("POST", api.url + "/api/admin/fsck", {"path": "/", "repair": repair})
        assert status == 200, report
        return [p for p in report["problems"] if p["kind"] == "shadowed-chunk"]

    [found] = shadowed(repair=False)
    assert (found["inode"], found["chunk_id"], found.get("repaired")) == (f, chunk_id, None)
    [fixed] = shadowed(repair=True)
    assert fixed["repaired"] is True
    assert api("chunks", inode=f)["chunks"] == [] and _resident(api, f) == b"abc" and shadowed(repair=False) == []
    api("commit", inode=f, client="c1", size=3, resident=[{"offset": 0, "data_b64": _b64(b"x")}])  # kept again
    assert _resident(api, f) == b"xbc"


def test_lease_spreads_and_no_room(api: Api) -> None:
    assert api.err("lease", inode=api.create(1, "early")["inode"], index=0, client="c") == "ENOSPC"
    a = api.register("a", capacity=10 * GiB, used=0)
    b = api.register("b", capacity=10 * GiB, used=0)
    f = api.create(1, "f", goal=1)["inode"]
    first = api("lease", inode=f, index=0, client="c")["servers"]
    second = api("lease", inode=f, index=1, client="c")["servers"]
    assert {first[0]["id"], second[0]["id"]} == {a, b}  # a placement counts before the next heartbeat
    g = api.create(1, "g")["inode"]
    assert len(api("lease", inode=g, index=0, client="c")["servers"]) == 2  # goal 3, only 2 servers
    for uuid in ("a", "b"):
        api.register(uuid, capacity=10 * GiB, used=10 * GiB, free=0)
    assert api.err("lease", inode=f, index=2, client="c") == "ENOSPC"
    # an existing chunk is still writable on full servers (in place); with every replica excluded: EIO
    assert api("lease", inode=f, index=0, client="c")["version"] == 1
    assert api.err("lease", inode=f, index=0, client="c", exclude=[a, b]) == "EIO"


def test_report_drops_replica(api: Api) -> None:
    s1, s2 = api.register("s1"), api.register("s2")
    f = api.create(1, "f")["inode"]
    lease = api("lease", inode=f, index=0, client="c")
    api("commit", inode=f, client="c", size=100)
    api("report", chunk_id=lease["chunk_id"], server_id=s1, version=0, problem="corrupt")  # out of date
    assert len(api("chunks", inode=f)["chunks"][0]["servers"]) == 2
    api("report", chunk_id=lease["chunk_id"], server_id=s1, version=1, problem="corrupt")
    assert [s["id"] for s in api("chunks", inode=f)["chunks"][0]["servers"]] == [s2]
    assert api.heartbeat(s1)["delete"] == [{"chunk_id": lease["chunk_id"], "version": 1}]
    assert api.err("report", chunk_id=lease["chunk_id"], server_id=s1, version=1, problem="bad") == "EINVAL"
    api("report", chunk_id=10**9, server_id=s1, version=1, problem="missing")  # unknown: ignored


def test_heartbeat_garbage_after_unlink(api: Api) -> None:
    ids = [api.register(f"s{i}") for i in range(3)]
    f = api.create(1, "f")["inode"]
    l0 = api("lease", inode=f, index=0, client="c")
    l1 = api("lease", inode=f, index=1, client="c")
    api("commit", inode=f, client="c", size=CHUNK + 10)
    for sid in ids:
        assert api.heartbeat(sid) == {"delete": [], "reregister": False}
    api("unlink", parent=1, name="f")
    expected = sorted([(l0["chunk_id"], 1), (l1["chunk_id"], 1)])
    for sid in ids:
        delete = api.heartbeat(sid)["delete"]
        assert sorted((d["chunk_id"], d["version"]) for d in delete) == expected
        assert api.heartbeat(sid)["delete"] == []  # told once
    assert api.heartbeat(10**6) == {"delete": [], "reregister": True}
    # a deleted file's leases are gone: committing to it fails
    assert api.err("commit", inode=f, client="c", size=1) == "ENOENT"


def test_register_reconciles_chunk_report(api: Api) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sid = api.register("cs", url=url)
    other = api.register("other")
    f = api.create(1, "f", goal=2)["inode"]
    chunk_ids = [api("lease", inode=f, index=i, client="c")["chunk_id"] for i in range(4)]
    api("commit", inode=f, client="c", size=4 * CHUNK)
    bumped = api("lease", inode=f, index=3, client="c2", exclude=[])  # version 2 on both servers
    assert bumped["version"] == 2
    report = [
        {"chunk_id": chunk_ids[0], "version": 1, "length": 10, "pending": False},  # good
        {"chunk_id": chunk_ids[1], "version": 1, "length": 10, "pending": True},  # unfinished write
        # chunk_ids[2]: missing from the disk
        {"chunk_id": chunk_ids[3], "version": 1, "length": 10, "pending": False},  # older than the master's
        {"chunk_id": 999_999, "version": 4, "length": 10, "pending": False},  # unknown
    ]
    assert api.register("cs", url=url, chunks=report) == sid  # same uuid, same id
    delete = api.heartbeat(sid)["delete"]
    assert sorted((d["chunk_id"], d["version"]) for d in delete) == sorted(
        [(chunk_ids[1], 1), (chunk_ids[3], 1), (999_999, 4)])
    holders = {c["index"]: [s["id"] for s in c["servers"]] for c in api("chunks", inode=f)["chunks"]}
    assert holders == {0: [sid, other] if holders[0][0] == sid else [other, sid], 1: [other], 2: [other],
                       3: [other]}
    assert api.heartbeat(other)["delete"] == []


def test_truncate_drops_chunks_and_failed_replicas(api: Api) -> None:
    ids = [api.register(f"s{i}") for i in range(3)]  # fake URLs: truncate calls fail
    f = api.create(1, "f")["inode"]
    leases = [api("lease", inode=f, index=i, client="c") for i in range(3)]
    api("commit", inode=f, client="c", size=3 * CHUNK)
    started = time.monotonic()
    attr = api("setattr", inode=f, size=CHUNK + 100)["attr"]
    assert time.monotonic() - started < 5
    assert attr["size"] == CHUNK + 100
    chunks = api("chunks", inode=f)["chunks"]
    assert [c["index"] for c in chunks] == [0, 1]
    assert chunks[0]["version"] == 1 and len(chunks[0]["servers"]) == 3
    assert chunks[1]["version"] == 2 and chunks[1]["servers"] == []  # every truncate failed: dropped
    for sid in ids:
        delete = sorted((d["chunk_id"], d["version"]) for d in api.heartbeat(sid)["delete"])
        assert delete == sorted([(leases[2]["chunk_id"], 1), (leases[1]["chunk_id"], 2)])
    # an aligned shrink cuts nothing, it drops whole chunks
    assert api("setattr", inode=f, size=CHUNK)["attr"]["size"] == CHUNK
    assert [c["index"] for c in api("chunks", inode=f)["chunks"]] == [0]
    # the lease on a dropped slot is gone: a new chunk is placed there
    assert api("lease", inode=f, index=1, client="c")["chunk_id"] > leases[2]["chunk_id"]


def test_dead_server(tmp_path: Path) -> None:
    cluster = _start(tmp_path, "--dead-timeout", "1")
    try:
        api = Api(cluster)
        sid = api.register("s")
        f = api.create(1, "f", goal=1)["inode"]
        api("lease", inode=f, index=0, client="c")
        api("commit", inode=f, client="c", size=5)
        assert api("statfs")["servers_live"] == 1
        time.sleep(1.6)
        assert api("statfs")["servers_live"] == 0
        assert api("chunks", inode=f)["chunks"][0]["servers"] == []
        assert api.err("lease", inode=f, index=0, client="c2") == "EIO"
        assert api.err("lease", inode=f, index=1, client="c2") == "ENOSPC"
        assert api.heartbeat(sid)["reregister"] is True
        _, body = http_json("GET", cluster.master_url + "/api/status")
        assert body["servers"][0]["state"] == "dead"
        api.register("s")
        assert api("statfs")["servers_live"] == 1
        assert api.heartbeat(sid)["reregister"] is False
    finally:
        cluster.stop()


# -- durability -----------------------------------------------------------------------------------

def test_survives_kill_9(cluster: Cluster, api: Api) -> None:
    sid = api.register("s")
    d = api.mkdir(1, "d")
    f = api.create(d["inode"], "f", goal=1)
    api("symlink", parent=1, name="l", target="d/f", uid=0, gid=0)
    api("setxattr", inode=f["inode"], name="user.k", value_b64=base64.b64encode(b"v").decode())
    lease = api("lease", inode=f["inode"], index=0, client="c")
    api("commit", inode=f["inode"], client="c", size=777)
    doomed = api.create(1, "doomed", goal=1)["inode"]
    gone = api("lease", inode=doomed, index=0, client="c")
    api("unlink", parent=1, name="doomed")
    assert cluster.master is not None
    cluster.master.kill()
    cluster.start_master()

    assert api("resolve", path="/l", follow=True)["attr"]["inode"] == f["inode"]
    attr = api.attr(f["inode"])
    assert attr["size"] == 777 and attr["goal"] == 1
    assert base64.b64decode(api("getxattr", inode=f["inode"], name="user.k")["value_b64"]) == b"v"
    assert api.attr(1)["nlink"] == 3
    # chunkservers are not live until they heartbeat again; their replicas are remembered
    assert api("statfs")["servers_live"] == 0
    assert api.heartbeat(sid) == {"delete": [{"chunk_id": gone["chunk_id"], "version": 1}], "reregister": False}
    [loc] = api("chunks", inode=f["inode"])["chunks"]
    assert loc["chunk_id"] == lease["chunk_id"] and [s["id"] for s in loc["servers"]] == [sid]
    # chunk ids and inode numbers are never reused
    g = api.create(1, "g", goal=1)
    assert g["inode"] > doomed
    assert api("lease", inode=g["inode"], index=0, client="c")["chunk_id"] > gone["chunk_id"]
