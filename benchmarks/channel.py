"""Namespace calls over the master's channel (master/channel.py) from a loop of client threads, as the
mount makes them, without FUSE: what a call costs the master and the channel.

A master is started alone (namespace calls need no chunkserver), a client opens its channels and
THREADS threads make FILES calls of each phase in one folder, inline (`Client.inline()`, as the
mount's FUSE threads do), acting for a user (`--uid`, 0: root) as the mount does:

- create (exclusive), lookup, getattr, resolve (a path of 3 components), unlink

For each phase: calls per second over all threads, and from the master's /metrics the µs per call in
its handler (`dfs_http_request_duration_seconds`, method WS) and in its database
(`dfs_master_db_seconds`), and from the client's own histogram the µs the caller waited. Those are
times, which other processes on the machine stretch; the CPU µs per call of the master process and
of this client process (user + system, from /proc and `time.process_time`) depend far less on them.

    .venv/bin/python benchmarks/channel.py [--files 5000] [--threads 1] [--uid 0] [--db URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import REGISTRY
from rich.console import Console
from rich.table import Table

from dfs.client.channel import run_inline
from dfs.client.client import Client
from dfs.client.sync import LoopThread
from dfs.launcher import Cluster, session_admin_key
from tests.scrape import scrape, value

PHASES = ("create", "lookup", "getattr", "resolve", "unlink")
Call = Callable[[Client, int, int], object]


def _calls() -> dict[str, Call]:
    return {
        "create": lambda c, d, i: run_inline(c.create(d, f"f{i}", exclusive=True)),
        "lookup": lambda c, d, i: run_inline(c.lookup(d, f"f{i}")),
        "getattr": lambda c, d, i: run_inline(c.getattr(d)),
        "resolve": lambda c, _d, i: run_inline(c.stat(f"/bench/sub/f{i}")),
        "unlink": lambda c, d, i: run_inline(c.unlink(d, f"f{i}")),
    }


def run_phase(view: Client, folder: int, files: int, threads: int, call: Call) -> float:
    """Calls per second of `call(view, folder, i)` for i < files, split over `threads` threads."""
    per = files // threads

    def worker(index: int) -> None:
        for i in range(index * per, (index + 1) * per):
            call(view, folder, i)

    failures: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            worker(index)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=guarded, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise failures[0]
    return per * threads / (time.perf_counter() - started)


def _client_seconds(op: str) -> tuple[float, float]:
    total = REGISTRY.get_sample_value("dfs_client_master_call_seconds_sum", {"operation": op}) or 0.0
    count = REGISTRY.get_sample_value("dfs_client_master_call_seconds_count", {"operation": op}) or 0.0
    return total, count


def _server_seconds(url: str, op: str) -> tuple[float, float, float, float]:
    """(handler seconds, handler calls, db seconds, db transactions) so far."""
    samples = scrape(url + "/metrics")
    labels = {"operation": f"/api/{op}", "method": "WS"}
    kind = "write" if op in ("create", "unlink") else "read"
    return (value(samples, "dfs_http_request_duration_seconds_sum", **labels),
            value(samples, "dfs_http_request_duration_seconds_count", **labels),
            value(samples, "dfs_master_db_seconds_sum", kind=kind),
            value(samples, "dfs_master_db_seconds_count", kind=kind))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, files: int, threads: int, uid: int,
            phases: tuple[str, ...] = PHASES) -> dict[str, tuple[float, ...]]:
    """Per phase: (calls/s, client µs, master µs, master DB µs, master CPU µs, client CPU µs per call)."""
    loop = LoopThread()
    client = loop.run(Client(url).start())
    try:
        client.open_channels()
        root = client.inline()
        top = run_inline(root.mkdir(1, "bench", 0o777))
        folder = run_inline(root.mkdir(top.inode, "sub", 0o777)).inode
        for inode in (top.inode, folder):  # the umask took write permission from others
            run_inline(root.setattr(inode, mode=0o777))
        view = root.acting_for(uid, uid) if uid else root
        results = {}
        steps = _calls()
        if "create" not in phases:  # the other phases need the files
            for i in range(files):
                steps["create"](view, folder, i)
        for phase, call in steps.items():
            if phase not in phases:
                continue
            op = "resolve" if phase == "resolve" else phase
            c0, s0 = _client_seconds(op), _server_seconds(url, op)
            cpu0, mine0 = _cpu_seconds(pid), time.process_time()
            rate = run_phase(view, folder, files, threads, call)
            cpu1, mine1 = _cpu_seconds(pid), time.process_time()
            c1, s1 = _client_seconds(op), _server_seconds(url, op)
            calls = max(s1[1] - s0[1], 1)
            results[phase] = (rate, 1e6 * (c1[0] - c0[0]) / max(c1[1] - c0[1], 1),
                              1e6 * (s1[0] - s0[0]) / calls, 1e6 * (s1[2] - s0[2]) / calls,
                              1e6 * (cpu1 - cpu0) / files, 1e6 * (mine1 - mine0) / files)
        return results
    finally:
        loop.run(client.close())
        loop.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000, help="calls per phase, all threads together")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--uid", type=int, default=0, help="act for this user (0: root, no permission checks)")
    parser.add_argument("--db", default=None, help="the master's database URL (default: SQLite)")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfs-bench-chan-") as base:
        cluster = Cluster(root=Path(base), db_url=args.db, admin_key=session_admin_key())
        try:
            cluster.start(chunkservers=0, gateway=False)
            assert cluster.master is not None and cluster.master.proc is not None
            print(f"master pid {cluster.master.proc.pid}", flush=True)
            figures = measure(cluster.master_url, cluster.master.proc.pid, args.files, args.threads, args.uid,
                              tuple(args.only.split(",")))
        finally:
            cluster.stop()
    table = Table(title=f"channel calls ({args.threads} threads, {args.files} per phase, uid {args.uid})")
    for column in ("phase", "calls/s", "client µs", "master µs", "db µs", "master CPU µs", "client CPU µs"):
        table.add_column(column, justify="right")
    for phase, (rate, *micros) in figures.items():
        table.add_row(phase, f"{rate:,.0f}", *(f"{us:.0f}" for us in micros))
    Console().print(table)


if __name__ == "__main__":
    main()
