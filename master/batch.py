"""`batch`: the changes a client made on its own in its delegated folders (master/delegations.py),
applied in the order it made them.

Each change is checked as the same call would be (names, permissions, the entry it needs or must
not find), and a new inode takes the number and time the client already gave it (one of the
numbers `reserve` handed to that session). The whole batch is one transaction; if a change fails,
the transaction is rolled back and the changes run again one transaction each, so that every
change gets its own answer and the others still land. A folder made by a change in a folder the
session holds is delegated to it too: nobody else can know it yet.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from dfs.errors import DfsError
from dfs.master.db import Database
from dfs.master.delegations import Delegations
from dfs.master.inode_ids import Reservations
from dfs.master.namespace import Namespace, NewInode, attr_json, check_symlink_target
from dfs.master.permissions import ROOT, Caller
from dfs.master.placement import Placement
from dfs.names import validate_name
from dfs.protocol import MAX_FILE_SIZE

log = logging.getLogger("master.batch")

KINDS = ("create", "mkdir", "symlink", "unlink", "commit")
#: Changes in one batch.
MAX_CHANGES = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    op: str  # one of KINDS
    parent: int = 0
    name: str = ""
    inode: int = 0  # a new inode's number (reserved by the session); the file a commit is of
    time_ns: int = 0  # a new inode's times, and the folder's new mtime and ctime; a commit's ctime
    mode: int | None = None  # a new inode's; the permission bits a commit sets
    uid: int = 0
    gid: int = 0
    target: str = ""  # symlinks
    held: frozenset[int] = field(default_factory=frozenset)  # unlink: inodes the client has open
    size: int = 0  # commit: the file's size, its mtime and atime, and its bytes (resident data)
    mtime_ns: int | None = None
    atime_ns: int | None = None
    resident: list[tuple[int, bytes]] = field(default_factory=list)
    who: Caller = ROOT  # who made it: it is checked as that user's call

    @property
    def new(self) -> NewInode:
        return NewInode(self.inode, self.time_ns)


class DirBatch:
    def __init__(self, db: Database, namespace: Namespace, placement: Placement, delegations: Delegations,
                 reservations: Reservations) -> None:
        self.db = db
        self.namespace = namespace
        self.placement = placement
        self.delegations = delegations
        self.reservations = reservations

    async def apply(self, session: str, changes: list[Change]) -> list[dict[str, Any]]:
        """One answer per change: {"attr"} for a new inode, {"mtime_ns"} for an unlink, or an error."""
        refused: dict[int, DfsError] = {}
        for index, change in enumerate(changes):
            try:
                self._check(session, change)
            except DfsError as err:
                refused[index] = err
        if not refused:
            try:
                outcomes = await self.db.run_write(lambda conn: [self._apply(conn, c) for c in changes])
            except DfsError:
                pass  # one of them failed: each on its own, below
            else:
                return [self._after(session, c, outcome) for c, outcome in zip(changes, outcomes, strict=True)]
        answers = []
        for index, change in enumerate(changes):
            try:
                if index in refused:
                    raise refused[index]
                outcome = await self.db.run_write(lambda conn, c=change: self._apply(conn, c))  # type: ignore[misc]
            except DfsError as err:
                log.warning("client %s: %s of %s refused: %s", session[:8], change.op, _what(change), err.message)
                answers.append(err.to_json())
            else:
                answers.append(self._after(session, change, outcome))
        return answers

    def _check(self, session: str, change: Change) -> None:
        """What can be checked before the transaction: names, targets, and the new inode's number."""
        if change.op == "commit":
            if change.mode is not None and change.mode > 0o777:
                raise DfsError(errno.EINVAL, "a commit sets permission bits (0o777) only")
            if change.size > MAX_FILE_SIZE:
                raise DfsError(errno.EFBIG, f"size {change.size} is larger than the limit {MAX_FILE_SIZE}")
            return
        if change.op == "create":
            self.namespace.check_create(change.name, change.mode or 0, None, change.who)
        else:
            validate_name(change.name)
        if change.op == "symlink":
            check_symlink_target(change.target)
        if change.op != "unlink" and not self.reservations.claim(session, change.inode):
            raise DfsError(errno.EINVAL, f"inode number {change.inode} was not reserved by this client")

    def _apply(self, conn: Connection, change: Change) -> Any:
        ns, caller = self.namespace, change.who
        if change.op == "commit":
            return self.placement.commit_in(conn, change.inode, change.size, change.mtime_ns, change.atime_ns,
                                            change.mode, change.resident, caller, change.time_ns)
        if change.op == "create":
            return ns.create_in(conn, change.parent, change.name, change.mode or 0, change.uid, change.gid, True, None,
                                0, caller, change.new)[0]
        if change.op == "mkdir":
            return ns.mkdir_in(conn, change.parent, change.name, change.mode or 0, change.uid, change.gid, caller,
                               change.new)
        if change.op == "symlink":
            return ns.symlink_in(conn, change.parent, change.name, change.target, change.uid, change.gid, caller,
                                 change.new)
        return ns.unlink_in(conn, change.parent, change.name, change.held, caller, change.time_ns)

    def _after(self, session: str, change: Change, outcome: Any) -> dict[str, Any]:
        """The answer to one applied change, once its transaction committed."""
        if change.op == "unlink":
            deleted, stamped = outcome
            self.namespace.forget_deleted(deleted)
            return {"mtime_ns": stamped}
        if change.op == "mkdir":
            held = self.delegations.holder(change.parent) == session
            return {"attr": attr_json(outcome), "delegated": held and self.delegations.grant(session, outcome.inode)}
        return {"attr": attr_json(outcome)}


def _what(change: Change) -> str:
    return f"inode {change.inode}" if change.op == "commit" else f"{change.name!r} in folder {change.parent}"
