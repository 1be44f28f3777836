"""Block checksums: xxh3_64 of every 64 KiB block of a chunk.

The digest of a chunk (for comparing replicas) is the xxh3_64 of its block digests in order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

BLOCK_SIZE = 64 * 1024
DIGEST = struct.Struct("<Q")


def block_digest(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def digests_of(data: bytes | bytearray | memoryview, block_size: int = BLOCK_SIZE) -> list[int]:
    """Digests of consecutive blocks of `data` (the last one may be short)."""
    view = memoryview(data)
    return [block_digest(view[i : i + block_size]) for i in range(0, len(view), block_size)]


def chunk_digest(block_digests: Iterable[int]) -> str:
    """One hex digest standing for a whole chunk: equal digests mean equal content."""
    h = xxhash.xxh3_64()
    for d in block_digests:
        h.update(DIGEST.pack(d))
    return h.hexdigest()
