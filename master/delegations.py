"""Folder delegations (docs/PROTOCOL.md "Folder delegations"): a client session that made a folder
changes its entries on its own, and sends the changes later in batches.

A create or unlink that waits for the master costs a round trip (~0.5 ms here), and a mount
making files one after another makes nothing else. A session that holds a folder's delegation
decides creates and unlinks in it alone (it knows every entry: nobody else has changed the folder
since it was granted) and answers the kernel at once; the changes reach the master in order, in
batches (`batch`), before any other call of that session. CephFS's async dirops, NFSv4's directory
delegations and Lustre's write-back cache do the same.

The promise is kept by recalling: before the master runs a call of another session that touches a
delegated folder (its entries, its attributes, or a path that may walk through it), it asks the
holder to send its changes and give the folder back, and waits for that (`settle`). The holder
hears about recalls on a long call (`recalls`) it keeps open; a holder that does not answer
within `timeout` loses the delegation anyway (its unsent changes are then applied, or refused,
as ordinary calls are), and one whose `recalls` call ends with its connection loses all of them.

All state is the event loop's (no locks) and in memory: a master that restarts has granted
nothing, and the changes clients still send are checked as any call is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar

log = logging.getLogger("master.delegations")

#: Whether the connection the current call came on is still open (a long `recalls` call watches it);
#: set by the HTTP handler and the channel (master/channel.py).
connection_alive: ContextVar[Callable[[], bool]] = ContextVar("connection_alive", default=lambda: True)
#: Seconds a call waits for a holder to give a folder back before the delegation is revoked.
RECALL_TIMEOUT = 10.0
#: Seconds a `recalls` call may wait for a recall before it is answered with none.
MAX_WAIT = 60.0
#: A session that has not been waiting for recalls for this long is taken to be gone.
SILENT_AFTER = 5.0
#: Seconds between two checks that a waiting `recalls` call's connection is still open.
ALIVE_EVERY = 1.0
#: Folders one session may hold (a mount making a deep tree holds every folder of it).
MAX_PER_SESSION = 100_000


class Delegations:
    def __init__(self, timeout: float = RECALL_TIMEOUT) -> None:
        self.timeout = timeout
        self._holder: dict[int, str] = {}  # folder -> session
        self._held: dict[str, set[int]] = {}  # session -> folders
        self._recalled: dict[str, set[int]] = {}  # session -> folders asked back (or revoked), not yet told
        self._wake: dict[str, asyncio.Event] = {}  # a session's waiting `recalls` call
        self._listening: dict[str, int] = {}  # session -> `recalls` calls waiting now
        self._last_heard: dict[str, float] = {}  # session -> when its last `recalls` call ended
        self._gone: dict[int, asyncio.Event] = {}  # recalled folder -> set once it is given back

    def __len__(self) -> int:
        return len(self._holder)

    def holder(self, folder: int) -> str | None:
        return self._holder.get(folder)

    def listening(self, session: str) -> bool:
        """Whether `session` waits for recalls (or did a moment ago): only such a session may hold folders."""
        return bool(self._listening.get(session)) or time.monotonic() - self._last_heard.get(session, -1e9) \
            <= SILENT_AFTER

    def grant(self, session: str, folder: int) -> bool:
        """Delegate `folder` to `session` (a folder it just made, or one made under a delegation)."""
        if not session or folder in self._holder:
            return self._holder.get(folder) == session and bool(session)
        if not self.listening(session):
            return False
        held = self._held.setdefault(session, set())
        if len(held) >= MAX_PER_SESSION:
            return False
        self._holder[folder] = session
        held.add(folder)
        return True

    def others(self, session: str | None, folders: Iterable[int] | None) -> list[int]:
        """Of `folders` (None: all), those delegated to a session other than `session`."""
        if not self._holder:
            return []
        if folders is None:
            return [f for f, holder in self._holder.items() if holder != session]
        return [f for f in folders if (holder := self._holder.get(f)) is not None and holder != session]

    async def settle(self, session: str | None, folders: Iterable[int] | None) -> None:
        """Before a call of `session` touching `folders` (None: any folder): every one of them that
        another session holds is recalled, and given back (or revoked) before this returns."""
        held = self.others(session, folders)
        if not held:
            return
        waits = [self._recall(folder) for folder in held]
        try:
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in waits)), self.timeout)
        except TimeoutError:
            for folder in held:
                holder = self._holder.get(folder)
                if holder is not None and holder != session:
                    log.warning("folder %d: client %s did not give back its delegation within %.0f s: revoked "
                                "(changes it sends later are checked as ordinary calls)", folder, holder[:8],
                                self.timeout)
                    self._drop(folder, tell=True)

    def _recall(self, folder: int) -> asyncio.Event:
        holder = self._holder[folder]
        event = self._gone.get(folder)
        if event is None:
            event = self._gone[folder] = asyncio.Event()
        if not self.listening(holder):
            log.info("folder %d: client %s is not listening for recalls: delegation revoked", folder, holder[:8])
            self._drop(folder, tell=True)
            return event
        self._recalled.setdefault(holder, set()).add(folder)
        wake = self._wake.get(holder)
        if wake is not None:
            wake.set()
        return event

    def _drop(self, folder: int, tell: bool = False) -> None:
        holder = self._holder.pop(folder, None)
        if holder is not None:
            self._held.get(holder, set()).discard(folder)
            if tell:  # its next `recalls` answer says so
                self._recalled.setdefault(holder, set()).add(folder)
        event = self._gone.pop(folder, None)
        if event is not None:
            event.set()

    def release(self, session: str, folders: Iterable[int]) -> None:
        """`session` gives `folders` back (after sending its changes in them)."""
        told = self._recalled.get(session)
        for folder in folders:
            if told is not None:
                told.discard(folder)
            if self._holder.get(folder) == session:
                self._drop(folder)

    async def recalls(self, session: str, wait: float, alive: Callable[[], bool] = lambda: True) -> list[int]:
        """The folders `session` must give back (or has lost), waiting up to `wait` seconds for one.
        A call that is cancelled, or whose connection closes (`alive`), ends every delegation of the session."""
        self._listening[session] = self._listening.get(session, 0) + 1
        try:
            gone = not await self._wait_for_recall(session, min(wait, MAX_WAIT), alive)
        except asyncio.CancelledError:
            self.end_session(session)
            raise
        finally:
            waiting = self._listening.get(session, 1) - 1
            if waiting > 0:
                self._listening[session] = waiting
            else:
                self._listening.pop(session, None)
        if gone:
            log.info("client %s stopped listening for recalls: its %d delegations end", session[:8],
                     self.count(session))
            self.end_session(session)
            return []
        self._last_heard[session] = time.monotonic()
        return sorted(self._recalled.get(session, ()))

    async def _wait_for_recall(self, session: str, wait: float, alive: Callable[[], bool]) -> bool:
        """Wait until `session` has recalls or `wait` seconds passed: False if its connection closed meanwhile."""
        if self._recalled.get(session):
            return True
        event = self._wake.setdefault(session, asyncio.Event())
        event.clear()
        deadline = time.monotonic() + wait
        while not event.is_set() and time.monotonic() < deadline:
            if not alive():
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(ALIVE_EVERY, max(deadline - time.monotonic(), 0.0)))
        return True

    def end_session(self, session: str) -> None:
        """`session` is gone: its folders are nobody's. A client still alive sends its pending changes
        again (dfs/client/dirops.py), checked as the calls they stand for; a dead one's are gone
        with it, as a crashed disk's unsynced metadata is."""
        for folder in list(self._held.pop(session, ())):
            self._drop(folder)
        self._recalled.pop(session, None)
        self._wake.pop(session, None)
        self._listening.pop(session, None)
        self._last_heard.pop(session, None)

    def count(self, session: str) -> int:
        return len(self._held.get(session, ()))
