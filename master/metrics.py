"""The master's Prometheus metrics (docs/METRICS.md): database latency, and a collector that reads the
master's own objects at scrape time (servers, repair, copies, balance, drains, leases).

Chunks by state and the table counts need a scan of the placement. That scan is not run on every
scrape: `MasterCollector.refresh` (awaited by `GET /metrics` before the collectors run) keeps its result
for at least `STATE_TTL` seconds, and for 20 times as long as the scan took, so a large namespace is
scanned at most 5% of the time however often Prometheus asks; only the first scrape waits for a scan.
The scan runs on a reader thread (`background=True`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select

from dfs.master.schema import garbage, inodes
from dfs.metrics import LATENCY_BUCKETS, add_metrics

if TYPE_CHECKING:
    from dfs.master.admin_api import Admin
    from dfs.master.app import Master

log = logging.getLogger("master.metrics")

DB_SECONDS = Histogram("dfs_master_db_seconds", "Database transactions: read and write on the request path, scan "
                       "for background jobs' long reads", ["kind"], buckets=LATENCY_BUCKETS)

#: Seconds a placement scan is reused at least (and SCAN_SHARE: at most this share of the time scanning).
STATE_TTL = 2.0
SCAN_SHARE = 0.05
CHUNK_STATES = ("healthy", "under_goal", "missing", "over_goal", "corrupt")
SERVER_STATES = ("live", "unknown", "maintenance", "dead", "draining", "decommissioned")

T = TypeVar("T")


def timed(kind: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorates `Database.run_read`/`run_write`: time each transaction (`background=True` calls as "scan")."""
    main, scan = DB_SECONDS.labels(kind), DB_SECONDS.labels("scan")

    def wrap(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def timed_method(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                (scan if kwargs.get("background") else main).observe(time.perf_counter() - started)

        return timed_method

    return wrap


@dataclass(slots=True)
class Snapshot:
    """What one placement scan found."""

    chunks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHUNK_STATES, 0))
    draining_left: dict[int, tuple[int, int]] = field(default_factory=dict)  # server -> (replicas, bytes)
    inodes: dict[str, int] = field(default_factory=dict)  # files, directories, other
    garbage: int = 0
    taken: float = 0.0  # time.monotonic()
    seconds: float = 0.0


