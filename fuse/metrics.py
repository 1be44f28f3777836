"""The mount's Prometheus metrics (`dfs mount --metrics-port PORT`, docs/METRICS.md).

Every libfuse callback passes through mfusepy's `FUSE._wrapper`; fuse/mount.py's subclass times it and
hands the result to `FuseObserver` (counts and latency per operation, bytes of reads and writes). A
collector reads the mount's memory budget and open files at scrape time. prometheus_client's own HTTP
server answers on 127.0.0.1 in a thread of its own, stopped with the mount.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dfs.errors import DfsError
from dfs.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from dfs.fuse.operations import DfsOperations

OPERATIONS = Counter("dfs_fuse_operations", "File system calls served, by operation and result (error: an errno "
                     "was returned, ENOENT of lookups included)", ["operation", "result"])
OPERATION_SECONDS = Histogram("dfs_fuse_operation_duration_seconds", "Time to serve a file system call",
                              ["operation"], buckets=LATENCY_BUCKETS)
BYTES = Counter("dfs_fuse_bytes", "Bytes returned by read and accepted by write calls", ["direction"])

_SUFFIXES = ("_fuse_3", "_fuse_2")


class FuseObserver:
    """Called by the FUSE wrapper after each callback with its name, its return value and its duration."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, bool], tuple[Any, Any]] = {}
        self._read = BYTES.labels("read")
        self._written = BYTES.labels("written")

    def __call__(self, callback: str, result: Any, seconds: float) -> None:
        ok = not (isinstance(result, int) and result < 0)
        series = self._series.get((callback, ok))
        if series is None:
            name = callback
            for suffix in _SUFFIXES:
                name = name.removesuffix(suffix)
            series = self._series[(callback, ok)] = (OPERATIONS.labels(name, "ok" if ok else "error"),
                                                     OPERATION_SECONDS.labels(name))
        series[0].inc()
        series[1].observe(seconds)
        if ok and isinstance(result, int) and result > 0:
            if callback == "read":
                self._read.inc(result)
            elif callback == "write":
                self._written.inc(result)


class MountCollector(Collector):
    """The mount's buffers, read at scrape time."""

    def __init__(self, ops: DfsOperations) -> None:
        self.ops = ops

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        budget = self.ops.budget
        files = self.ops.open_files()
        yield GaugeMetricFamily("dfs_fuse_memory_used_bytes", "Bytes held by write buffers, read-ahead windows "
                                "and open small files' resident bytes", value=budget.used)
        yield GaugeMetricFamily("dfs_fuse_memory_cap_bytes", "The cap on those bytes (--memory-cap)", value=budget.cap)
        yield GaugeMetricFamily("dfs_fuse_unsent_bytes", "Bytes written to open files and not yet on the "
                                "chunkservers (buffered or being sent)", value=sum(f.unsent_bytes for f in files))
        yield GaugeMetricFamily("dfs_fuse_open_files", "Files open through the mount", value=len(files))
        dirops = self.ops.dirops
        if dirops is not None:
            folders, pending = dirops.counts()
            yield GaugeMetricFamily("dfs_fuse_delegated_folders", "Folders delegated to this mount: it creates "
                                    "and removes in them without waiting for the master", value=folders)
            yield GaugeMetricFamily("dfs_fuse_pending_changes", "Changes in delegated folders not yet sent to "
                                    "the master", value=pending)


def serve_metrics(port: int, ops: DfsOperations) -> Callable[[], None]:
    """Serve /metrics on 127.0.0.1:`port` in a thread; returns what stops it."""
    collector = MountCollector(ops)
    try:
        server, thread = start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        raise DfsError(errno.EADDRINUSE, f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from None
    REGISTRY.register(collector)

    def stop() -> None:
        REGISTRY.unregister(collector)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
