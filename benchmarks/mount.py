"""The mount against a local-disk folder: the same workloads, in the same run, ratios printed.

Starts a fresh cluster (master, three chunkservers; 64 MiB chunks, goal 2) and mounts it, then runs
each workload on the mount and on a folder of the local disk:

- sequential write of SIZE (1 MiB blocks, fsync at the end) and cold sequential read
- 4 KiB random reads over that file (POSIX_FADV_RANDOM, caches dropped first)
- 4 parallel writers of SIZE/4 each
- create, stat and unlink of 5,000 files in one folder
- 2,000 files of 4 KiB written, then read cold
- extraction of a source-tree tarball (the Python standard library: ~8,000 entries)
- the peak RSS of the mount process

    .venv/bin/python benchmarks/mount.py [--size 1GiB] [--goal 2] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfs.launcher import Cluster, Mount, session_admin_key
from dfs.units import MiB, parse_size

BLOCK = MiB


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with contextlib.suppress(OSError):  # not root: reads may come from the page cache on both sides
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def write_file(path: Path, size: int, block: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path) -> int:
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, BLOCK):
            total += len(chunk)
    finally:
        os.close(fd)
    return total


class Workloads:
    """Each method runs one workload in `root` and returns (amount, unit) done."""

    def __init__(self, root: Path, size: int, tarball: Path) -> None:
        self.root = root
        self.size = size
        self.tarball = tarball
        self.block = os.urandom(BLOCK)

    def seq_write(self) -> tuple[float, str]:
        write_file(self.root / "seq.bin", self.size, self.block)
        return self.size / 1e6, "MB"

    def seq_read(self) -> tuple[float, str]:
        drop_caches()
        return read_file(self.root / "seq.bin") / 1e6, "MB"

    def random_read(self) -> tuple[float, str]:
        drop_caches()
        rng = random.Random(7)
        count = 20_000
        fd = os.open(self.root / "seq.bin", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            pages = self.size // 4096
            for _ in range(count):
                os.pread(fd, 4096, rng.randrange(pages) * 4096)
        finally:
            os.close(fd)
        return count, "IOPS"

    def parallel_write(self) -> tuple[float, str]:
        part = self.size // 4
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: write_file(self.root / f"par{i}.bin", part, self.block), range(4)))
        return part * 4 / 1e6, "MB"

    def _files(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        return folder

    def create(self) -> tuple[float, str]:
        folder = self._files("meta")
        for i in range(5000):
            os.close(os.open(folder / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        return 5000, "files/s"

    def stat(self) -> tuple[float, str]:
        folder = self.root / "meta"
        for i in range(5000):
            os.stat(folder / f"f{i}")
        return 5000, "files/s"

    def unlink(self) -> tuple[float, str]:
        folder = self.root / "meta"
        for i in range(5000):
            os.unlink(folder / f"f{i}")
        return 5000, "files/s"

    def small_write(self) -> tuple[float, str]:
        folder = self._files("small")
        data = self.block[:4096]
        for i in range(2000):
            with open(folder / f"s{i}", "wb") as f:
                f.write(data)
        return 2000, "files/s"

    def small_read(self) -> tuple[float, str]:
        drop_caches()
        folder = self.root / "small"
        for i in range(2000):
            with open(folder / f"s{i}", "rb") as f:
                f.read()
        return 2000, "files/s"

    def untar(self) -> tuple[float, str]:
        folder = self._files("untar")
        subprocess.run(["tar", "xzf", str(self.tarball), "-C", str(folder)], check=True)
        return 1, "s"


ORDER = ["seq_write", "seq_read", "random_read", "parallel_write", "create", "stat", "unlink", "small_write",
         "small_read", "untar"]


def make_tarball(path: Path) -> int:
    """The standard library of this Python (without site-packages) as a .tar.gz; returns its entries."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    entries = 0
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            nonlocal entries
            if "site-packages" in info.name:
                return None
            entries += 1
            return info
        tar.add(stdlib, arcname="stdlib", filter=keep)
    return entries


def peak_rss_mib(pid: int) -> int:
    """The process's peak resident set (VmHWM) since it started or since `reset_peak_rss`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def reset_peak_rss(pid: int) -> None:
    with contextlib.suppress(OSError):  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")


def timed(fn: Callable[[], tuple[float, str]]) -> tuple[float, float, str]:
    start = time.perf_counter()
    amount, unit = fn()
    return time.perf_counter() - start, amount, unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--goal", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated workloads: " + ",".join(ORDER))
    args = parser.parse_args()
    size = parse_size(args.size)
    chosen = [w for w in ORDER if not args.only or w in args.only.split(",")]
    base = Path(tempfile.mkdtemp(prefix="dfs-bench-", dir="."))
    local = base / "local"
    local.mkdir()
    tarball = base / "tree.tar.gz"
    entries = make_tarball(tarball)
    cluster = Cluster(root=base / "cluster", goal=args.goal, chunk_size=64 * MiB, admin_key=session_admin_key())
    mount = Mount("", base / "mnt", base / "mount.log")
    results: list[tuple[str, float, float, str]] = []
    peaks: dict[str, int] = {}
    try:
        cluster.start(chunkservers=3, gateway=False)
        mount.master_url = cluster.master_url
        mount.start()
        assert mount.proc is not None
        remote = mount.mountpoint / "bench"
        remote.mkdir()
        sides = {"local": Workloads(local, size, tarball), "dfs": Workloads(remote, size, tarball)}
        for name in chosen:
            row = []
            for side in ("local", "dfs"):
                reset_peak_rss(mount.proc.pid)
                seconds, amount, unit = timed(getattr(sides[side], name))
                row.append((seconds, amount, unit))
            peaks[name] = peak_rss_mib(mount.proc.pid)
            (ls, la, unit), (ds, da, _) = row
            results.append((name, la / ls if unit != "s" else ls, da / ds if unit != "s" else ds, unit))
            print(f"{name:15} local {results[-1][1]:10.1f}  dfs {results[-1][2]:10.1f} {unit}"
                  f"  (mount peak RSS {peaks[name]} MiB)", flush=True)
    finally:
        mount.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{size / MiB:.0f} MiB sequential size, goal {args.goal}, 3 chunkservers on one host, "
          f"{os.cpu_count()} cores; tarball of {entries} entries")
    print(f"{'workload':16} {'local':>12} {'dfs':>12} {'unit':>8} {'dfs/local':>10} {'mount RSS':>10}")
    for name, local_value, dfs_value, unit in results:
        ratio = local_value / dfs_value if unit == "s" else dfs_value / local_value
        print(f"{name:16} {local_value:12.1f} {dfs_value:12.1f} {unit + '/s' if unit == 'MB' else unit:>8} "
              f"{ratio:10.2f} {peaks[name]:6d} MiB")
    print(f"\nmount peak RSS: {max(peaks.values(), default=0)} MiB (cap on its buffers: --memory-cap, 256 MiB)")


if __name__ == "__main__":
    main()
