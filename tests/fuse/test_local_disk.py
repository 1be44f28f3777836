"""The mount behaves as a local disk would where the file-system community's suites found it did not
(xfstests, fsx, cthon04): sizes, appends, holes. Each test reproduces one finding on ext4's terms."""

from __future__ import annotations

import os
from pathlib import Path

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
