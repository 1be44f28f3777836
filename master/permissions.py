"""POSIX permission checks of the namespace, as Linux makes them (the one place they are written).

A `Caller` (uid, gid, supplementary groups) comes with every request (master/auth.py) and is handed
to the namespace, placement and xattr operations, which call these checks inside their transactions
on the rows they read anyway. uid 0 passes every check except execute (search) on a file without
any x bit. Errors are Linux's: EACCES for missing permission bits, EPERM for what only an owner (or
root) may do.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field
from typing import Any

from dfs.errors import DfsError

R_OK, W_OK, X_OK = 4, 2, 1


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    #: Its key may act for other users (scope proxy or admin): a batch's changes may name who made them.
    proxy: bool = field(default=False, compare=False)

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "groups": sorted(self.groups)}


ROOT = Caller(0, 0)


def permitted(caller: Caller, row: Any, mask: int) -> bool:
    """Whether `caller` may read (4), write (2), execute/search (1) the inode `row` (mode, uid, gid)."""
    mode = row.mode
    if caller.uid == 0:
        return not mask & X_OK or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if caller.uid == row.uid:
        bits = mode >> 6
    elif caller.in_group(row.gid):
        bits = mode >> 3
    else:
        bits = mode
    return bits & mask == mask


_WHAT = {R_OK: "read", W_OK: "write", X_OK: "search", R_OK | W_OK: "read and write", W_OK | X_OK: "write"}


def require(caller: Caller, row: Any, mask: int, where: str = "") -> None:
    if not permitted(caller, row, mask):
        action = _WHAT.get(mask, "access")
        raise DfsError(errno.EACCES, f"permission denied: {action} inode {row.id}{where} as uid {caller.uid}")


def require_owner(caller: Caller, row: Any, action: str) -> None:
    if caller.uid != 0 and caller.uid != row.uid:
        raise DfsError(errno.EPERM, f"only the owner of inode {row.id} (or root) may {action}")


def require_may_delete(caller: Caller, folder: Any, victim: Any) -> None:
    """Removing or replacing `victim`'s name in `folder`: write and search on the folder, and in a
    sticky folder (/tmp) only the owner of the file or of the folder may do it."""
    require(caller, folder, W_OK | X_OK)
    if folder.mode & stat.S_ISVTX and caller.uid not in (0, folder.uid, victim.uid):
        raise DfsError(errno.EPERM, f"directory {folder.id} is sticky: only the owner of inode {victim.id} "
                       "or of the directory may remove or rename it")


def check_setattr(caller: Caller, row: Any, *, mode: int | None, uid: int | None, gid: int | None,
                  size: int | None, times_set: bool, times_now: bool) -> int | None:
    """Check a setattr; returns the permission bits to store (S_ISGID dropped for a caller outside
    the file's group, as chmod(2) does on Linux), or None when the mode does not change."""
    if caller.uid == 0:
        return mode
    owner = caller.uid == row.uid
    if size is not None:
        require(caller, row, W_OK)
    if uid is not None and (uid != row.uid or not owner):
        raise DfsError(errno.EPERM, f"only root may change the owner of inode {row.id}")
    if gid is not None and not (owner and (gid == row.gid or caller.in_group(gid))):
        raise DfsError(errno.EPERM, f"only the owner of inode {row.id}, into a group of theirs, may change its group")
    if mode is not None:
        if owner:
            if mode & stat.S_ISGID and not caller.in_group(row.gid if gid is None else gid):
                mode &= ~stat.S_ISGID
        elif _kills_privileges(row.mode, mode):  # whoever may write the file may have its set-id bits dropped
            require(caller, row, W_OK)
        else:
            require_owner(caller, row, "change its mode")
    if times_set:
        require_owner(caller, row, "set its times")
    if times_now and not owner:
        require(caller, row, W_OK)
    return mode


def _kills_privileges(old: int, new: int) -> bool:
    """`new` is `old` without some of S_ISUID/S_ISGID and nothing else: what the kernel asks of a FUSE
    file system (a chmod as the writer) when someone other than the owner writes to a set-id file."""
    old &= 0o7777
    dropped = old & ~new
    return bool(dropped) and new | dropped == old and not dropped & ~(stat.S_ISUID | stat.S_ISGID)


def kill_suid(caller: Caller, mode: int) -> int | None:
    """`mode` without set-user-ID (and set-group-ID when group-executable) after a write or chown
    by someone other than root, as Linux clears them; None when nothing changes."""
    if caller.uid == 0 or stat.S_ISDIR(mode):
        return None
    kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
    return mode & ~kill if mode & kill else None


def check_xattr(caller: Caller, row: Any, name: str, write: bool) -> None:
    """Linux's xattr_permission: trusted.* is root's; security.*/system.* are readable by all and
    writable by root; user.* (and anything else) needs read or write permission on the inode, only
    regular files and folders have them, and in a sticky folder only its owner writes them."""
    if caller.uid == 0:
        return
    if name.startswith("trusted."):
        raise DfsError(errno.EPERM, f"trusted.* attributes are root's (inode {row.id})")
    if name.startswith(("security.", "system.")):
        if write:
            raise DfsError(errno.EPERM, f"only root may change {name} (inode {row.id})")
        return
    if not (stat.S_ISREG(row.mode) or stat.S_ISDIR(row.mode)):
        if write:
            raise DfsError(errno.EPERM, f"inode {row.id} is neither a file nor a folder: no user attributes")
        raise DfsError(errno.ENODATA, f"inode {row.id} has no extended attribute {name!r}")
    if write and stat.S_ISDIR(row.mode) and row.mode & stat.S_ISVTX and caller.uid != row.uid:
        raise DfsError(errno.EPERM, f"directory {row.id} is sticky: only its owner may change its attributes")
    require(caller, row, W_OK if write else R_OK)


def visible_xattr(caller: Caller, name: str) -> bool:
    """listxattr shows trusted.* to root only."""
    return caller.uid == 0 or not name.startswith("trusted.")
