"""The mount behaves as a local disk would where the file-system community's suites found it did not
(xfstests, fsx, cthon04): sizes, appends, holes. Each test reproduces one finding on ext4's terms."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dfs.client.sync import SyncClient

MiB = 1024 * 1024


def test_seek_end_follows_writes_across_write_buffer_flushes(mnt: Path) -> None:
    """A writer extending its file at SEEK_END (databases, log writers) must see the size it wrote,
    also while a full write buffer (8 MiB) is on its way to the chunkservers."""
    path = mnt / "grows"
    piece = 8192
    count = 2 * 8 * MiB // piece  # two full write buffers
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    wrong = []
    try:
        for i in range(count):
            end = os.lseek(fd, 0, os.SEEK_END)
            if end != i * piece:
                wrong.append((i, end))
            os.pwrite(fd, i.to_bytes(4, "big") * (piece // 4), end)
            size = os.fstat(fd).st_size
            if size != (i + 1) * piece:
                wrong.append((i, size))
    finally:
        os.close(fd)
    assert not wrong, f"{len(wrong)} of {count} sizes went backwards, first {wrong[:3]}"
    assert path.stat().st_size == count * piece
    with path.open("rb") as f:
        for i in range(count):
            assert f.read(piece) == i.to_bytes(4, "big") * (piece // 4), f"piece {i} was overwritten"


def test_two_processes_appending_keep_every_line(mnt: Path, mounted_cluster) -> None:
    """`echo line >> f` from two shells at once, in a folder this mount did not make (so every open
    asks the master): the kernel appends at the size it has, which must never move back."""
    cluster, _ = mounted_cluster
    with SyncClient(cluster.master_url) as fs:
        fs.makedir(f"/{mnt.name}/elsewhere")
    folder = mnt / "elsewhere"
    for round_ in range(3):
        path = folder / f"log{round_}"
        script = f'for i in $(seq 300); do echo "$1 line $i" >> {path}; done'
        writers = [subprocess.Popen(["bash", "-c", script, "bash", who]) for who in ("a", "b")]
        for writer in writers:
            assert writer.wait(timeout=120) == 0
        lines = path.read_text().splitlines()
        expected = sorted(f"{who} line {i}" for who in ("a", "b") for i in range(1, 301))
        assert sorted(lines) == expected, f"round {round_}: {len(lines)} lines of 600"


def test_rename_between_two_names_of_one_file_changes_nothing(mnt: Path) -> None:
    """rename(b, a) where a and b are hard links of one inode is a no-op (POSIX; cthon04 nfsidem)."""
    a, b = mnt / "a", mnt / "b"
    a.write_bytes(b"one file")
    os.link(a, b)
    os.rename(b, a)
    assert a.read_bytes() == b.read_bytes() == b"one file"
    assert os.stat(a).st_nlink == os.stat(b).st_nlink == 2
    assert sorted(os.listdir(mnt)) == ["a", "b"]
    os.unlink(b)
    assert os.stat(a).st_nlink == 1
