"""POSIX permissions enforced by the master for key holders: through the client library (one key per
uid), the gateway and the `dfs` CLI. Errors are Linux's: EACCES for mode bits, EPERM for owner-only."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from dfs.auth import GID_HEADER, GROUPS_HEADER, UID_HEADER, auth_headers
from dfs.client.sync import SyncClient
from dfs.errors import DfsError
from tests.harness import Cluster, http_json

ALICE, BOB, STAFF = 1000, 1001, 5000


@pytest.fixture(scope="module")
def users(cluster: Cluster) -> Iterator[dict[str, SyncClient]]:
    keys = {"alice": cluster.create_key("alice", ALICE, ALICE, "rw"),
            "bob": cluster.create_key("bob", BOB, BOB, "rw", groups=(STAFF,)),
            "reader": cluster.create_key("reader", ALICE, ALICE, "ro"),
            "proxy": cluster.create_key("mount", 0, 0, "proxy")}
    clients = {"root": SyncClient(cluster.master_url)}
    try:
        for name, key in keys.items():
            clients[name] = SyncClient(cluster.master_url, key=key)
        root = clients["root"]
        root.makedir("/perm", mode=0o777)
        root.setattr(root.stat("/perm").inode, mode=0o777)  # whatever the test's umask
        yield clients
    finally:
        for client in clients.values():
            client.shutdown()


def code_of(call: object, *args: object, **kwargs: object) -> int:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except DfsError as err:
        return err.errno
    return 0


def write(client: SyncClient, path: str, data: bytes, mode: int = 0o644) -> None:
    with client.open(path, create=True, mode=mode) as handle:
        handle.write(0, data)
    client.setattr(client.stat(path).inode, mode=mode)


@pytest.fixture(scope="module")
def secret(users: dict[str, SyncClient]) -> str:
    """/perm/secret: alice's, 0600."""
    write(users["alice"], "/perm/secret", b"alice only", mode=0o600)
    return "/perm/secret"


