"""The one way blocking disk I/O leaves the event loop: a small pool of disk threads.

Callers batch their work (one call per ~1 MiB slice, not per 64 KiB block): each hop to a thread
costs tens of microseconds. `start_writeback` (write-behind) and `pwrite_direct` (O_DIRECT from
page-aligned buffers: no copy into the page cache) are for those threads too.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

DISK_THREADS = 16

_executor = ThreadPoolExecutor(max_workers=DISK_THREADS, thread_name_prefix="chunk-disk")


def submit(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Start `fn(*args)` on a disk thread; the future completes on the running loop."""
    return asyncio.get_running_loop().run_in_executor(_executor, fn, *args)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` on a disk thread and wait for its result."""
    return await submit(fn, *args)


SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from libc (released GIL, like any ctypes call); None elsewhere."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing these bytes of the page cache to disk, without waiting (write-behind): the
    fsync that ends a large write then finds most of it on disk instead of doing all of it at once.
    Best effort: where the call is missing or fails, the kernel writes the pages back in its time."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


#: O_DIRECT wants buffer addresses, file offsets and lengths aligned to the device's blocks; 4 KiB
#: satisfies every device and file system we run on.
DIRECT_ALIGN = 4096
#: Aligned buffers kept for reuse: fresh anonymous memory costs a page fault per 4 KiB on first touch.
POOL_BUFFERS = 32

_pool: dict[int, list[mmap.mmap]] = {}


def aligned_buffer(size: int) -> mmap.mmap:
    """A page-aligned, writable buffer of `size` bytes (its contents are whatever it last held)."""
    free = _pool.get(size)
    return free.pop() if free else mmap.mmap(-1, size)


def release_buffer(buf: mmap.mmap) -> None:
    """Give a buffer of `aligned_buffer` back once no write uses it any more."""
    free = _pool.setdefault(len(buf), [])
    if len(free) < POOL_BUFFERS:
        free.append(buf)


def open_direct(path: os.PathLike[str] | str) -> int | None:
    """`path` opened for O_DIRECT writes; None where the file system (tmpfs) or platform has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def pwrite_direct(direct_fd: int, fd: int, view: memoryview, pos: int) -> bool:
    """Write `view` (from the start of an aligned buffer) at `pos` (aligned): its whole 4 KiB pages
    with O_DIRECT through `direct_fd`, a short tail through the buffered `fd`. False, with nothing
    written, when the file system refuses O_DIRECT for it."""
    aligned = len(view) - len(view) % DIRECT_ALIGN
    done = 0
    try:
        while done < aligned:
            n = os.pwrite(direct_fd, view[done:aligned], pos + done)
            done += n
            if n % DIRECT_ALIGN:  # a short, unaligned write: the rest goes the buffered way
                break
    except OSError as exc:
        if exc.errno != errno.EINVAL or done:
            raise
        return False
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return True
