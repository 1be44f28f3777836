"""DirtyExtents against a plain bytearray model."""

from __future__ import annotations

import random

from dfs.fuse.extents import DirtyExtents


def test_random_writes_match_a_model() -> None:
    rng = random.Random(1)
    for _ in range(200):
        extents = DirtyExtents()
        model = bytearray(4096)
        written = bytearray(4096)
        for _ in range(rng.randrange(1, 30)):
            offset = rng.randrange(0, 4000)
            data = bytes([rng.randrange(1, 255)]) * rng.randrange(1, 96)
            data = data[: 4096 - offset]
            extents.add(offset, data)
            model[offset : offset + len(data)] = data
            written[offset : offset + len(data)] = b"\1" * len(data)
        assert extents.total == sum(written)
        rebuilt = bytearray(4096)
        previous_end = -1
        for offset, data in extents.take():
            assert offset > previous_end  # ordered, apart (adjacent ones would have merged)
            previous_end = offset + len(data)
            rebuilt[offset : offset + len(data)] = data
        assert rebuilt == bytearray(m if w else 0 for m, w in zip(model, written, strict=True))
        assert not extents and extents.total == 0


def test_overlap_queries() -> None:
    extents = DirtyExtents()
    extents.add(100, b"x" * 10)
    assert extents.overlaps(105, 1) and extents.overlaps(90, 11) and not extents.overlaps(110, 5)
    assert not extents.overlaps(0, 100) and extents.end == 110
