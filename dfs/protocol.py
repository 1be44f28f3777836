"""Wire models and constants shared by master, chunkservers and clients (see docs/PROTOCOL.md)."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MASTER_PORT = 9400
CHUNKSERVER_PORT = 9401
GATEWAY_PORT = 9480
DEFAULT_MASTER_URL = f"http://127.0.0.1:{MASTER_PORT}"

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_GOAL = 3
MAX_GOAL = 16
MAX_FILE_SIZE = 1 << 50  # 1 PiB
#: Files written whole up to this size keep their bytes in the master's database (master/resident.py).
DEFAULT_RESIDENT_MAX = 64 * 1024
#: The most `--resident-max` may be: a commit carries the bytes in base64 inside a JSON body.
MAX_RESIDENT = 1024 * 1024
ROOT_INODE = 1

#: Header of a chunk write naming the rest of the replication chain (comma-separated URLs).
CHAIN_HEADER = "X-DFS-Chain"
#: A client's session id on every master call (its `client_id`): whose folder delegations a call
#: may use (docs/PROTOCOL.md "Folder delegations").
SESSION_HEADER = "X-DFS-Client"

#: Largest piece a client sends in one chunk write request; it keeps this much to retry with.
WRITE_PIECE = 8 * 1024 * 1024

#: Slice size for streaming bodies (see DESIGN: ~1 MiB slices are fastest here).
STREAM_SLICE = 1024 * 1024


@dataclass(slots=True)
class Attr:
    """Attributes of one inode, as the master sends them. `mode` includes the file type bits."""

    inode: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    goal: int = DEFAULT_GOAL
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def kind(self) -> str:
        return file_kind(self.mode)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attr:
        return cls(**{k: data[k] for k in _ATTR_FIELDS if k in data})


_ATTR_FIELDS = tuple(Attr.__dataclass_fields__)


def inherited(folder_mode: int, folder_gid: int, mode: int, gid: int, caller_uid: int,
              in_group: Callable[[int], bool]) -> tuple[int, int]:
    """The mode and group of a new inode in a folder: a setgid folder hands its group down (and, to
    folders, the bit); a user outside that group loses the setgid bit of a file. The master and a
    client creating in a delegated folder (docs/PROTOCOL.md "Folder delegations") both decide it here."""
    if folder_mode & stat.S_ISGID:
        gid = folder_gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
        elif caller_uid and not in_group(folder_gid):
            mode &= ~stat.S_ISGID
    return mode, gid


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISBLK, "blockdev"),
    ):
        if test(mode):
            return name
    return "unknown"


@dataclass(slots=True)
class Replica:
    id: int
    url: str


@dataclass(slots=True)
class ChunkLocation:
    """Where one chunk slot of a file lives; `chunk_id` 0 means a hole (reads as zeros)."""

    index: int
    chunk_id: int
    version: int
    servers: list[Replica] = field(default_factory=list)
    token: str = field(default="", repr=False)  # read token (dfs/tokens.py), sent to the chunkservers

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkLocation:
        return cls(
            index=data["index"],
            chunk_id=data["chunk_id"],
            version=data["version"],
            servers=[Replica(s["id"], s["url"]) for s in data.get("servers", [])],
            token=str(data.get("token") or ""),
        )


@dataclass(slots=True)
class Lease:
    """Permission to write one chunk at `version` through `servers` (in chain order)."""

    inode: int
    index: int
    chunk_id: int
    version: int
    servers: list[Replica]
    expires_in: float
    token: str = field(default="", repr=False)  # write token for the chain
    read_token: str = field(default="", repr=False)  # to read back what was written

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        return cls(
            inode=data["inode"],
            index=data["index"],
            chunk_id=data["chunk_id"],
            version=data["version"],
            servers=[Replica(s["id"], s["url"]) for s in data["servers"]],
            expires_in=float(data["expires_in"]),
            token=str(data.get("token") or ""),
            read_token=str(data.get("read_token") or ""),
        )
