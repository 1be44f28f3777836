"""The one way blocking disk I/O leaves the event loop: a small pool of disk threads.

Callers batch their work (one call per ~1 MiB slice, not per 64 KiB block): each hop to a thread
costs tens of microseconds. `start_writeback` (write-behind) is for those threads too.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
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
