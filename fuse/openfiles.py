"""Open files of the mount: write-back gathering, read-ahead, and the memory they may hold.

Contract: one `OpenFile` per inode, shared by every open handle of that inode in this mount, so
that what one handle wrote is what another reads (POSIX read-after-write in one mount). Writes
are gathered in a buffer of `write_buffer` bytes and sent in the background while the next buffer
fills (at most SENDS_IN_FLIGHT buffers per file, and never two that overlap: a later send must not
be overtaken by an earlier one of the same bytes); a failed background send is reported by the next write,
flush, fsync or close of the file, as NFS reports write-back errors. Reads first send what is
buffered, then serve sequential reads from a read-ahead window fetched in one request. Every byte
held for buffers and windows is charged to the mount's `MemoryBudget`; past the cap, writes wait
for sends to finish and read-ahead is skipped.

Reads, small final sends (a few extents at a flush, fsync or close) and commits run in the calling
FUSE thread when the handle has an inline client (dfs/client/inlineio.py): no hop to the event loop.
Background sends of full buffers stay on the loop, so that the next buffer fills meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dfs.client.channel import run_inline
from dfs.client.client import Client
from dfs.client.files import FileHandle
from dfs.client.sync import LoopThread
from dfs.errors import DfsError
from dfs.fuse.extents import DirtyExtents
from dfs.protocol import Attr

log = logging.getLogger("dfs.fuse")

SEND_CONCURRENCY = 8  # chunk writes of one file in flight at once when its dirty bytes are scattered
#: Buffers of one file being sent at once: the next buffer's request starts while the last one's
#: reply comes back along the chain, so a sequential writer does not wait for each round trip.
SENDS_IN_FLIGHT = 2


class _Send:
    """One buffer handed to the event loop: its future, the bytes charged for it, the ranges it covers."""

    __slots__ = ("charged", "future", "ranges")

    def __init__(self, future: concurrent.futures.Future, charged: int, ranges: list[tuple[int, int]]) -> None:
        self.future = future
        self.charged = charged
        self.ranges = ranges

    def overlaps(self, ranges: list[tuple[int, int]]) -> bool:
        return any(a < d and c < b for a, b in self.ranges for c, d in ranges)
INLINE_EXTENTS = 4  # a final send of at most this many extents and INLINE_BYTES goes from the calling thread
INLINE_BYTES = 1024 * 1024
SEQUENTIAL_STREAK = 2  # reads following each other before read-ahead starts (a random read may follow one)


async def open_attr(client: Client, inode: int, access: int, reading: bool) -> tuple[Attr, dict[str, Any]]:
    """An open's fresh attributes (close-to-open) and, when it reads, where its first chunk is (or its
    resident bytes), in one round trip: the reply, for `FileHandle.seed_locations`."""
    reply = await client.master.call("getattr", inode=inode, access=access, chunks=1 if reading else 0)
    return Attr.from_json(reply["attr"]), reply


class MemoryBudget:
    """Bytes the mount's caches may hold at most, shared by all open files."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._cond = threading.Condition()

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.used + n > self.cap:
                return False
            self.used += n
            return True

    def take(self, n: int, timeout: float = 60.0) -> None:
        """Wait until `n` bytes fit (a single request larger than the cap is let through alone)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.used and self.used + n > self.cap:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DfsError(12, "mount memory cap reached and nothing was freed in time")  # ENOMEM
                self._cond.wait(left)
            self.used += n

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class OpenFile:
    def __init__(self, handle: FileHandle, loop: LoopThread, budget: MemoryBudget, write_buffer: int,
                 read_ahead: int, on_commit: Callable[[int], None] = lambda inode: None) -> None:
        self.handle = handle
        #: told the inode after each commit or truncate made on the master, under `lock` (see
        #: NameCache.changed_here): an open holding `lock` then sees that its answer may be older
        self.on_commit = on_commit
        self.inode = handle.inode
        self.loop = loop
        self.budget = budget
        self.write_buffer = write_buffer
        self.read_ahead = read_ahead
        self.refs = 0
        self.removals_at_open = 0
        self.forget_on_close = False  # unlinked while open: the master may delete it at the last close
        self.lock = threading.RLock()
        self.mtime_ns: int | None = None  # set by local writes not yet committed
        self.ctime_ns: int | None = None  # when an attribute change was deferred (set_attr)
        self.mode: int | None = None  # a deferred chmod
        self.atime_ns: int | None = None  # a deferred utimens
        self._deferred: dict[str, int] = {}  # attributes set since the writes, sent with their commit
        self._dirty = DirtyExtents()
        #: One past the last byte written here since the handle's size last stood for everything
        #: (a truncate, a refresh): buffered, being sent, or sent and failed alike, as a local
        #: disk's i_size moves at write(2), not at write-back.
        self._written_end = 0
        self._buf_charged = 0
        self._sends: collections.deque[_Send] = collections.deque()  # oldest first
        self._error: DfsError | None = None
        self._window = b""
        self._window_offset = 0
        self._window_charged = 0
        self._resident_charged = 0  # the handle's resident bytes (slot 0 kept by the master), charged
        self._next_sequential = -1
        self._streak = 0

    def _run(self, coro: Any) -> Any:
        """Wait for a coroutine of the handle: here when it has an inline client, else on the loop."""
        if self.handle.inline is not None:
            return run_inline(coro)
        return self.loop.run(coro)

    # ---- size as this mount sees it -----------------------------------------------------------

    @property
    def size(self) -> int:
        return max(self.handle.size, self._written_end)

    @property
    def unsent_bytes(self) -> int:
        """Bytes written here and not yet acknowledged by the chunkservers (buffered or being sent)."""
        return self._dirty.total + sum(send.charged for send in list(self._sends) if not send.future.done())

    @property
    def dirty(self) -> bool:
        return bool(self._dirty) or bool(self._sends) or self.handle.dirty

    # ---- writing ------------------------------------------------------------------------------

    def write(self, offset: int, data: bytes) -> int:
        with self.lock:
            self._raise_error()
            self._drop_window()
            if self._dirty.total + len(data) > self.write_buffer:
                self._send_buffer()
            self._charge(len(data))
            before = self._dirty.total
            self._dirty.add(offset, data)
            self._written_end = max(self._written_end, offset + len(data))
            saved = len(data) - (self._dirty.total - before)  # rewritten bytes are held once
            if saved:
                self._buf_charged -= saved
                self.budget.give(saved)
            self.mtime_ns = time.time_ns()
            self._deferred.pop("mtime_ns", None)  # this write moves the mtime again
            if self._dirty.total >= self.write_buffer:
                self._send_buffer()
            return len(data)

    def _charge(self, n: int) -> None:
        if not self.budget.try_take(n):
            self._send_buffer()  # memory pressure: give back what we can, then wait our turn
            self._wait_inflight()
            self.budget.take(n)
        self._buf_charged += n

    def _send_buffer(self) -> None:
        """Hand the dirty extents to the event loop, after the sends they must not race with."""
        if not self._dirty:
            return
        extents, charged = self._dirty.take(), self._buf_charged
        self._buf_charged = 0
        ranges = [(offset, offset + len(data)) for offset, data in extents]
        while self._sends and (len(self._sends) >= SENDS_IN_FLIGHT
                               or any(send.overlaps(ranges) for send in self._sends)):
            self._wait_oldest()
        self._sends.append(_Send(self.loop.submit(self._write_extents(extents)), charged, ranges))

    async def _write_extents(self, extents: list[tuple[int, bytes]]) -> None:
        """Send extents a few at a time: scattered small writes cost round trips, not bandwidth."""
        pending = [self.handle.write(offset, data) for offset, data in extents]
        for i in range(0, len(pending), SEND_CONCURRENCY):
            results = await asyncio.gather(*pending[i : i + SEND_CONCURRENCY], return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    for rest in pending[i + SEND_CONCURRENCY :]:
                        rest.close()
                    raise result

    def _wait_inflight(self) -> None:
        while self._sends:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        send = self._sends[0]
        try:
            send.future.result()
        except DfsError as err:
            log.error("write-back of inode %d failed: %s", self.inode, err.message)
            self._error = self._error or err
        finally:
            self._sends.popleft()
            self.budget.give(send.charged)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def send_all(self) -> None:
        """Every buffered byte is on the chunkservers (not yet committed); raises a pending error."""
        with self.lock:
            if not self._sends and self._small_enough():
                self._send_here()
            else:
                self._send_buffer()
                self._wait_inflight()
            self._raise_error()

    def _small_enough(self) -> bool:
        return (self.handle.inline is not None and 0 < len(self._dirty) <= INLINE_EXTENTS
                and self._dirty.total <= INLINE_BYTES)

    def _send_here(self) -> None:
        """Send the dirty extents from this thread, one after the other (few and small: no loop hop)."""
        extents, charged = self._dirty.take(), self._buf_charged
        self._buf_charged = 0
        try:
            for offset, data in extents:
                run_inline(self.handle.write(offset, data))
        except DfsError as err:
            log.error("write-back of inode %d failed: %s", self.inode, err.message)
            self._error = self._error or err
        finally:
            self.budget.give(charged)

    def flush(self, durable: bool, closing: bool = False) -> None:
        """Send and commit (close(2), `closing`); with `durable`, fsync on every replica first (fsync(2)).
        A close with no other handle open here gives the leases back in the commit."""
        with self.lock:
            if self._commit_resident(release=closing and self.refs <= 1):
                return
            self.send_all()
            self._run(self.handle.flush(durable, release=closing and self.refs <= 1, deferred=self._deferred))
            self._committed(called=True)

    def _commit_resident(self, release: bool) -> bool:
        """A small file written here and not sent yet: its bytes go to the master in the commit
        (resident data, master/resident.py) instead of to chunkservers. False: nothing done."""
        if self._sends or not self._dirty or not self.handle.may_be_resident(self._dirty.end):
            return False
        self._raise_error()
        # the extents stay until the master took them: a refusal sends them to chunkservers
        if not self._run(self.handle.commit_resident(self._dirty.items(), self.size, release, self._deferred)):
            return False
        self._dirty.take()
        self.budget.give(self._buf_charged)
        self._buf_charged = 0
        self._committed(called=True)
        self.account_resident()
        return True

    def defer(self, mtime_ns: int | None = None, atime_ns: int | None = None, mode: int | None = None) -> bool:
        """Times or permission bits set while writes are unflushed (`tar x` and `rsync` widen the
        mode and set the times of each file before its close): kept here and sent with those writes'
        commit (where the data's own mtime would go) instead of a flush and a call of their own;
        this mount sees them at once. False: nothing unflushed, make the call."""
        with self.lock:
            if not self.dirty:
                return False
            if mtime_ns is not None:
                self.mtime_ns = self._deferred["mtime_ns"] = mtime_ns
            if atime_ns is not None:
                self.atime_ns = self._deferred["atime_ns"] = atime_ns
            if mode is not None:
                self.mode = self._deferred["mode"] = mode
            self.ctime_ns = time.time_ns()
            return True

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def _committed(self, called: bool = False) -> None:
        """What was deferred went with a commit; `called`: the master was told something."""
        self.mtime_ns = self.ctime_ns = self.mode = self.atime_ns = None
        self._deferred = {}
        if called:
            self.on_commit(self.inode)

    def truncate(self, size: int) -> None:
        with self.lock:
            self.send_all()
            self._drop_window()
            if self._deferred:  # a truncate moves the mtime, not the mode
                self._run(self.handle.flush(durable=False, deferred=self._deferred))
            self._run(self.handle.truncate(size))
            self._written_end = 0  # every write was sent first: the handle's size is the file's
            self._committed(called=True)
            self.account_resident()

    # ---- reading ------------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            if self._sends or self._dirty.overlaps(offset, size) or (
                    self._dirty and offset + size > self.handle.size):
                self.send_all()
            end = min(offset + size, self.size)
            if offset >= end:
                return b""
            window_end = self._window_offset + len(self._window)
            self._streak = self._streak + 1 if offset == self._next_sequential else 0
            if self._window_offset <= offset and end <= window_end:
                start = offset - self._window_offset
                data = self._window[start : start + end - offset]
            elif self._streak >= SEQUENTIAL_STREAK and self.read_ahead > end - offset:
                data = self._read_ahead(offset, end)
            else:
                data = self._run(self.handle.read(offset, end - offset))
            self._next_sequential = offset + len(data)
            self.account_resident()
            return data

    def account_resident(self) -> None:
        """Charge the budget for the resident bytes the handle holds now (master/resident.py); past
        the cap the handle lets them go, and a later read asks the master for them again."""
        with self.lock:
            held = self.handle.resident_bytes
            if held == self._resident_charged:
                return
            if held < self._resident_charged or self.budget.try_take(held - self._resident_charged):
                if held < self._resident_charged:
                    self.budget.give(self._resident_charged - held)
                self._resident_charged = held
                return
            self.handle.drop_resident()
            self.budget.give(self._resident_charged)
            self._resident_charged = 0

    def _read_ahead(self, offset: int, end: int) -> bytes:
        span = min(self.read_ahead, self.size - offset)
        self._drop_window()
        if not self.budget.try_take(span):
            return self._run(self.handle.read(offset, end - offset))
        try:
            self._window = self._run(self.handle.read(offset, span))
        except BaseException:
            self.budget.give(span)
            raise
        self._window_offset = offset
        self._window_charged = span
        return self._window[: end - offset]

    def _drop_window(self) -> None:
        if self._window:
            self.budget.give(self._window_charged)
            self._window = b""
            self._window_charged = 0

    def refresh(self, attr: Attr) -> None:
        """The file changed elsewhere (seen at an open): take its new attributes, drop what we read."""
        with self.lock:
            self._drop_window()
            self.handle.refresh(attr)
            self._written_end = 0
            self.account_resident()

    def close(self) -> None:
        """The last handle went away: flush, give the leases back, free the memory. A clean file
        (nothing buffered, sent, uncommitted or leased) closes without a call or a loop hop."""
        with self.lock:
            try:
                if not self._commit_resident(release=True):
                    self.send_all()
                called = not self.handle.close_clean()
                if called:
                    self._run(self.handle.close(deferred=self._deferred))
                self._committed(called)
            finally:
                self._drop_window()
                self.handle.drop_resident()
                self.account_resident()
                if self._buf_charged:
                    self.budget.give(self._buf_charged)
                    self._buf_charged = 0
