"""Dirty byte ranges of one file, gathered before they are sent: `DirtyExtents`.

Extents never overlap; a write over buffered bytes replaces them, a write touching an extent's
edge joins it, so sequential writes grow one extent and random ones keep theirs apart.
"""

from __future__ import annotations

import bisect


class DirtyExtents:
    def __init__(self) -> None:
        self._starts: list[int] = []
        self._data: list[bytearray] = []
        self.total = 0

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def end(self) -> int:
        """One past the last dirty byte (0 when clean)."""
        return max((s + len(d) for s, d in zip(self._starts, self._data, strict=True)), default=0)

    def add(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        end = offset + len(data)
        # first extent that ends at or after `offset`, last that starts at or before `end`
        first = bisect.bisect_left(self._starts, offset)
        if first and self._starts[first - 1] + len(self._data[first - 1]) >= offset:
            first -= 1
        last = bisect.bisect_right(self._starts, end)
        if last - first == 1 and self._starts[first] <= offset:
            # within or past the end of one extent (a sequential write): in place, amortised growth,
            # not a new buffer of the whole extent per write
            extent = self._data[first]
            before = len(extent)
            start = offset - self._starts[first]
            extent[start : start + len(data)] = data
            self.total += len(extent) - before
            return
        if first == last:  # touches nothing
            self._starts.insert(first, offset)
            self._data.insert(first, bytearray(data))
            self.total += len(data)
            return
        start = min(offset, self._starts[first])
        stop = max(end, self._starts[last - 1] + len(self._data[last - 1]))
        merged = bytearray(stop - start)
        for s, d in zip(self._starts[first:last], self._data[first:last], strict=True):
            merged[s - start : s - start + len(d)] = d
            self.total -= len(d)
        merged[offset - start : end - start] = data
        self._starts[first:last] = [start]
        self._data[first:last] = [merged]
        self.total += len(merged)

    def overlaps(self, offset: int, size: int) -> bool:
        i = bisect.bisect_right(self._starts, offset + size - 1)
        return i > 0 and self._starts[i - 1] + len(self._data[i - 1]) > offset

    def items(self) -> list[tuple[int, bytearray]]:
        """Every extent, in order, left in place."""
        return list(zip(self._starts, self._data, strict=True))

    def take(self) -> list[tuple[int, bytearray]]:
        """Every extent, in order, leaving the set empty (the buffers are handed over, not copied)."""
        out = list(zip(self._starts, self._data, strict=True))
        self._starts, self._data, self.total = [], [], 0
        return out
