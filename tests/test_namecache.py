"""The mount's name cache (fuse/namecache.py): what it may answer without asking the master, and for how long."""

from __future__ import annotations

import stat
import time

from dfs.fuse.namecache import NameCache
from dfs.protocol import Attr

TTL = 0.2


def attr(inode: int, mode: int = stat.S_IFREG | 0o644, ctime_ns: int = 1, nlink: int = 1) -> Attr:
    return Attr(inode=inode, mode=mode, uid=0, gid=0, size=0, nlink=nlink, atime_ns=1, mtime_ns=1, ctime_ns=ctime_ns)


def folder_with_listing(names: NameCache) -> Attr:
    folder = attr(10, stat.S_IFDIR | 0o755, nlink=2)
    names.put("/d", folder)
    names.put("/d/a", attr(11))
    names.mark_complete(folder.inode)
    return folder


def test_a_complete_folder_denies_unknown_names_only_within_ttl() -> None:
    names = NameCache(TTL)
    folder_with_listing(names)
    assert names.lookup("/d/new") is False
    assert isinstance(names.lookup("/d/a"), Attr)
    time.sleep(TTL * 1.5)
    names.put("/d", attr(10, stat.S_IFDIR | 0o755))  # the folder's own name refreshed: its listing is not
    assert names.lookup("/d/new") is None


def test_a_name_that_expired_is_unknown_not_missing() -> None:
    names = NameCache(TTL)
    names.put("/d", attr(10, stat.S_IFDIR | 0o755))
    names.put("/d/a", attr(11))
    time.sleep(TTL * 1.5)
    names.put("/d", attr(10, stat.S_IFDIR | 0o755))
    names.mark_complete(10)
    assert names.lookup("/d/a") is None  # it existed: a complete folder must not deny it
    names.put_missing("/d/b")
    assert names.lookup("/d/b") is False


def test_removing_a_file_keeps_its_folder_complete() -> None:
    names = NameCache(TTL)
    folder_with_listing(names)
    names.removed("/d/a")
    assert names.lookup("/d/a") is False
    assert names.lookup("/d/other") is False
    assert names.attr(11) is None


def test_an_added_entry_moves_the_folders_times_but_not_its_expiry() -> None:
    names = NameCache(TTL)
    folder = folder_with_listing(names)
    names.entry_added(folder.inode, attr(12, stat.S_IFDIR | 0o755, ctime_ns=5_000))
    moved = names.attr(folder.inode)
    assert moved is not None
    assert (moved.mtime_ns, moved.ctime_ns, moved.nlink) == (5_000, 5_000, 3)
    time.sleep(TTL * 1.5)
    names.entry_added(folder.inode, attr(13, ctime_ns=6_000))
    assert names.attr(folder.inode) is None  # other clients' changes to the folder show within ttl


def test_absent_security_xattrs_are_remembered_within_ttl() -> None:
    names = NameCache(TTL)
    names.put_xattr_absent(20)  # a file just made has none
    assert names.xattr_absent(20, "security.capability")
    assert not names.xattr_absent(20, "user.x")  # only security.*: their answer is the same for every caller
    names.xattr_set(20, "security.capability")
    assert not names.xattr_absent(20, "security.capability")
    names.put_xattr_absent(21, "security.selinux")
    assert names.xattr_absent(21, "security.selinux")
    assert not names.xattr_absent(21, "security.capability")
    time.sleep(TTL * 1.5)
    assert not names.xattr_absent(21, "security.selinux")


def test_no_ttl_caches_nothing() -> None:
    names = NameCache(0)
    folder_with_listing(names)
    names.put_xattr_absent(11)
    assert names.lookup("/d/a") is None
    assert names.lookup("/d/new") is None
    assert not names.xattr_absent(11, "security.capability")


def test_a_missing_name_is_trusted_no_longer_than_the_folder_it_was_asked_in() -> None:
    names = NameCache(TTL)
    names.put("/d", attr(10, stat.S_IFDIR | 0o755))
    inode, until = names.mapping("/d") or (0, 0.0)
    assert inode == 10
    names.put_missing("/d/x", until=until - TTL / 2)  # /d was put half a ttl earlier than this answer
    assert names.lookup("/d/x") is False
    time.sleep(TTL * 0.6)
    assert names.lookup("/d/x") is None


def test_an_answer_older_than_a_change_made_here_does_not_replace_it() -> None:
    """A getattr the master answered before this mount's commit of the file must not take the
    size back (as the kernel's attr_version guards its own inode cache)."""
    names = NameCache(TTL)
    mark = names.mark()  # a lookup is sent ...
    names.changed_here(11)  # ... this mount commits the file, with its new size ...
    names.put_attr(attr(11, ctime_ns=2))
    names.put("/d/a", attr(11, ctime_ns=1), since=mark)  # ... and the older answer comes in
    assert names.changed_since(11, mark) and not names.changed_since(12, mark)
    assert names.attr(11).ctime_ns == 2
    assert names.inode_of("/d/a") == 11  # the name itself is still good
    later = names.mark()
    names.put("/d/a", attr(11, ctime_ns=3), since=later)
    assert names.attr(11).ctime_ns == 3


def test_changes_made_here_are_remembered_with_zero_timeouts() -> None:
    names = NameCache(0)
    mark = names.mark()
    names.changed_here(5)
    assert names.changed_since(5, mark)