def _table_counts(conn: Connection) -> tuple[dict[str, int], int]:
    kind = inodes.c.mode.op("&")(0o170000)
    by_kind = {int(k): int(n) for k, n in conn.execute(select(kind, func.count()).group_by(kind))}
    files, dirs = by_kind.pop(stat.S_IFREG, 0), by_kind.pop(stat.S_IFDIR, 0)
    queued = int(conn.scalar(select(func.count()).select_from(garbage)) or 0)
    return {"file": files, "directory": dirs, "other": sum(by_kind.values())}, queued


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class MasterCollector(Collector):
    def __init__(self, master: Master, admin: Admin) -> None:
        self.m = master
        self.admin = admin
        self.snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (the registry must not call collect() when registering)

    # -- the cached scan ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Renew the scan once it is older than its time to live. The first scrape waits for it; later
        ones are answered at once from the last scan while the next one runs, so that a slow scan of a
        large namespace never makes a scrape time out."""
        if self.snapshot is None:
            async with self._lock:
                if self.snapshot is None:
                    await self._renew()
        elif self._stale() and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._renew(), name="metrics placement scan")

    def _stale(self) -> bool:
        last = self.snapshot
        return last is None or time.monotonic() - last.taken >= max(STATE_TTL, last.seconds / SCAN_SHARE)

    async def _renew(self) -> None:
        try:
            self.snapshot = await self._scan()
        except Exception as exc:  # the other figures are still worth serving; the age gauge shows it
            log.warning("metrics: placement scan failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _scan(self) -> Snapshot:
        # imported here, as in _servers: master.db imports this module, and these import master.db
        from dfs.master.admin import chunk_health
        from dfs.master.layout import load_layout

        started = time.monotonic()
        layout = await load_layout(self.m.db, self.m.config.chunk_size)
        health = chunk_health(self.m, layout)
        out = Snapshot()
        over = health["over_replicated"]  # counted among the healthy by chunk_health: kept apart here
        out.chunks.update(healthy=health["healthy"] - over, over_goal=over, under_goal=health["under_replicated"],
                          missing=health["missing"], corrupt=health["corrupt"])
        for sid, info in self.m.registry.servers.items():
            if info.admin_state == "draining":
                left = layout.on_server(sid)
                out.draining_left[sid] = (len(left), sum(c.length for c in left))
        out.inodes, out.garbage = await self.m.db.run_read(_table_counts, background=True)
        out.taken = time.monotonic()
        out.seconds = out.taken - started
        return out

    # -- the figures --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield from self._servers()
        yield from self._placement()
        yield from self._repair()
        yield from self._jobs()

    def _servers(self) -> Iterator[Metric]:
        from dfs.master.admin import node_state

        live = {s.id for s in self.m.registry.live()}
        counts = dict.fromkeys(SERVER_STATES, 0)
        capacity = {"capacity": 0, "used": 0, "free": 0}
        for info in self.m.registry.servers.values():
            state = node_state(info, info.id in live)
            counts[state] = counts.get(state, 0) + 1
            if info.id in live:
                capacity["capacity"] += info.capacity
                capacity["used"] += info.used
                capacity["free"] += info.free
        servers = GaugeMetricFamily("dfs_master_chunkservers", "Chunkservers by state (draining and decommissioned "
                                    "ones by their administrative state)", labels=["state"])
        for state, n in counts.items():
            servers.add_metric([state], n)
        yield servers
        space = GaugeMetricFamily("dfs_master_space_bytes", "Space of the live chunkservers, as their heartbeats "
                                  "report it", labels=["kind"])
        for kind, n in capacity.items():
            space.add_metric([kind], n)
        yield space
        yield _gauge("dfs_master_leases", "Write leases held", len(self.m.leases))

    def _placement(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        chunks = GaugeMetricFamily("dfs_master_chunks", "Chunks by state, from a placement scan at most a few "
                                   "seconds old: healthy (at goal), over_goal, under_goal, missing (no live "
                                   "replica), corrupt (under goal with a replica reported corrupt)", labels=["state"])
        for state, n in snap.chunks.items():
            chunks.add_metric([state], n)
        yield chunks
        inodes = GaugeMetricFamily("dfs_master_inodes", "Files, directories and other inodes", labels=["type"])
        for kind, n in snap.inodes.items():
            inodes.add_metric([kind], n)
        yield inodes
        yield _gauge("dfs_master_garbage_queue", "Replica deletions queued for chunkservers", snap.garbage)
        yield _gauge("dfs_master_placement_scan_age_seconds", "Age of the scan behind dfs_master_chunks",
                     time.monotonic() - snap.taken)
        yield _gauge("dfs_master_placement_scan_seconds", "Time the last placement scan took", snap.seconds)
        left = GaugeMetricFamily("dfs_master_decommission_left", "What a draining server still holds",
                                 labels=["server", "unit"])
        for sid, (replicas, nbytes) in sorted(snap.draining_left.items()):
            left.add_metric([str(sid), "replicas"], replicas)
            left.add_metric([str(sid), "bytes"], nbytes)
        yield left

    def _repair(self) -> Iterator[Metric]:
        counts = self.m.repair.counts
        queue = GaugeMetricFamily("dfs_master_repair_chunks", "Re-replication's last scan: chunks under their goal "
                                  "(under_replicated includes missing, waiting_for_maintenance and leased ones), "
                                  "with no live copy, waiting for a server in maintenance, under a write lease, "
                                  "with a goal above the servers available, above their goal", labels=["state"])
        for state in ("under_replicated", "missing", "waiting_for_maintenance", "leased", "goal_unreachable",
                      "over_replicated"):
            queue.add_metric([state], counts.get(state, 0))
        yield queue
        yield _gauge("dfs_master_repair_last_scan_timestamp_seconds", "When re-replication last scanned (0: not "
                     "yet: nothing is done during the first dead timeout after a start)", counts.get("last_scan") or 0)
        yield _counter("dfs_master_repair_trimmed_replicas", "Replicas dropped from chunks above their goal",
                       counts.get("trimmed", 0))
        stats = self.m.replicator.stats
        copies = CounterMetricFamily("dfs_master_replica_copies", "Chunkserver-to-chunkserver copies (re-replication, "
                                     "balance, decommission, fsck --repair) by result", labels=["result"])
        copies.add_metric(["done"], stats["copies"])
        copies.add_metric(["failed"], stats["failed"])
        yield copies
        yield _counter("dfs_master_replica_copied_bytes", "Bytes copied between chunkservers", stats["bytes"])
        yield _gauge("dfs_master_replica_copies_in_flight", "Copies running now", len(self.m.replicator.copying))
        recovery = self.m.recovery.stats
        yield _counter("dfs_master_lease_checks", "Expired write leases checked by lease recovery",
                       recovery.get("checked", 0))
        outcomes = CounterMetricFamily("dfs_master_lease_recoveries", "Lease recovery's outcomes: a pending replica "
                                       "made complete, replicas dropped, chunks given up on", labels=["outcome"])
        for outcome in ("recovered", "dropped", "given_up"):
            outcomes.add_metric([outcome], recovery.get(outcome, 0))
        yield outcomes

    def _jobs(self) -> Iterator[Metric]:
        balance = self.admin.balancer.status()
        running = balance.get("state") in ("running", "stopping")
        yield _gauge("dfs_master_balance_running", "1 while a balance runs", 1 if running else 0)
        moves = GaugeMetricFamily("dfs_master_balance_moves", "Moves of the running (or last) balance: planned, "
                                  "done, failed, skipped, and pending (planned, not yet ended)", labels=["state"])
        planned = balance.get("moves_planned", 0)
        ended = 0
        for state in ("done", "failed", "skipped"):
            n = balance.get(f"moves_{state}", 0)
            ended += n
            moves.add_metric([state], n)
        moves.add_metric(["planned"], planned)
        moves.add_metric(["pending"], max(0, planned - ended) if running else 0)
        yield moves
        yield _gauge("dfs_master_balance_moved_bytes", "Bytes moved by the running (or last) balance",
                     balance.get("bytes_moved", 0))
        drains = GaugeMetricFamily("dfs_master_decommission_moves", "Replicas moved, dropped and failed by each "
                                   "drain since it started", labels=["server", "result"])
        for sid, drain in sorted(self.admin.drainer.drains.items()):
            for result in ("moved", "dropped", "failed", "stuck"):
                drains.add_metric([str(sid), result], getattr(drain, result))
        yield drains
        yield _gauge("dfs_master_moves_in_flight", "Replica moves (balance, decommission, setrep) running now",
                     len(self.admin.mover.inflight))


COLLECTOR = web.AppKey("metrics_collector", MasterCollector)


def add_master_metrics(app: web.Application) -> None:
    """`GET /metrics` and the collector; call after the cleanup contexts that open the master and its jobs."""

    async def collecting(app: web.Application) -> AsyncIterator[None]:
        from dfs.master.admin_api import ADMIN_KEY
        from dfs.master.app import MASTER_KEY

        collector = app[COLLECTOR] = MasterCollector(app[MASTER_KEY], app[ADMIN_KEY])
        REGISTRY.register(collector)
        try:
            yield
        finally:
            REGISTRY.unregister(collector)
            await collector.close()

    async def refresh(app: web.Application) -> None:
        if COLLECTOR in app:
            await app[COLLECTOR].refresh()

    app.cleanup_ctx.append(collecting)
    add_metrics(app, refresh)
