"""A chunkserver's Prometheus metrics (docs/METRICS.md): bytes moved, and a collector over the store
and the scrubber read at scrape time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dfs.chunkserver.scrubber import Scrubber
from dfs.chunkserver.store import ChunkStore
from dfs.metrics import add_metrics

READ_BYTES = Counter("dfs_chunkserver_read_bytes", "Chunk bytes sent to readers (clients, and servers pulling "
                     "a copy)")
WRITTEN_BYTES = Counter("dfs_chunkserver_written_bytes", "Chunk bytes stored: by writes (from a client or the "
                        "previous server of a chain) and by copies pulled from another server", ["kind"])
FORWARDED_BYTES = Counter("dfs_chunkserver_forwarded_bytes", "Bytes of writes forwarded to the next server of "
                          "the chain")
SHORT_CIRCUIT_OPENS = Counter("dfs_chunkserver_short_circuit_opens", "Requests for a chunk's open files on the "
                              "short-circuit socket (chunkserver/localread.py), by result", ["result"])
WRITES = WRITTEN_BYTES.labels("write")
COPIES = WRITTEN_BYTES.labels("copy")


class ChunkserverCollector(Collector):
    """The store's chunks and space and the scrubber's progress, from the objects themselves."""

    def __init__(self, store: Callable[[], ChunkStore | None], scrubber: Callable[[], Scrubber | None]) -> None:
        self.store = store  # getters: the store and the scrubber are opened after the app is made
        self.scrubber = scrubber

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store = self.store()
        if store is None:
            return
        yield GaugeMetricFamily("dfs_chunkserver_chunks", "Chunks stored (pending ones included)",
                                value=len(store.index))
        space = GaugeMetricFamily("dfs_chunkserver_space_bytes", "Bytes offered (capacity), used by chunk files, "
                                  "and free", labels=["kind"])
        for kind, n in store.usage().items():
            space.add_metric([kind], n)
        yield space
        scrub = self.scrubber()
        if scrub is None:
            return
        stats = scrub.stats
        yield CounterMetricFamily("dfs_chunkserver_scrub_chunks", "Chunks verified by the scrubber",
                                  value=stats["chunks"])
        yield CounterMetricFamily("dfs_chunkserver_scrub_bytes", "Bytes verified by the scrubber", value=stats["bytes"])
        yield CounterMetricFamily("dfs_chunkserver_scrub_corrupt", "Corrupt chunks found by the scrubber",
                                  value=stats["corrupt"])
        yield CounterMetricFamily("dfs_chunkserver_scrub_passes", "Scrub passes completed", value=stats["passes"])
        yield GaugeMetricFamily("dfs_chunkserver_scrub_pass_progress", "Share of the current pass's chunks done "
                                "(0 between passes)", value=scrub.progress())
        yield GaugeMetricFamily("dfs_chunkserver_scrub_last_pass_seconds", "Duration of the last complete pass",
                                value=stats["pass_seconds"] or 0.0)


def add_chunkserver_metrics(app: web.Application, store: web.AppKey[ChunkStore],
                            scrubber: web.AppKey[Scrubber]) -> None:
    """`GET /metrics` and the collector of the store and scrubber kept under those keys."""

    async def collecting(app: web.Application) -> AsyncIterator[None]:
        collector = ChunkserverCollector(lambda: app.get(store), lambda: app.get(scrubber))
        REGISTRY.register(collector)
        try:
            yield
        finally:
            REGISTRY.unregister(collector)

    app.cleanup_ctx.append(collecting)
    add_metrics(app)
