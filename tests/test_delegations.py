"""Folder delegations (master/delegations.py, master/batch.py, dfs/client/dirops.py): a client makes
changes in its delegated folders on its own; every other client sees them as soon as it looks, the
master checks each change, and a holder that is gone or silent loses its folders in bounded time."""

from __future__ import annotations

import errno
import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from dfs.client import Client
from dfs.client import dirops as dirops_module
from dfs.client.channel import run_inline
from dfs.client.dirops import DirOps, Identity
from dfs.client.sync import LoopThread
from dfs.errors import DfsError
from dfs.protocol import SESSION_HEADER, Attr
from tests.harness import TEST_ADMIN_KEY, Cluster, http_json, inline_client

RECALL_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(root=Path(tmp_path_factory.mktemp("delegations")), master_args=["--recall-timeout",
                                                                               str(RECALL_TIMEOUT)])
    try:
        c.start(chunkservers=0, gateway=False)
        yield c
    finally:
        c.stop()


class Holder:
    """A client with DirOps, as a mount has it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        client.open_channels()
        assert client.channels is not None
        self.view = client.inline()
        self.dirops = DirOps(client.channels, self.view.master.headers, 5.0)
        client.channels.before_call = self.dirops
        self.dirops.start()
        self.who = Identity(0, 0)
        deadline = time.monotonic() + 10
        while not self.dirops.listening or not self.dirops._numbers:
            assert time.monotonic() < deadline, "no recalls call or no inode numbers"
            time.sleep(0.01)
        time.sleep(0.05)  # the first recalls call has reached the master

    def folder(self, name: str) -> Attr:
        attr, delegated = run_inline(self.view.mkdir_delegated(1, name, 0o755))
        assert delegated
        self.dirops.adopt(attr)
        return attr

    def make(self, parent: int, name: str, mode: int = stat.S_IFREG | 0o640) -> Attr:
        attr = self.dirops.make(parent, name, mode, self.who, f"/{name}")
        assert attr is not None
        return attr


@pytest.fixture
def holder(cluster: Cluster, loop: LoopThread) -> Iterator[Holder]:
    client = loop.run(Client(cluster.master_url, key=TEST_ADMIN_KEY, retry_for=5).start())
    made = Holder(client)
    try:
        yield made
    finally:
        made.dirops.close()
        loop.run(client.close())


@pytest.fixture
def other(cluster: Cluster, loop: LoopThread) -> Iterator[Client]:
    with inline_client(cluster.master_url, loop) as client:
        yield client


@pytest.fixture
def slow_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changes stay pending until something sends them (a recall, another call of the holder)."""
    monkeypatch.setattr(dirops_module, "FLUSH_AFTER", 30.0)


def test_changes_made_alone_reach_the_master_as_made(holder: Holder, other: Client) -> None:
    folder = holder.folder("made-alone")
    files = [holder.make(folder.inode, f"f{i}") for i in range(50)]
    sub = holder.make(folder.inode, "sub", stat.S_IFDIR | 0o750)
    inner = holder.make(sub.inode, "inner")
    assert holder.dirops.folder(sub.inode) is not None  # a folder made in a delegated one is delegated too
    assert holder.dirops.remove(folder.inode, "f0", [], holder.who, "/f0") is not None
    run_inline(holder.view.getattr(folder.inode))  # any other call of the holder sends what is pending first
    seen = {name: attr for name, attr in run_inline(_listing(other, folder.inode))}
    assert sorted(seen) == sorted([f"f{i}" for i in range(1, 50)] + ["sub"])
    for made in files[1:]:
        assert seen[f"f{files.index(made)}"] == made  # inode number, mode, owner and times as the holder said
    assert seen["sub"].nlink == 2 and stat.S_ISDIR(seen["sub"].mode)
    assert run_inline(other.lookup(sub.inode, "inner")) == inner
    assert run_inline(other.getattr(folder.inode)).nlink == 3


def test_another_client_sees_pending_changes_at_once(holder: Holder, other: Client, slow_flush: None) -> None:
    folder = holder.folder("recalled")
    made = holder.make(folder.inode, "pending")
    started = time.monotonic()
    assert run_inline(other.lookup(folder.inode, "pending")) == made  # recalled, sent, then answered
    assert time.monotonic() - started < RECALL_TIMEOUT
    assert holder.dirops.folder(folder.inode) is None  # given back: the holder asks the master again
    assert holder.dirops.make(folder.inode, "later", stat.S_IFREG | 0o644, holder.who, "/later") is None


def test_exclusive_create_elsewhere_meets_a_pending_create(holder: Holder, other: Client, slow_flush: None) -> None:
    folder = holder.folder("exclusive")
    holder.make(folder.inode, "x")
    with pytest.raises(DfsError) as err:
        run_inline(other.create(folder.inode, "x", 0o644, exclusive=True))
    assert err.value.errno == errno.EEXIST


def test_a_read_that_shows_a_delegated_folder_waits_for_it(holder: Holder, other: Client, slow_flush: None) -> None:
    folder = holder.folder("shown")
    holder.make(folder.inode, "d1", stat.S_IFDIR | 0o755)
    holder.make(folder.inode, "d2", stat.S_IFDIR | 0o755)
    # the root's listing shows the folder: its nlink must count the pending subfolders
    entries = dict(run_inline(_listing(other, 1)))
    assert entries["shown"].nlink == 4


