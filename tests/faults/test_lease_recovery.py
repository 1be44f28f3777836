"""Lease recovery: a client that dies mid-write leaves every replica pending; once its lease expires the
master makes the chunk readable again (first replica of the chain, version bumped) and restores the goal."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from dfs.client.sync import SyncClient
from dfs.protocol import CHAIN_HEADER
from tests.faults.helpers import MiB, at_goal, check_placement, held, locations, pattern, upload, wait_until
from tests.harness import Cluster, http_json


def _die_mid_write(url: str, chunk_id: int, version: int, token: str, chain: list[str], body: bytes,
                   sent: int) -> None:
    """A PUT that announces `len(body)` bytes, sends `sent` of them, and vanishes (as a killed client)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        head = (f"PUT /chunks/{chunk_id}?version={version}&offset=0 HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n"
                f"{CHAIN_HEADER}: {','.join(chain)}\r\nX-DFS-Token: {token}\r\n\r\n")
        sock.sendall(head.encode() + body[:sent])
        time.sleep(0.5)  # let the bytes go down the chain before the connection drops
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST


def test_writer_dies_mid_write(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(goal=3, master_args=["--lease-seconds", "2"])
    cluster.start(chunkservers=3, gateway=False)
    old = pattern(MiB, 30)
    new = pattern(MiB, 31)
    with SyncClient(cluster.master_url, retry_for=20) as fs:
        upload(fs, "/f", old)
        inode = fs.stat("/f").inode
        code, lease = http_json("POST", cluster.master_url + "/api/lease", {"inode": inode, "index": 0,
                                                                            "client": "doomed"})
        assert code == 200, lease
        chain = [s["url"] for s in lease["servers"]]
        _die_mid_write(chain[0], lease["chunk_id"], lease["version"], lease["token"], chain[1:], new, 600_000)
        # every replica is left pending at the lease's version: unreadable as it is
        wait_until("the broken write to leave every replica pending", lambda: all(
            held(s).get(lease["chunk_id"], {}).get("pending") for s in cluster.chunkservers), 10)

        wait_until("the chunk recovered at a newer version and back at goal", lambda: (
            locations(fs, "/f")[0]["version"] > lease["version"] and at_goal(fs, "/f", 3)), 30)
        assert "broke off on every replica" in cluster.master.log()
        got = b"".join(fs.download("/f"))
        assert len(got) == MiB
        cut = next((i for i in range(MiB) if got[i] != new[i]), MiB)
        assert cut > 0 and got[cut:] == old[cut:], f"not the new bytes up to {cut} then the old ones"
        # every replica is the same, complete, at the new version
        version = locations(fs, "/f")[0]["version"]
        infos = {(h["version"], h["pending"], h["length"]) for h in
                 (held(s)[lease["chunk_id"]] for s in cluster.chunkservers)}
        assert infos == {(version, False, MiB)}
    assert check_placement(cluster) == []