def test_new_files_belong_to_the_caller(users: dict[str, SyncClient], secret: str) -> None:
    attr = users["alice"].stat(secret)
    assert (attr.uid, attr.gid, stat.S_IMODE(attr.mode)) == (ALICE, ALICE, 0o600)
    made, _ = users["bob"].create(users["bob"].stat("/perm").inode, "claims-root", uid=0, gid=0)
    assert (made.uid, made.gid) == (BOB, BOB)  # a user cannot make files for others
    folder = users["bob"].stat("/perm").inode
    assert code_of(users["bob"].create, folder, "dev", stat.S_IFCHR | 0o600, rdev=259) == errno.EPERM
    fifo, _ = users["bob"].create(folder, "fifo", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(fifo.mode) and fifo.uid == BOB


def test_private_file_is_private(users: dict[str, SyncClient], secret: str) -> None:
    alice, bob = users["alice"], users["bob"]
    with alice.open(secret) as handle:
        assert handle.read(0, 100) == b"alice only"
    with bob.open(secret) as handle:  # stat needs no permission on the file; its bytes do
        assert code_of(handle.read, 0, 100) == errno.EACCES
    assert code_of(bob.truncate, secret, 0) == errno.EACCES
    assert code_of(bob.setxattr, bob.stat(secret).inode, "user.x", b"1") == errno.EACCES
    assert code_of(bob.getattr, bob.stat(secret).inode, os.R_OK) == errno.EACCES
    assert alice.getattr(alice.stat(secret).inode, os.R_OK | os.W_OK).size == 10
    assert users["root"].stat(secret).size == 10


def test_private_file_through_the_gateway(cluster: Cluster, users: dict[str, SyncClient], secret: str) -> None:
    assert cluster.gateway is not None
    bob_key = users["bob"].key

    def get(key: str) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{cluster.gateway.url}/fs{secret}", headers=auth_headers(key))  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    status, body = get(bob_key)
    assert status == 403 and b"EACCES" in body and b"alice only" not in body
    assert get(users["alice"].key) == (200, b"alice only")


def test_private_file_through_the_cli(cluster: Cluster, users: dict[str, SyncClient], secret: str) -> None:
    def cat(key: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DFS_MASTER": cluster.master_url, "DFS_KEY": key}
        return subprocess.run([sys.executable, "-m", "dfs", "cat", secret], capture_output=True, env=env,
                              timeout=60, check=False)

    denied = cat(users["bob"].key)
    assert denied.returncode == 1 and denied.stdout == b""
    assert b"Permission denied" in denied.stderr and secret.encode() in denied.stderr
    allowed = cat(users["alice"].key)
    assert allowed.returncode == 0 and allowed.stdout == b"alice only"


def test_search_permission(users: dict[str, SyncClient]) -> None:
    alice, bob = users["alice"], users["bob"]
    alice.makedir("/perm/private")
    alice.setattr(alice.stat("/perm/private").inode, mode=0o700)
    write(alice, "/perm/private/f", b"x", mode=0o644)
    folder = alice.stat("/perm/private").inode
    assert code_of(bob.stat, "/perm/private/f") == errno.EACCES
    assert code_of(bob.lookup, folder, "f") == errno.EACCES
    assert code_of(lambda: list(bob.readdir(folder))) == errno.EACCES
    assert code_of(bob.create, folder, "g") == errno.EACCES
    alice.setattr(folder, mode=0o711)  # search without read: names known work, listing does not
    assert bob.stat("/perm/private/f").size == 1
    assert code_of(lambda: list(bob.readdir(folder))) == errno.EACCES
    assert code_of(bob.create, folder, "g") == errno.EACCES  # no write


def test_sticky_folder(users: dict[str, SyncClient]) -> None:
    root, alice, bob = users["root"], users["alice"], users["bob"]
    root.makedir("/perm/tmp")
    tmp = root.stat("/perm/tmp").inode
    root.setattr(tmp, mode=0o1777)
    write(alice, "/perm/tmp/alices", b"a")
    write(bob, "/perm/tmp/bobs", b"b")
    assert code_of(bob.unlink, tmp, "alices") == errno.EPERM
    assert code_of(bob.rename, "/perm/tmp/alices", "/perm/tmp/mine") == errno.EPERM
    assert code_of(bob.rename, "/perm/tmp/bobs", "/perm/tmp/alices") == errno.EPERM  # replacing hers
    bob.rename("/perm/tmp/bobs", "/perm/tmp/bobs2")
    bob.unlink(tmp, "bobs2")
    alice.unlink(tmp, "alices")
    assert [name for name, _ in root.readdir(tmp)] == []


def test_owner_only_changes(users: dict[str, SyncClient]) -> None:
    root, alice, bob = users["root"], users["alice"], users["bob"]
    write(alice, "/perm/shared", b"s", mode=0o666)
    inode = alice.stat("/perm/shared").inode
    assert code_of(bob.setattr, inode, mode=0o777) == errno.EPERM
    assert code_of(bob.setattr, inode, uid=BOB) == errno.EPERM
    assert code_of(alice.setattr, inode, uid=BOB) == errno.EPERM  # giving files away is root's
    assert code_of(alice.setattr, inode, gid=STAFF) == errno.EPERM  # not her group
    assert code_of(bob.setattr, inode, atime_ns=1, mtime_ns=1) == errno.EPERM  # explicit times: owner only
    bob.setattr(inode, atime_now=True, mtime_now=True)  # "touch" needs write permission only
    bob.setattr(inode, size=0)
    alice.setattr(inode, mode=0o640)
    assert code_of(bob.setattr, inode, atime_now=True) == errno.EACCES
    root.setattr(inode, uid=BOB, gid=STAFF)
    bob.setattr(inode, gid=BOB)  # the owner may pick a group of his
    bob.setattr(inode, mode=0o2755)
    assert stat.S_IMODE(bob.getattr(inode).mode) == 0o2755
    root.setattr(inode, gid=ALICE)
    bob.setattr(inode, mode=0o2755)  # not in the file's group: set-group-ID is dropped, as Linux does
    assert stat.S_IMODE(bob.getattr(inode).mode) == 0o755
    root.setattr(inode, mode=0o4755)
    bob.setattr(inode, gid=STAFF)  # a chown by a user drops set-user-ID
    assert stat.S_IMODE(bob.getattr(inode).mode) == 0o755


def test_a_writer_may_drop_set_id_bits_only(users: dict[str, SyncClient]) -> None:
    """A write by another user makes the kernel ask a FUSE file system to drop S_ISUID/S_ISGID (a chmod
    as the writer): allowed to whoever may write the file, and nothing more."""
    root, alice, bob = users["root"], users["alice"], users["bob"]
    write(alice, "/perm/setid", b"s", mode=0o666)
    inode = alice.stat("/perm/setid").inode
    root.setattr(inode, mode=0o6666)
    assert code_of(bob.setattr, inode, mode=0o2644) == errno.EPERM  # more than set-id bits
    bob.setattr(inode, mode=0o666)
    assert stat.S_IMODE(bob.getattr(inode).mode) == 0o666
    root.setattr(inode, mode=0o6644)  # bob may not write it: he may not drop the bits either
    assert code_of(bob.setattr, inode, mode=0o644) == errno.EACCES


def test_groups_count(users: dict[str, SyncClient]) -> None:
    root, bob = users["root"], users["bob"]
    write(root, "/perm/staff-only", b"staff", mode=0o640)
    root.setattr(root.stat("/perm/staff-only").inode, gid=STAFF)
    with bob.open("/perm/staff-only") as handle:  # bob's key lists group 5000
        assert handle.read(0, 10) == b"staff"
    with users["alice"].open("/perm/staff-only") as handle:
        assert code_of(handle.read, 0, 10) == errno.EACCES


def test_xattr_namespaces(users: dict[str, SyncClient], secret: str) -> None:
    root, alice = users["root"], users["alice"]
    inode = alice.stat(secret).inode
    alice.setxattr(inode, "user.colour", b"blue")
    assert code_of(alice.setxattr, inode, "trusted.x", b"1") == errno.EPERM
    root.setxattr(inode, "trusted.x", b"1")
    assert alice.listxattr(inode) == ["user.colour"]
    assert sorted(root.listxattr(inode)) == ["trusted.x", "user.colour"]
    assert code_of(alice.getxattr, inode, "trusted.x") == errno.EPERM


def test_read_only_key(users: dict[str, SyncClient], secret: str) -> None:
    reader = users["reader"]  # uid 1000 like alice, but scope ro
    with reader.open(secret) as handle:
        assert handle.read(0, 100) == b"alice only"
    assert code_of(reader.makedir, "/perm/ro-dir") == errno.EACCES
    assert code_of(reader.truncate, secret, 0) == errno.EACCES
    assert users["alice"].stat(secret).size == 10


def test_proxy_acts_for_its_users(cluster: Cluster, users: dict[str, SyncClient], secret: str) -> None:
    proxy = users["proxy"]
    as_bob = proxy.acting_for(BOB, BOB, ())
    as_alice = proxy.acting_for(ALICE, ALICE, ())
    with as_alice.open(secret) as handle:
        assert handle.read(0, 100) == b"alice only"
    with as_bob.open(secret) as handle:
        assert code_of(handle.read, 0, 100) == errno.EACCES
    status, body = http_json("POST", cluster.master_url + "/api/chunks", {"inode": proxy.stat(secret).inode},
                             key=proxy.key, headers={UID_HEADER: str(BOB), GID_HEADER: str(BOB), GROUPS_HEADER: ""})
    assert status == 403 and body["error"] == "EACCES"
    status, body = http_json("POST", cluster.master_url + "/api/getattr", {"inode": 1},
                             key=proxy.key, headers={UID_HEADER: "x", GID_HEADER: "1"})
    assert status == 400 and body["error"] == "EINVAL"