def test_batch_checks_every_change(holder: Holder, cluster: Cluster) -> None:
    folder = holder.folder("checked")
    holder.make(folder.inode, "taken")
    run_inline(holder.view.getattr(folder.inode))  # sent
    number = holder.dirops._numbers.popleft()
    now = time.time_ns()
    reply = run_inline(holder.view.master.call("batch", changes=[
        {"op": "create", "parent": folder.inode, "name": "taken", "inode": number, "time_ns": now, "mode": 0o100644},
        {"op": "create", "parent": folder.inode, "name": "stolen", "inode": 1, "time_ns": now, "mode": 0o100644},
        {"op": "unlink", "parent": folder.inode, "name": "absent", "time_ns": now},
        {"op": "mkdir", "parent": folder.inode, "name": "unreserved", "inode": number + 10**9, "time_ns": now,
         "mode": 0o755},
        {"op": "unlink", "parent": folder.inode, "name": "taken", "time_ns": now},
    ], release=[]))
    errors = [answer.get("error") for answer in reply["answers"]]
    assert errors == ["EEXIST", "EINVAL", "ENOENT", "EINVAL", None]
    with pytest.raises(DfsError) as err:
        run_inline(holder.view.lookup(folder.inode, "taken"))
    assert err.value.errno == errno.ENOENT


def test_a_silent_holder_loses_the_folder_in_bounded_time(cluster: Cluster, other: Client) -> None:
    """A session that asked for recalls once and then never gives the folder back."""
    ws, session = _raw_session(cluster)
    try:
        waiting = threading.Thread(target=_call, args=(ws, session, "recalls", {"wait": 30}), daemon=True)
        waiting.start()
        time.sleep(0.2)
        folder = _raw_call(cluster, session, "mkdir", {"parent": 1, "name": "silent", "mode": 0o755,
                                                       "delegate": True})
        assert folder["delegated"]
        inode = folder["attr"]["inode"]
        started = time.monotonic()
        with pytest.raises(DfsError) as err:
            run_inline(other.lookup(inode, "nothing"))
        assert err.value.errno == errno.ENOENT
        assert RECALL_TIMEOUT - 0.2 <= time.monotonic() - started < RECALL_TIMEOUT + 3
        waiting.join(5)
        started = time.monotonic()
        run_inline(other.lookup(1, "silent"))  # revoked: no wait any more
        assert time.monotonic() - started < 1
    finally:
        ws.close()


def test_a_holder_whose_connection_closes_loses_its_folders(cluster: Cluster, other: Client) -> None:
    ws, session = _raw_session(cluster)
    ws.send(json.dumps({"id": 1, "op": "recalls", "headers": _headers(session), "body": {"wait": 30}}))
    time.sleep(0.2)
    folder = _raw_call(cluster, session, "mkdir", {"parent": 1, "name": "closed", "mode": 0o755, "delegate": True})
    assert folder["delegated"]
    ws.close()
    time.sleep(2.5)  # the master notices within a second or two
    started = time.monotonic()
    with pytest.raises(DfsError):
        run_inline(other.lookup(folder["attr"]["inode"], "nothing"))
    assert time.monotonic() - started < 1


def test_no_delegation_without_listening_for_recalls(cluster: Cluster) -> None:
    _, session = _raw_session(cluster)
    folder = _raw_call(cluster, session, "mkdir", {"parent": 1, "name": "deaf", "mode": 0o755, "delegate": True})
    assert folder["delegated"] is False


# ---- helpers ------------------------------------------------------------------------------------

async def _listing(client: Client, inode: int) -> list[tuple[str, Attr]]:
    return [entry async for entry in client.readdir(inode)]


def _headers(session: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_ADMIN_KEY}", SESSION_HEADER: session}


def _raw_session(cluster: Cluster) -> tuple[websocket.WebSocket, str]:
    ws = websocket.create_connection(cluster.master_url.replace("http", "ws", 1) + "/api/channel",
                                     header=[f"Authorization: Bearer {TEST_ADMIN_KEY}"], timeout=40)
    return ws, f"raw-{time.monotonic_ns()}"


def _call(ws: websocket.WebSocket, session: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps({"id": 1, "op": op, "headers": _headers(session), "body": body}))
    answer = json.loads(ws.recv())
    assert answer["status"] == 200, answer
    return dict(answer["body"])


def _raw_call(cluster: Cluster, session: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
    ws, _ = _raw_session(cluster)
    try:
        return _call(ws, session, op, body)
    finally:
        ws.close()


def test_only_a_proxy_key_sends_other_users_changes(cluster: Cluster) -> None:
    status, made = http_json("POST", f"{cluster.master_url}/api/admin/keys/create",
                             {"name": f"rw-{time.monotonic_ns()}", "uid": 1000, "gid": 1000, "scope": "rw"})
    assert status == 200, made
    change = {"op": "unlink", "parent": 1, "name": "anything", "time_ns": time.time_ns(),
              "as": {"uid": 0, "gid": 0}}
    status, body = http_json("POST", f"{cluster.master_url}/api/batch", {"changes": [change]}, key=made["key"])
    assert (status, body["error"]) == (403, "EACCES"), body
    status, body = http_json("POST", f"{cluster.master_url}/api/batch",
                             {"changes": [{"op": "rename", "parent": 1, "name": "x"}]})
    assert (status, body["error"]) == (400, "EINVAL"), body
    status, body = http_json("POST", f"{cluster.master_url}/api/batch", {"changes": [{"op": "create", "name": "x"}]})
    assert (status, body["error"]) == (400, "EINVAL"), body  # no parent
    status, body = http_json("POST", f"{cluster.master_url}/api/recalls", {"wait": 0})
    assert (status, body["error"]) == (400, "EINVAL"), body  # no session header
