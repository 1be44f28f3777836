"""Write leases, kept in memory only: one holder per chunk slot at a time.

A master restart forgets every lease; that is safe because each grant bumps the chunk's version,
and a client whose lease is gone simply asks again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Grant:
    client: str
    inode: int
    index: int
    chunk_id: int
    version: int
    servers: list[tuple[int, str]]  # (server id, url) in chain order
    expiry: float  # time.monotonic()

    def valid(self, now: float) -> bool:
        return now < self.expiry

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "inode": self.inode, "index": self.index, "chunk_id": self.chunk_id, "version": self.version,
            "servers": [{"id": sid, "url": url} for sid, url in self.servers],
            "expires_in": round(max(0.0, self.expiry - now), 3),
        }


class LeaseTable:
    """(inode, index) -> Grant, with an index by inode so that deleting a file drops its leases."""

    def __init__(self) -> None:
        self._grants: dict[tuple[int, int], Grant] = {}
        self._by_inode: dict[int, set[int]] = {}
        #: Grants that expired (never given back), for lease recovery (master/recovery.py) to take.
        self.expired: list[Grant] = []

    def __len__(self) -> int:
        return len(self._grants)

    def get(self, inode: int, index: int) -> Grant | None:
        """The valid grant on a slot, if any (an expired one is dropped)."""
        grant = self._grants.get((inode, index))
        if grant is not None and not grant.valid(time.monotonic()):
            self._remove(inode, index)
            self.expired.append(grant)
            return None
        return grant

    def put(self, grant: Grant) -> None:
        self._grants[(grant.inode, grant.index)] = grant
        self._by_inode.setdefault(grant.inode, set()).add(grant.index)

    def _remove(self, inode: int, index: int) -> None:
        self._grants.pop((inode, index), None)
        indexes = self._by_inode.get(inode)
        if indexes is not None:
            indexes.discard(index)
            if not indexes:
                del self._by_inode[inode]

    def release(self, inode: int, client: str | None = None, first_index: int = 0) -> int:
        """Drop the leases on `inode` (those of `client` only, if given) at slots >= first_index."""
        dropped = 0
        for index in list(self._by_inode.get(inode, ())):
            grant = self._grants[(inode, index)]
            if index >= first_index and (client is None or grant.client == client):
                self._remove(inode, index)
                dropped += 1
        return dropped

    def drop_chunk(self, inode: int, index: int) -> None:
        self._remove(inode, index)

    def expire(self) -> int:
        """Forget expired grants (called now and then so the table does not grow)."""
        now = time.monotonic()
        stale = [key for key, grant in self._grants.items() if not grant.valid(now)]
        for inode, index in stale:
            self.expired.append(self._grants[(inode, index)])
            self._remove(inode, index)
        return len(stale)

    def take_expired(self) -> list[Grant]:
        """The grants that expired since the last call (each once)."""
        self.expire()
        taken, self.expired = self.expired, []
        return taken
