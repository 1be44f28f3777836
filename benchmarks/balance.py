"""Balance throughput against a plain copy of the same chunks between two chunkservers.

Starts a fresh cluster (master, goal 1, 64 MiB chunks) with one chunkserver A, writes --size of data
onto it, then adds two empty chunkservers B and C of the same capacity and measures:

* cp: the chunk files of A copied with `cp -r` and synced (the local disk's own speed);
* plain copy: every chunk of A streamed A -> C by a plain HTTP GET piped into a PUT (four at a time):
  the bytes moved between two chunkservers with no planning, verification or bookkeeping;
* balance: `dfs admin balance --threshold 1` moving chunks from A to B and C (target pulls from the
  source, verifies the checksum, the master commits the placement, the source is dropped),
  MB/s = bytes moved / time from start to the end of the job, as the master reports them.

    .venv/bin/python benchmarks/balance.py [--size 1GiB]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfs.client import Client
from dfs.launcher import Cluster, http_json, session_admin_key
from dfs.tokens import ChunkTokens
from dfs.units import MiB, parse_size

PARALLEL = 4


async def write_data(master_url: str, size: int) -> None:
    block = os.urandom(MiB)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            yield block

    async with Client(master_url) as client:
        await client.upload("/bench.bin", source(), goal=1)


async def plain_copy(tokens: ChunkTokens, source_url: str, target_url: str,
                     chunk_list: list[dict]) -> tuple[int, float]:
    """GET every chunk from the source and PUT it on the target under a fresh id; (bytes, seconds)."""
    slots = asyncio.Semaphore(PARALLEL)
    moved = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:

        async def one(n: int, chunk: dict) -> None:
            nonlocal moved
            fresh = 10**12 + n  # ids the master never issues: deleted afterwards
            async with slots, session.get(f"{source_url}/chunks/{chunk['chunk_id']}",
                                          params={"version": str(chunk["version"])},
                                          headers={"Range": f"bytes=0-{chunk['length'] - 1}",
                                                   **tokens.header("read", chunk["chunk_id"], chunk["version"],
                                                                   600)}) as got:
                got.raise_for_status()
                async with session.put(f"{target_url}/chunks/{fresh}", params={"version": "1", "offset": "0"},
                                       data=got.content.iter_chunked(MiB),
                                       headers={"Content-Length": str(chunk["length"]),
                                                **tokens.header("write", fresh, 1, 600)}) as put:
                    put.raise_for_status()
            moved += chunk["length"]

        started = time.perf_counter()
        await asyncio.gather(*(one(n, c) for n, c in enumerate(chunk_list)))
        seconds = time.perf_counter() - started
        for n in range(len(chunk_list)):
            async with session.delete(f"{target_url}/chunks/{10**12 + n}", params={"version": "1"},
                                      headers=tokens.header("delete", 10**12 + n, 1, 600)):
                pass
    return moved, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--dir", default=None, help="Work folder (default: a temporary one in the current folder)")
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dfs-bench-", dir="."))
    capacity = str(max(4 * size, 1 << 30))
    cluster = Cluster(root=base / "cluster", goal=1, chunk_size=64 * MiB, admin_key=session_admin_key())
    try:
        cluster.start_master()
        a = cluster.add_chunkserver(capacity=capacity)
        cluster.wait_servers(1)
        asyncio.run(write_data(cluster.master_url, size))
        cluster.add_chunkserver(capacity=capacity)
        c = cluster.add_chunkserver(capacity=capacity)
        cluster.wait_servers(3)

        _, listing = http_json("GET", a.url + "/chunks", headers=cluster.token_header("list", 0))
        chunk_list = listing["chunks"]
        plain_bytes, plain_s = asyncio.run(plain_copy(cluster.chunk_tokens(), a.url, c.url, chunk_list))
        started = time.perf_counter()
        subprocess.run(["sh", "-c", f"cp -r {base / 'cluster' / 'cs0' / 'chunks'} {base / 'cp-copy'} && sync"],
                       check=True)
        cp_s = time.perf_counter() - started
        shutil.rmtree(base / "cp-copy")
        time.sleep(3)  # let heartbeats report C's space again

        env = {**os.environ, "DFS_MASTER": cluster.master_url}
        done = subprocess.run([sys.executable, "-m", "dfs", "admin", "balance", "--threshold", "1", "--json"],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"balance failed: {done.stderr}")
        st = json.loads(done.stdout)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    balance_mb_s = st["bytes_moved"] / 1e6 / st["elapsed"]
    plain_mb_s = plain_bytes / 1e6 / plain_s
    print(f"\n{size / MiB:.0f} MiB on one chunkserver, 64 MiB chunks, goal 1, all on one host, {os.cpu_count()} cores")
    print(f"{'copy':44} {'MiB':>8} {'seconds':>8} {'MB/s':>8}")
    print(f"{'plain copy A -> C (GET piped into PUT, x4)':44} {plain_bytes / MiB:8.0f} {plain_s:8.2f} "
          f"{plain_mb_s:8.1f}")
    print(f"{'cp -r of the chunk files (local disk)':44} {size / MiB:8.0f} {cp_s:8.2f} {size / 1e6 / cp_s:8.1f}")
    print(f"{'dfs admin balance (A -> B, C; verified)':44} {st['bytes_moved'] / MiB:8.0f} {st['elapsed']:8.2f} "
          f"{balance_mb_s:8.1f}")
    print(f"balance / plain copy: {balance_mb_s / plain_mb_s:.2f}; {st['moves_done']} moves; spread "
          f"{st['spread_before']['deviation']:.1f} -> {st['spread_after']['deviation']:.1f} points")


if __name__ == "__main__":
    main()
