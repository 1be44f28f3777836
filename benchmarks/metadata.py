"""Metadata operations per second on SQLite and on PostgreSQL, through the client library.

For each backend a master is started alone (namespace operations need no chunkserver): first on its
SQLite file, then on a database of a throwaway PostgreSQL server started for the run (initdb in a
temporary folder; synchronous_commit=off, the durability class of SQLite's WAL with synchronous=NORMAL:
a crash of the master or of the database server loses nothing, a crash of the machine may lose the
last commits). CLIENTS clients (`dfs.client.Client`, each its own HTTP session) then run, phase by
phase, FILES operations in all:

- create (exclusive), stat (a path lookup), rename (within the folder), unlink

once with every client in one shared folder and once with a folder per client. The table gives
operations per second per phase and the ratio PostgreSQL / SQLite.

    .venv/bin/python benchmarks/metadata.py [--files 2000] [--clients 8] [--backend sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from dfs.client.client import Client
from dfs.launcher import Cluster, session_admin_key
from tests.pgserver import PgServer

PHASES = ("create", "stat", "rename", "unlink")
LAYOUTS = ("one folder", "folder per client")
Op = Callable[[Client, int, str, int], Awaitable[object]]


async def run_phase(clients: list[Client], folders: list[tuple[int, str]], per_client: int, op: Op) -> float:
    """Operations per second of `op(client, folder inode, folder path, i)` over every client at once."""

    async def worker(index: int) -> None:
        client = clients[index]
        inode, path = folders[index]
        for i in range(index * per_client, (index + 1) * per_client):
            await op(client, inode, path, i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(clients))))
    return len(clients) * per_client / (time.perf_counter() - started)


async def measure(master_url: str, files: int, count: int) -> dict[tuple[str, str], float]:
    clients = [await Client(master_url).start() for _ in range(count)]
    per_client = files // count
    results: dict[tuple[str, str], float] = {}
    ops: dict[str, Op] = {
        "create": lambda c, d, _p, i: c.create(d, f"f{i}", exclusive=True),
        "stat": lambda c, _d, p, i: c.stat(f"{p}/f{i}"),
        "rename": lambda c, d, _p, i: c.rename_entry(d, f"f{i}", d, f"g{i}"),
        "unlink": lambda c, d, _p, i: c.unlink(d, f"g{i}"),
    }
    try:
        for layout in LAYOUTS:
            top = layout.replace(" ", "-")
            await clients[0].makedir(f"/{top}")
            if layout == "one folder":
                shared = await clients[0].stat(f"/{top}")
                folders = [(shared.inode, f"/{top}")] * count
            else:
                folders = [((await clients[0].makedir(f"/{top}/c{i}")).inode, f"/{top}/c{i}") for i in range(count)]
            for phase in PHASES:
                results[(layout, phase)] = await run_phase(clients, folders, per_client, ops[phase])
    finally:
        for client in clients:
            await client.close()
    return results


def bench(backend: str, root: Path, files: int, count: int) -> dict[tuple[str, str], float]:
    server = None
    db_url = None
    if backend == "postgresql":
        server = PgServer(durable=True).start()
        db_url = server.create_database("dfs_bench")
    cluster = Cluster(root=root / backend, db_url=db_url, admin_key=session_admin_key())
    try:
        cluster.start(chunkservers=0, gateway=False)
        return asyncio.run(measure(cluster.master_url, files, count))
    finally:
        cluster.stop()
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="operations per phase, all clients together")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backend", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    console = Console()
    figures: dict[str, dict[tuple[str, str], float]] = {}
    with tempfile.TemporaryDirectory(prefix="dfs-bench-meta-") as base:
        for backend in backends:
            console.print(f"[bold]{backend}[/]: {args.clients} clients, {args.files} operations per phase ...")
            figures[backend] = bench(backend, Path(base), args.files, args.clients)
    table = Table(title=f"metadata operations per second ({args.clients} clients, {args.files} per phase)")
    table.add_column("layout")
    table.add_column("operation")
    for backend in backends:
        table.add_column(backend, justify="right")
    both = "sqlite" in figures and "postgresql" in figures
    if both:
        table.add_column("PostgreSQL / SQLite", justify="right")
    for layout in LAYOUTS:
        for phase in PHASES:
            row = [layout, phase, *(f"{figures[b][(layout, phase)]:,.0f}" for b in backends)]
            if both:
                row.append(f"{figures['postgresql'][(layout, phase)] / figures['sqlite'][(layout, phase)]:.2f}")
            table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
