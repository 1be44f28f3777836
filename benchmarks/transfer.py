"""Upload and download of a large file through the gateway (curl) and `dfs put/get`, against `cp`.

Starts a fresh cluster (master, three chunkservers, gateway; 64 MiB chunks, goal 3) in a temporary
folder on the same disk as the local baseline, and prints MB/s, the ratio to `cp` of the same file
measured in the same run, and how much each process's peak RSS rose during the transfers.

    .venv/bin/python benchmarks/transfer.py [--size 1GiB] [--goal 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfs.launcher import Cluster, session_admin_key
from dfs.units import MiB, parse_size


def rss_kib(pid: int, field: str) -> int:
    """VmRSS or VmHWM (peak) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Seconds a command takes and its peak RSS in KiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss


def digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with contextlib.suppress(OSError):  # not root: reads may come from the page cache, as cp's do
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--goal", type=int, default=3)
    parser.add_argument("--dir", default=None, help="Work folder (default: a temporary one in the current folder)")
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dfs-bench-", dir="."))
    base.mkdir(parents=True, exist_ok=True)
    source, copy, out = base / "source.bin", base / "copy.bin", base / "out.bin"
    with open(source, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
    cluster = Cluster(root=base / "cluster", goal=args.goal, chunk_size=64 * MiB, admin_key=session_admin_key())
    results: list[tuple[str, float]] = []
    try:
        cluster.start(chunkservers=3, gateway=True)
        assert cluster.gateway is not None
        dfs = [sys.executable, "-m", "dfs"]
        env = {"DFS_MASTER": cluster.master_url}
        auth = ["-H", f"Authorization: Bearer {cluster.admin_key}"]
        before = {s.name: rss_kib(s.proc.pid, "VmRSS") for s in cluster.services() if s.proc}

        drop_caches()
        cp_s, _ = timed(["sh", "-c", f"cp {source} {copy} && sync {copy}"])
        results.append(("cp (local disk baseline)", cp_s))
        drop_caches()
        up_s, curl_up_rss = timed(["curl", "-sf", *auth, "-T", str(source), f"{cluster.gateway.url}/fs/curl.bin"])
        results.append(("gateway upload (curl -T)", up_s))
        drop_caches()
        down_s, curl_down_rss = timed(["curl", "-sf", *auth, "-o", str(out), f"{cluster.gateway.url}/fs/curl.bin"])
        results.append(("gateway download (curl)", down_s))
        if digest(out) != digest(source):
            raise SystemExit("downloaded file differs")
        out.unlink()
        drop_caches()
        put_s, put_rss = timed([*dfs, "put", "--no-progress", str(source), "/put.bin"], env)
        results.append(("dfs put", put_s))
        drop_caches()
        get_s, get_rss = timed([*dfs, "get", "--no-progress", "/put.bin", str(out)], env)
        results.append(("dfs get", get_s))
        peaks = {s.name: rss_kib(s.proc.pid, "VmHWM") for s in cluster.services() if s.proc}
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    mb = size / 1e6
    print(f"\n{size / MiB:.0f} MiB file, goal {args.goal}, 3 chunkservers, all on one host, {os.cpu_count()} cores")
    print(f"{'transfer':30} {'seconds':>8} {'MB/s':>8} {'vs cp':>7}")
    for name, seconds in results:
        print(f"{name:30} {seconds:8.2f} {mb / seconds:8.1f} {cp_s / seconds:7.2f}")
    print(f"\n{'process':16} {'RSS before':>11} {'peak':>9} {'rise':>9}   (MiB)")
    for name, peak in peaks.items():
        print(f"{name:16} {before[name] / 1024:11.1f} {peak / 1024:9.1f} {(peak - before[name]) / 1024:9.1f}")
    for name, kib in [("curl upload", curl_up_rss), ("curl download", curl_down_rss), ("dfs put", put_rss),
                      ("dfs get", get_rss)]:
        print(f"{name:16} {'':>11} {kib / 1024:9.1f}")


if __name__ == "__main__":
    main()
