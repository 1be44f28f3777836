"""The one way blocking disk I/O leaves the event loop: a small pool of disk threads.

Callers batch their work (one call per ~1 MiB slice, not per 64 KiB block): each hop to a thread
costs tens of microseconds.
"""

from __future__ import annotations

import asyncio
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
