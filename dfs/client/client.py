"""The client library: the one way the CLI, the gateway and the mount reach the cluster.

Inode-level calls mirror the master's API (what FUSE needs); path-level calls (`stat`, `listdir`,
`makedirs`, `remove`, `rename`, `upload`, `download`) are built on them for the CLI and gateway.
Everything is asyncio over one pooled aiohttp session; `dfs.client.sync.SyncClient` wraps it for
threads.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import errno
import os
import secrets
import stat
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp

from dfs import tls
from dfs.auth import auth_headers, find_key, identity_headers
from dfs.client.channel import ChannelMaster, Channels
from dfs.client.chunkio import READ_TIMEOUT, ChunkIO
from dfs.client.dirops import DirOps
from dfs.client.files import FileHandle
from dfs.client.localread import TIMEOUT as LOCAL_TIMEOUT
from dfs.client.localread import LocalReads
from dfs.client.rpc import MasterClient
from dfs.errors import DfsError
from dfs.names import parent_and_name, split_path
from dfs.protocol import ROOT_INODE, SESSION_HEADER, Attr, ChunkLocation, Lease, Replica

READDIR_PAGE = 1000


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Client:
    """`key`: the access key sent to the master (default: `--key` sources of dfs.auth.find_key, i.e.
    $DFS_KEY or $DFS_KEY_FILE; "" for none). `acting_for` and `with_key` give views of one client
    that call as someone else over the same connections."""

    def __init__(self, master_url: str, *, retry_for: float = 30.0, uid: int | None = None,
                 gid: int | None = None, read_timeout: float | None = READ_TIMEOUT, key: str | None = None,
                 short_circuit: bool = True) -> None:
        self.master_url = master_url.rstrip("/")
        self.key = find_key() if key is None else key
        self._headers = auth_headers(self.key)
        self._owner = True  # False for views: they share the session and never close it
        self.retry_for = retry_for
        self.read_timeout = read_timeout  # seconds a replica may stall a read before the next is tried
        self.client_id = uuid.uuid4().hex
        self._headers[SESSION_HEADER] = self.client_id
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.umask = _umask()
        self.chunk_size = 0
        self.resident_max = 0  # files written whole up to this size may keep their bytes in the master
        self._session: aiohttp.ClientSession | None = None
        self.channels: Channels | None = None  # open_channels(): per-thread WebSockets for inline()
        #: a mount's changes in its delegated folders (dfs/client/dirops.py); files' first commits join them
        self.dirops: DirOps | None = None
        #: short-circuit reads of replicas on this host (dfs/client/localread.py); None: HTTP only
        self.local_reads: LocalReads | None = LocalReads(min(LOCAL_TIMEOUT, read_timeout or LOCAL_TIMEOUT)) \
            if short_circuit else None

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Client:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300,
                                             ssl=tls.client_context())
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
            self.master = MasterClient(self._session, self.master_url, self.retry_for, self._headers)
            self.chunkio = ChunkIO(self._session, self._report_bad, self.read_timeout, self.local_reads)
            try:
                self.chunk_size, self.resident_max = await self._sizes()
            except BaseException:
                await self.close()
                raise
        return self

    async def _sizes(self) -> tuple[int, int]:
        """The chunk size and `resident_max`, from the master's public /health, so that a client
        without a key of its own (the gateway forwards its callers' keys) can start."""
        info = await self.master.health()
        if "chunk_size" in info:
            return int(info["chunk_size"]), int(info.get("resident_max", 0))
        return int((await self.master.call("statfs"))["chunk_size"]), 0  # an older master

    def _view(self, headers: dict[str, str], uid: int, gid: int) -> Client:
        if self._session is None:
            raise RuntimeError("start the client before making views of it")
        view = copy.copy(self)
        view._owner = False
        view._headers = {**headers, SESSION_HEADER: self.client_id}
        view.uid, view.gid = uid, gid
        view.master = self._master_for(view._headers)
        view.chunkio = ChunkIO(self._session, view._report_bad, self.read_timeout, self.local_reads)
        return view

    def _master_for(self, headers: dict[str, str]) -> MasterClient:
        if isinstance(self.master, ChannelMaster):  # a view of an inline view calls inline too
            return ChannelMaster(self.master.channels, headers, self.retry_for)  # type: ignore[return-value]
        assert self._session is not None
        master = MasterClient(self._session, self.master_url, self.retry_for, headers)
        master.before_call = self.master.before_call
        return master

    def acting_for(self, uid: int, gid: int, groups: tuple[int, ...] = ()) -> Client:
        """This client calling for end user uid/gid/groups (a mount: needs a proxy or admin key)."""
        return self._view({**auth_headers(self.key), **identity_headers(uid, gid, groups)}, uid, gid)

    def open_channels(self) -> None:
        """Let `inline()` views call the master over per-thread WebSockets (dfs/client/channel.py)."""
        if self.channels is None:
            self.channels = Channels(self.master_url, auth_headers(self.key))

    def inline(self) -> Client:
        """This client (its key and identity) with a master that calls from the calling thread: its
        namespace coroutines complete without the event loop (`run_inline`). Needs `open_channels()`."""
        if self.channels is None:
            raise RuntimeError("open_channels() first")
        view = copy.copy(self)
        view._owner = False
        view.master = ChannelMaster(self.channels, self._headers, self.retry_for)  # type: ignore[assignment]
        return view


    def with_key(self, key: str) -> Client:
        """This client calling with another access key (the gateway, for each of its callers)."""
        view = self._view(auth_headers(key), self.uid, self.gid)
        view.key = key
        return view

    async def whoami(self) -> dict[str, Any]:
        """The key this client sends, its scope, and the identity it acts as."""
        return await self.master.call("whoami")

    async def close(self) -> None:
        if self.channels is not None and self._owner:
            self.channels.close()
        if self.local_reads is not None and self._owner:
            self.local_reads.close()
        if self._session is not None and self._owner:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _report_bad(self, loc: ChunkLocation, replica: Replica, problem: str) -> None:
        with contextlib.suppress(DfsError):  # the report is advice; the read itself goes on
            await self.master.call("report", chunk_id=loc.chunk_id, server_id=replica.id,
                                   version=loc.version, problem=problem)

    # ---- inode-level namespace -----------------------------------------------------------

    async def _attr(self, op: str, **fields: Any) -> Attr:
        return Attr.from_json((await self.master.call(op, **fields))["attr"])

    async def lookup(self, parent: int, name: str) -> Attr:
        return await self._attr("lookup", parent=parent, name=name)

    async def getattr(self, inode: int, access: int = 0) -> Attr:
        """With `access` (os.R_OK|W_OK|X_OK): EACCES unless this caller has that access."""
        if access:
            return await self._attr("getattr", inode=inode, access=access)
        return await self._attr("getattr", inode=inode)

    async def setattr(self, inode: int, **changes: Any) -> Attr:
        return await self._attr("setattr", inode=inode, **changes)

    async def mkdir(self, parent: int, name: str, mode: int = 0o777, uid: int | None = None,
                    gid: int | None = None) -> Attr:
        return (await self.mkdir_delegated(parent, name, mode, uid, gid, delegate=False))[0]

    async def mkdir_delegated(self, parent: int, name: str, mode: int = 0o777, uid: int | None = None,
                              gid: int | None = None, *, delegate: bool = True) -> tuple[Attr, bool]:
        """mkdir, asking the master to delegate the new folder to this client (docs/PROTOCOL.md
        "Folder delegations"): its attributes, and whether it did."""
        reply = await self.master.call("mkdir", parent=parent, name=name, mode=mode & ~self.umask & 0o7777,
                                       uid=self.uid if uid is None else uid, gid=self.gid if gid is None else gid,
                                       **({"delegate": True} if delegate else {}))
        return Attr.from_json(reply["attr"]), bool(reply.get("delegated", False))

    async def create(self, parent: int, name: str, mode: int = 0o666, *, exclusive: bool = False,
                     goal: int | None = None, uid: int | None = None, gid: int | None = None,
                     rdev: int = 0) -> tuple[Attr, bool]:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        body: dict[str, Any] = {
            "parent": parent, "name": name, "mode": kind | (stat.S_IMODE(mode) & ~self.umask),
            "uid": self.uid if uid is None else uid, "gid": self.gid if gid is None else gid,
            "exclusive": exclusive, "rdev": rdev,
        }
        if goal is not None:
            body["goal"] = goal
        reply = await self.master.call("create", **body)
        return Attr.from_json(reply["attr"]), bool(reply.get("created", True))

    async def readdir(self, inode: int) -> AsyncIterator[tuple[str, Attr]]:
        async for name, attr, _ in self.readdir_plus(inode, data=False):
            yield name, attr

    async def readdir_plus(self, inode: int, data: bool = True) -> AsyncIterator[tuple[str, Attr, str | None]]:
        """The entries of a folder, with (`data`) the resident bytes of small files, base64 (or None)."""
        after: str | None = None
        extra = {"data": True} if data else {}
        while True:
            reply = await self.master.call("readdir", inode=inode, after=after, limit=READDIR_PAGE, **extra)
            for entry in reply["entries"]:
                yield entry["name"], Attr.from_json(entry["attr"]), entry.get("resident_b64")
            after = reply.get("next")
            if not after:
                return

    async def unlink(self, parent: int, name: str, held: list[int] | None = None) -> int | None:
        """Remove a name; `held` lists inodes the caller has open (kept alive until `forget`). The
        folder's new mtime (and ctime), when the master says it."""
        reply = await self.master.call("unlink", parent=parent, name=name, held=held or [])
        stamped = reply.get("mtime_ns") if isinstance(reply, dict) else None
        return int(stamped) if stamped is not None else None

    async def forget(self, inode: int) -> None:
        """The last open handle of a file is closed: an unlinked one can go now."""
        await self.master.call("forget", inode=inode)

    async def rmdir(self, parent: int, name: str) -> None:
        await self.master.call("rmdir", parent=parent, name=name)

    async def rename_entry(self, parent: int, name: str, new_parent: int, new_name: str, *,
                           noreplace: bool = False, exchange: bool = False, held: list[int] | None = None) -> bool:
        """Whether a name changed (False: both were names of one file, and stay)."""
        reply = await self.master.call("rename", parent=parent, name=name, new_parent=new_parent, new_name=new_name,
                                       noreplace=noreplace, exchange=exchange, held=held or [])
        return bool(reply.get("renamed", True))

    async def getxattr(self, inode: int, name: str) -> bytes:
        reply = await self.master.call("getxattr", inode=inode, name=name)
        return base64.b64decode(reply["value_b64"])

    async def setxattr(self, inode: int, name: str, value: bytes, flags: int = 0) -> None:
        await self.master.call("setxattr", inode=inode, name=name, value_b64=base64.b64encode(value).decode(),
                               flags=flags)

    async def listxattr(self, inode: int) -> list[str]:
        return list((await self.master.call("listxattr", inode=inode))["names"])

    async def removexattr(self, inode: int, name: str) -> None:
        await self.master.call("removexattr", inode=inode, name=name)

    async def link(self, inode: int, new_parent: int, new_name: str) -> Attr:
        return await self._attr("link", inode=inode, new_parent=new_parent, new_name=new_name)

    async def symlink_entry(self, parent: int, name: str, target: str, uid: int | None = None,
                            gid: int | None = None) -> Attr:
        return await self._attr("symlink", parent=parent, name=name, target=target,
                                uid=self.uid if uid is None else uid, gid=self.gid if gid is None else gid)

    async def readlink_inode(self, inode: int) -> str:
        return str((await self.master.call("readlink", inode=inode))["target"])

    async def statfs(self) -> dict[str, Any]:
        return await self.master.call("statfs")

    async def lease(self, inode: int, index: int, exclude: list[int]) -> Lease:
        reply = await self.master.call("lease", inode=inode, index=index, client=self.client_id, exclude=exclude)
        return Lease.from_json(reply)

    async def chunks(self, inode: int, first: int = 0, count: int = 1000) -> dict[str, Any]:
        return await self.master.call("chunks", inode=inode, first=first, count=count)

    async def open_inode(self, inode: int) -> FileHandle:
        attr = await self.getattr(inode)
        if attr.is_dir:
            raise DfsError(errno.EISDIR, f"inode {inode} is a directory")
        return FileHandle(self, attr)

    # ---- path-level ----------------------------------------------------------------------

    async def stat(self, path: str, follow: bool = True) -> Attr:
        return await self._attr("resolve", path=path, follow=follow)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except DfsError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise
        return True

    async def _parent(self, path: str) -> tuple[Attr, str]:
        parent_path, name = parent_and_name(path)
        parent = await self.stat(parent_path)
        if not parent.is_dir:
            raise DfsError(errno.ENOTDIR, f"not a directory: {parent_path}")
        return parent, name

    async def listdir(self, path: str) -> AsyncIterator[tuple[str, Attr]]:
        attr = await self.stat(path)
        if not attr.is_dir:
            raise DfsError(errno.ENOTDIR, f"not a directory: {path}")
        async for item in self.readdir(attr.inode):
            yield item

    async def makedir(self, path: str, mode: int = 0o777, parents: bool = False) -> Attr:
        """mkdir; with `parents`, missing ancestors are made and an existing directory is fine (mkdir -p)."""
        if not parents:
            parent, name = await self._parent(path)
            return await self.mkdir(parent.inode, name, mode)
        current = await self.getattr(ROOT_INODE)
        for name in split_path(path):
            try:
                current = await self.mkdir(current.inode, name, mode)
            except DfsError as err:
                if err.errno != errno.EEXIST:
                    raise
                current = await self.lookup(current.inode, name)
                if not current.is_dir:
                    raise DfsError(errno.ENOTDIR, f"not a directory: {name} in {path}") from None
        return current

    async def remove(self, path: str, recursive: bool = False) -> None:
        """rm (files, symlinks); rmdir for directories, or the whole tree when `recursive`."""
        parent, name = await self._parent(path)
        attr = await self.lookup(parent.inode, name)
        if not attr.is_dir:
            await self.unlink(parent.inode, name)
            return
        if recursive:
            await self._remove_children(attr.inode)
        await self.rmdir(parent.inode, name)

    async def _remove_children(self, inode: int) -> None:
        while True:
            batch = []
            async for name, attr in self.readdir(inode):
                batch.append((name, attr))
                if len(batch) >= READDIR_PAGE:
                    break
            if not batch:
                return
            for name, attr in batch:
                if attr.is_dir:
                    await self._remove_children(attr.inode)
                    await self.rmdir(inode, name)
                else:
                    await self.unlink(inode, name)

    async def rename(self, src: str, dst: str, *, noreplace: bool = False) -> None:
        sparent, sname = await self._parent(src)
        dparent, dname = await self._parent(dst)
        await self.rename_entry(sparent.inode, sname, dparent.inode, dname, noreplace=noreplace)

    async def symlink(self, target: str, path: str) -> Attr:
        parent, name = await self._parent(path)
        return await self.symlink_entry(parent.inode, name, target)

    async def readlink(self, path: str) -> str:
        return await self.readlink_inode((await self.stat(path, follow=False)).inode)

    async def truncate(self, path: str, size: int) -> Attr:
        attr = await self.stat(path)
        return await self.setattr(attr.inode, size=size)

    async def open(self, path: str, *, create: bool = False, mode: int = 0o666,
                   goal: int | None = None) -> FileHandle:
        """Open a file by path; with `create`, make it when missing (O_CREAT)."""
        if create:
            parent, name = await self._parent(path)
            attr, _ = await self.create(parent.inode, name, mode, goal=goal)
        else:
            attr = await self.stat(path)
        if attr.is_dir:
            raise DfsError(errno.EISDIR, f"is a directory: {path}")
        if not attr.is_file:
            raise DfsError(errno.EINVAL, f"not a regular file: {path}")
        return FileHandle(self, attr)

    async def upload(self, path: str, source: AsyncIterable[bytes], *, goal: int | None = None,
                     mode: int = 0o666) -> Attr:
        """Store everything `source` yields as `path`, replacing it atomically when it exists.

        The bytes go to a hidden temporary file in the same folder that is renamed over `path`
        once complete and durable, so readers see the old file or the new one, never a mix, and
        a failed upload leaves nothing behind.
        """
        parent, name = await self._parent(path)
        try:
            existing = await self.lookup(parent.inode, name)
        except DfsError as err:
            if err.errno != errno.ENOENT:
                raise
        else:
            if existing.is_dir:
                raise DfsError(errno.EISDIR, f"is a directory: {path}")
        temp = f".{name[:200]}.dfs-upload-{secrets.token_hex(6)}"
        attr, _ = await self.create(parent.inode, temp, mode, exclusive=True, goal=goal)
        try:
            handle = FileHandle(self, attr)
            await handle.write_stream(0, source)
            await handle.close()
            await self.rename_entry(parent.inode, temp, parent.inode, name)
        except BaseException:
            with contextlib.suppress(DfsError, aiohttp.ClientError):
                await self.unlink(parent.inode, temp)
            raise
        return await self.lookup(parent.inode, name)

    async def download(self, path: str, offset: int = 0, size: int | None = None) -> AsyncIterator[bytes]:
        handle = await self.open(path)
        try:
            async for piece in handle.read_stream(offset, size):
                yield piece
        finally:
            await handle.close()
