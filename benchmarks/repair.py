"""Self-healing figures: time to declare a node dead, time to restore the goal of its chunks,
re-replication MB/s against a plain copy between two chunkservers, and the scrubber's rate.

Starts a cluster (master, four chunkservers; 64 MiB chunks) in a temporary folder, writes a goal-2
file and a goal-3 file so that each chunkserver holds about --size of replicas, kills one with
kill -9 and times:

* dead: from the kill until the master declares it dead (--dead-timeout, default 5 s here);
* restore: from the moment it stops counting as live (its dead timeout) until every chunk is back at
  its goal; MB/s = lost bytes / time;
* the order of the copies: chunks left with one live copy must all start before those left with two;
* a plain copy of the same chunks between two chunkservers: `curl GET | curl PUT` (chunk to chunk,
  the same HTTP path a copy takes) and `cp` of the chunk files, in MB/s;
* the scrubber: a surviving chunkserver restarted with --scrub-rate 8GiB (unthrottled, what the
  disk and CPU allow) and with 200MiB (is the throttle honoured?).

    .venv/bin/python benchmarks/repair.py [--size 1GiB] [--repair-bandwidth 0] [--repair-concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfs.client.sync import SyncClient
from dfs.launcher import Cluster, Service, http_json, session_admin_key
from dfs.tokens import TOKEN_HEADER, ClusterKeys
from dfs.units import MiB, parse_size

CHUNK = 64 * MiB


def get(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return json.loads(resp.read())


def status(cluster: Cluster) -> dict[str, Any]:
    code, body = http_json("GET", cluster.master_url + "/api/status")  # with the session's admin key
    if code != 200:
        raise RuntimeError(f"GET /api/status: {code} {body}")
    return dict(body)


def state(cluster: Cluster, service: Service) -> str:
    return next(s["state"] for s in status(cluster)["servers"] if s["url"] == service.url)


def wait(what: str, probe: Any, timeout: float, every: float = 0.05) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)
    return time.monotonic()


async def source(size: int, seed: int) -> Any:
    block = os.urandom(MiB)
    for i in range(size // MiB):
        yield block[:8] + (i + seed).to_bytes(8, "little") + block[16:]


def at_goal(fs: SyncClient, path: str, goal: int) -> bool:
    return all(len(c["servers"]) >= goal for c in fs.chunks(fs.stat(path).inode, 0, 100_000)["chunks"])


def held(service: Service) -> dict[int, dict[str, Any]]:
    token = ClusterKeys.from_join_token(service.env["DFS_JOIN_TOKEN"]).tokens.header("list", 0, 0, 600)
    return {c["chunk_id"]: c for c in get(service.url + "/chunks", token)["chunks"]}


def plain_copies(cluster: Cluster, a: Service, b: Service, count: int) -> tuple[float, float]:
    """MB/s of `curl GET a | curl PUT b` and of `cp` for `count` chunks that `a` holds."""
    chunks = [c for c in held(a).values() if c["length"] == CHUNK and not c["pending"]][:count]
    tokens = cluster.chunk_tokens()
    started = time.perf_counter()
    for n, c in enumerate(chunks):
        fake = 10**15 + n  # a chunk id nobody uses; deleted right after
        read = tokens.mint("read", c["chunk_id"], c["version"], 600)
        getter = subprocess.Popen(["curl", "-sf", "-H", f"{TOKEN_HEADER}: {read}",
                                   f"{a.url}/chunks/{c['chunk_id']}?version={c['version']}"], stdout=subprocess.PIPE)
        subprocess.run(["curl", "-sf", "-o", "/dev/null", "-T", "-", "-H", f"Content-Length: {CHUNK}",
                        "-H", "Transfer-Encoding:", "-H", "Expect:",
                        "-H", f"{TOKEN_HEADER}: {tokens.mint('write', fake, 1, 600)}",
                        f"{b.url}/chunks/{fake}?version=1&offset=0&sync=1"], stdin=getter.stdout, check=True)
        getter.wait()
    curl_rate = len(chunks) * CHUNK / MiB / (time.perf_counter() - started)
    for n in range(len(chunks)):
        http_json("DELETE", f"{b.url}/chunks/{10**15 + n}?version=1",
                  headers=tokens.header("delete", 10**15 + n, 1, 600))
    a_index = cluster.chunkservers.index(a)
    b_dir = cluster.root / "cp-target"
    b_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    for c in chunks:
        cid = c["chunk_id"]
        src = cluster.root / f"cs{a_index}" / "chunks" / f"{cid & 0xFF:02x}" / f"{cid}.chunk"
        subprocess.run(["cp", str(src), str(b_dir / f"{cid}.chunk")], check=True)
        subprocess.run(["sync", str(b_dir / f"{cid}.chunk")], check=True)
    cp_rate = len(chunks) * CHUNK / MiB / (time.perf_counter() - started)
    shutil.rmtree(b_dir)
    return curl_rate, cp_rate


def scrub_rate(cluster: Cluster, service: Service, rate: str) -> tuple[float, int]:
    """Restart `service` scrubbing at `rate`; (MB/s of its first full pass over its chunks, bytes)."""
    service.stop()
    kept: list[str] = []
    skip = False
    for arg in service.args:  # drop earlier --scrub-* flags and their values
        if skip or arg.startswith("--scrub"):
            skip = not skip
            continue
        kept.append(arg)
    service.args = [*kept, "--scrub-rate", rate, "--scrub-interval", "3600"]
    (cluster.root / f"cs{cluster.chunkservers.index(service)}" / "scrub.json").unlink(missing_ok=True)
    service.start()
    service.wait_healthy()
    wait("a scrub pass", lambda: get(service.url + "/health").get("scrub", {}).get("passes", 0) >= 1, 600, 0.2)
    scrub = get(service.url + "/health")["scrub"]
    return scrub["bytes"] / MiB / scrub["pass_seconds"], scrub["bytes"]


def copy_order(log: str) -> tuple[bool, int, int]:
    """From the master's log: (did every 1-live-copy chunk start before any 2-live-copy one?, counts)."""
    starts = [int(m[1]) for m in re.finditer(r"has (\d+) live of \d+ copies: copying", log)]
    ones, twos = starts.count(1), starts.count(2)
    last_one = max((i for i, n in enumerate(starts) if n == 1), default=-1)
    first_two = min((i for i, n in enumerate(starts) if n == 2), default=len(starts))
    return last_one < first_two, ones, twos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB", help="Replica bytes on the node that dies")
    parser.add_argument("--dead-timeout", default="5")
    parser.add_argument("--repair-bandwidth", default="0", help="0: unlimited")
    parser.add_argument("--repair-concurrency", default="2")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dfs-repair-", dir="."))
    cluster = Cluster(root=base / "cluster", chunk_size=CHUNK, goal=2, master_args=[
        "--dead-timeout", args.dead_timeout, "--heartbeat-interval", "0.5", "--gc-grace", "0",
        "--repair-bandwidth", args.repair_bandwidth, "--repair-concurrency", args.repair_concurrency,
    ], chunkserver_args=["--scrub-rate", "0"], admin_key=session_admin_key())
    try:
        cluster.start(chunkservers=4, gateway=False)
        # each server ends up with ~size: (2 * a + 3 * b) / 4 = size with a = size, b = 2/3 size
        a = size // CHUNK * CHUNK
        b = (2 * size // 3) // CHUNK * CHUNK
        with SyncClient(cluster.master_url, retry_for=60) as fs:
            began = time.perf_counter()
            fs.upload("/goal2", source(a, 0), goal=2)
            fs.upload("/goal3", source(b, 10**6), goal=3)
            write_s = time.perf_counter() - began
            print(f"wrote {(a + b) / MiB:.0f} MiB (goal 2: {a / MiB:.0f}, goal 3: {b / MiB:.0f}) in {write_s:.1f}s")
            loads = {s.name: sum(c["length"] for c in held(s).values()) for s in cluster.chunkservers}
            victim = max(cluster.chunkservers, key=lambda s: loads[s.name])
            lost = loads[victim.name]
            survivors = [s for s in cluster.chunkservers if s is not victim]
            print(f"victim {victim.name} holds {lost / MiB:.0f} MiB in {len(held(victim))} chunks")

            # plain copies between two survivors, before the failure (same disks, same processes)
            curl_rate, cp_rate = plain_copies(cluster, survivors[0], survivors[1], 6)

            victim.kill()
            killed = time.monotonic()
            dead_at = wait("dead", lambda: state(cluster, victim) == "dead", 120)
            done_at = wait("goal restored", lambda: at_goal(fs, "/goal2", 2) and at_goal(fs, "/goal3", 3), 900,
                           0.1)
            # copies may begin as soon as the node is no longer live (dead timeout after its last heartbeat),
            # a little before the housekeeping round that declares it dead: count from the earlier moment
            dead_s = dead_at - killed
            restore_s = done_at - min(dead_at, killed + float(args.dead_timeout))
            repair_rate = lost / MiB / restore_s
            repair = status(cluster)["repair"]
            assert cluster.master is not None
            ordered, ones, twos = copy_order(_full_log(cluster.master))

            scrub_fast, scrubbed = scrub_rate(cluster, survivors[0], "8GiB")
            scrub_200, _ = scrub_rate(cluster, survivors[1], "200MiB")
        print()
        print(f"time to declare dead (dead timeout {args.dead_timeout}s): {dead_s:6.1f} s")
        print(f"time to restore the goal of {lost / MiB:.0f} MiB:         {restore_s:6.1f} s "
              f"({done_at - killed:.1f} s from the kill)")
        print(f"re-replication:                          {repair_rate:6.0f} MB/s "
              f"({repair['copies']['copies']} copies, concurrency {args.repair_concurrency} per server, "
              f"bandwidth {args.repair_bandwidth or 'unlimited'})")
        print(f"plain copy curl GET | curl PUT:          {curl_rate:6.0f} MB/s "
              f"-> re-replication at {100 * repair_rate / curl_rate:.0f}% of it")
        print(f"plain cp of chunk files (+sync):         {cp_rate:6.0f} MB/s "
              f"-> re-replication at {100 * repair_rate / cp_rate:.0f}% of it")
        print(f"fewest copies first: {'yes' if ordered else 'NO'} ({ones} chunks with 1 live copy started "
              f"before {twos} with 2)")
        print(f"scrub, unthrottled:                      {scrub_fast:6.0f} MB/s over {scrubbed / MiB:.0f} MiB")
        print(f"scrub at --scrub-rate 200MiB:            {scrub_200:6.0f} MB/s")
    finally:
        cluster.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


def _full_log(service: Service) -> str:
    return service.log_path.read_text(errors="replace")


if __name__ == "__main__":
    main()
