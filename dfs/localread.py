"""Short-circuit reads: the wire format between a chunkserver and a client on the same host.

A client whose chunkserver runs on its own host (same `host_identity()`, learnt from the
chunkserver's `GET /local`) asks the chunkserver's Unix socket for a chunk, as HDFS clients do with
dfs.client.read.shortcircuit: one request line of JSON `{chunk_id, version, token, start, end}` (the
read token the HTTP GET checks; the bytes the client reads first, which the disk starts on at once).
The reply is one line of JSON; when it is `{"ok": true, ...}` it carries, as SCM_RIGHTS ancillary
data, two O_RDONLY descriptors: the chunk's data file and its meta file, with what the client needs
to verify the bytes itself (`length`, `block_size`, where the digests start in the meta file and
their size). Otherwise it is `{"ok": false, "status", "error", "message"}` (the errors of the HTTP
read). One connection serves any number of requests, one after another.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

from dfs.errors import DfsError

#: Longest request or reply line.
MAX_LINE = 8192
#: Descriptors a reply may carry.
FDS = 2
_ID_FILES = (Path("/etc/machine-id"), Path("/proc/sys/kernel/random/boot_id"))


def host_identity() -> str:
    """What tells this host (and boot) apart from others: a hash of /etc/machine-id and the boot id;
    "" when neither can be read (then nothing is taken for local)."""
    parts = []
    for path in _ID_FILES:
        try:
            parts.append(path.read_text().strip())
        except OSError:
            parts.append("")
    if not any(parts):
        return ""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error_reply(err: DfsError) -> dict[str, Any]:
    return {"ok": False, "status": err.status, **err.to_json()}


def error_of(reply: dict[str, Any]) -> DfsError:
    return DfsError.from_json(int(reply.get("status") or 502), reply)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One reply line and the descriptors that came with it (blocking). ConnectionError when the
    server closed the connection or sent something else than a line of JSON."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_LINE, FDS)
    try:
        while not data.endswith(b"\n"):
            if not data or len(data) >= MAX_LINE:
                raise ConnectionError("short-circuit reply cut off" if not data else "short-circuit reply too long")
            more = sock.recv(MAX_LINE - len(data))
            if not more:
                raise ConnectionError("short-circuit reply cut off")
            data += more
        try:
            reply = json.loads(data)
        except ValueError:
            raise ConnectionError("short-circuit reply is not JSON") from None
        if not isinstance(reply, dict):
            raise ConnectionError("short-circuit reply is not an object")
    except BaseException:
        for fd in fds:
            socket.close(fd)
        raise
    return reply, fds
