"""Every file system operation through a real mount, with its error cases."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

MiB = 1024 * 1024


def expect_errno(code: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    assert exc.value.errno == code, f"{fn.__name__}{args}: {exc.value!r}"


def test_write_read_sizes(mnt: Path) -> None:
    for size in (0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 5):
        data = os.urandom(size)
        (mnt / f"f{size}").write_bytes(data)
        assert (mnt / f"f{size}").stat().st_size == size
        assert (mnt / f"f{size}").read_bytes() == data


def test_large_file_digest(mnt: Path) -> None:
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with open(mnt / "big", "wb") as f:
        for i in range(20):
            piece = block[i:] + block[:i]
            digest.update(piece)
            f.write(piece)
    check = hashlib.sha256()
    with open(mnt / "big", "rb") as f:
        while piece := f.read(300_000):
            check.update(piece)
    assert check.hexdigest() == digest.hexdigest()


def test_read_after_write_same_and_other_handle(mnt: Path) -> None:
    path = mnt / "raw"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    other = os.open(path, os.O_RDONLY)
    try:
        os.write(fd, b"x" * 5000)
        os.pwrite(fd, b"abc", 2 * MiB)  # sparse gap across a chunk
        assert os.pread(fd, 10, 0) == b"x" * 10
        assert os.pread(other, 3, 2 * MiB) == b"abc"
        assert os.pread(other, 4, MiB) == b"\0" * 4
        assert os.fstat(other).st_size == 2 * MiB + 3
    finally:
        os.close(fd)
        os.close(other)


def test_overwrite_and_append(mnt: Path) -> None:
    path = mnt / "ow"
    data = bytearray(os.urandom(2 * MiB + 100))
    path.write_bytes(data)
    with open(path, "r+b") as f:
        f.seek(MiB - 10)
        f.write(b"Z" * 20)
    data[MiB - 10 : MiB + 10] = b"Z" * 20
    with open(path, "ab") as f:
        f.write(b"tail")
    assert path.read_bytes() == bytes(data) + b"tail"


def test_rewrites_while_buffers_are_in_flight(mnt: Path) -> None:
    """Full write buffers go out while the next fills; a later buffer of the same bytes never
    overtakes an earlier one, and sequential buffers all land."""
    path = mnt / "rewritten"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for i in range(6):  # each fills the 8 MiB buffer with the same range: sends in order
            os.pwrite(fd, bytes([i]) * (8 * MiB), 0)
        tail = os.urandom(20 * MiB + 7)  # several buffers after it, sent two at a time
        for pos in range(0, len(tail), MiB):
            os.pwrite(fd, tail[pos : pos + MiB], 8 * MiB + pos)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read(8 * MiB) == bytes([5]) * (8 * MiB)
        assert f.read() == tail


def test_truncate_and_ftruncate(mnt: Path) -> None:
    path = mnt / "tr"
    data = os.urandom(2 * MiB)
    path.write_bytes(data)
    os.truncate(path, MiB + 7)
    assert path.read_bytes() == data[: MiB + 7]
    with open(path, "r+b") as f:
        f.truncate(3 * MiB)
    got = path.read_bytes()
    assert got[: MiB + 7] == data[: MiB + 7] and got[MiB + 7 :] == bytes(3 * MiB - MiB - 7)
    with open(path, "wb"):  # O_TRUNC
        pass
    assert path.stat().st_size == 0


def test_open_flags(mnt: Path) -> None:
    path = mnt / "flags"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    expect_errno(errno.EEXIST, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    expect_errno(errno.ENOENT, os.open, mnt / "missing", os.O_RDONLY)
    expect_errno(errno.EISDIR, os.open, mnt, os.O_WRONLY)


def test_directories(mnt: Path) -> None:
    (mnt / "d" / "e").mkdir(parents=True)
    assert os.stat(mnt / "d").st_nlink == 3
    expect_errno(errno.EEXIST, os.mkdir, mnt / "d")
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "d")
    (mnt / "d" / "f").write_bytes(b"1")
    expect_errno(errno.ENOTDIR, os.listdir, mnt / "d" / "f")
    expect_errno(errno.ENOTDIR, os.mkdir, mnt / "d" / "f" / "x")
    expect_errno(errno.EISDIR, os.unlink, mnt / "d" / "e")
    expect_errno(errno.ENOTDIR, os.rmdir, mnt / "d" / "f")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mnt / ("n" * 256))
    # "d" was made here, so the mount holds its listing as complete: a too-long name is still not ENOENT
    expect_errno(errno.ENAMETOOLONG, os.stat, mnt / "d" / ("n" * 256))
    expect_errno(errno.ENAMETOOLONG, os.chmod, mnt / "d" / ("n" * 256), 0o600)
    assert sorted(os.listdir(mnt / "d")) == ["e", "f"]
    os.rmdir(mnt / "d" / "e")
    assert os.stat(mnt / "d").st_nlink == 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename(mnt: Path) -> None:
    (mnt / "a").write_bytes(b"a")
    (mnt / "b").write_bytes(b"b")
    os.rename(mnt / "a", mnt / "b")  # replaces
    assert (mnt / "b").read_bytes() == b"a" and not (mnt / "a").exists()
    (mnt / "c").write_bytes(b"c")
    expect_errno(errno.EEXIST, renameat2, mnt / "c", mnt / "b", 1)  # RENAME_NOREPLACE
    renameat2(mnt / "c", mnt / "b", 2)  # RENAME_EXCHANGE
    assert (mnt / "b").read_bytes() == b"c" and (mnt / "c").read_bytes() == b"a"
    (mnt / "dir" / "sub").mkdir(parents=True)
    expect_errno(errno.EINVAL, os.rename, mnt / "dir", mnt / "dir" / "sub" / "x")
    (mnt / "empty").mkdir()
    os.rename(mnt / "dir", mnt / "empty")  # over an empty folder
    assert (mnt / "empty" / "sub").is_dir()
    expect_errno(errno.EISDIR, os.rename, mnt / "c", mnt / "empty")


def test_links(mnt: Path) -> None:
    (mnt / "orig").write_bytes(b"data")
    os.link(mnt / "orig", mnt / "hard")
    assert os.stat(mnt / "hard").st_nlink == 2
    assert os.stat(mnt / "hard").st_ino == os.stat(mnt / "orig").st_ino
    expect_errno(errno.EEXIST, os.link, mnt / "orig", mnt / "hard")
    os.mkdir(mnt / "adir")
    expect_errno(errno.EPERM, os.link, mnt / "adir", mnt / "adir2")
    os.symlink("orig", mnt / "sym")
    assert os.readlink(mnt / "sym") == "orig"
    assert (mnt / "sym").read_bytes() == b"data"
    assert stat.S_ISLNK(os.lstat(mnt / "sym").st_mode)
    os.unlink(mnt / "orig")
    assert (mnt / "hard").read_bytes() == b"data"
    assert os.stat(mnt / "hard").st_nlink == 1


def test_attributes(mnt: Path) -> None:
    path = mnt / "attrs"
    path.write_bytes(b"x")
    os.chmod(path, 0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    os.chown(path, 1234, 5678)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.stat(path)
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert st.st_mtime_ns == 1_600_000_000_987_654_321
    before = os.stat(path).st_ctime_ns
    time.sleep(0.01)
    os.chmod(path, 0o600)
    assert os.stat(path).st_ctime_ns > before


def test_times_move_on_write(mnt: Path) -> None:
    path = mnt / "times"
    path.write_bytes(b"1")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    with open(path, "ab") as f:
        f.write(b"2")
    assert os.stat(path).st_mtime_ns > 1_000_000_000


def test_statfs(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_blocks > 0 and st.f_bavail > 0 and st.f_namemax == 255


def test_fifo_and_xattrs(mnt: Path) -> None:
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO(os.stat(mnt / "fifo").st_mode)
    path = mnt / "xa"
    path.write_bytes(b"")
    os.setxattr(path, "user.color", b"blue")
    assert os.getxattr(path, "user.color") == b"blue"
    assert "user.color" in os.listxattr(path)
    expect_errno(errno.EEXIST, os.setxattr, path, "user.color", b"red", os.XATTR_CREATE)
    os.removexattr(path, "user.color")
    expect_errno(errno.ENODATA, os.getxattr, path, "user.color")


def test_fallocate(mnt: Path) -> None:
    path = mnt / "alloc"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.posix_fallocate(fd, 0, 3 * MiB)
        assert os.fstat(fd).st_size == 3 * MiB
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(3 * MiB)


def test_unlinked_open_file_stays_readable(mnt: Path, mounted_cluster) -> None:
    path = mnt / "ghost"
    data = os.urandom(MiB + 3)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    inode = os.fstat(fd).st_ino
    try:
        os.unlink(path)
        assert not path.exists()
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"more", len(data))
        assert os.pread(fd, 4, len(data)) == b"more"
    finally:
        os.close(fd)
    # after the last close the file is gone for good on the master too
    from tests.harness import http_json

    deadline = time.monotonic() + 10  # the kernel sends the release after close(2) returns
    while (status := http_json("POST", mounted_cluster[0].master_url + "/api/getattr", {"inode": inode})[0]) == 200:
        assert time.monotonic() < deadline, "the unlinked file outlived its last close"
        time.sleep(0.05)
    assert status == 404


def test_permissions_as_another_user(mnt: Path) -> None:
    secret = mnt / "secret"
    secret.write_bytes(b"s")
    os.chmod(secret, 0o600)
    (mnt / "open").mkdir(mode=0o777)
    os.chmod(mnt / "open", 0o1777)  # sticky, like /tmp
    (mnt / "open" / "roots").write_bytes(b"r")
    script = f"""
import errno, os, sys
os.setgid(65534); os.setgroups([]); os.setuid(65534)
def code(fn, *a):
    try:
        fn(*a)
        return 0
    except OSError as e:
        return e.errno
results = [
    code(lambda: open({str(secret)!r}, 'rb').read()),
    code(lambda: open({str(mnt / 'mine')!r}, 'wb')),
    code(os.unlink, {str(mnt / 'open' / 'roots')!r}),
    code(lambda: open({str(mnt / 'open' / 'nobody')!r}, 'wb').write(b'n')),
    code(os.chmod, {str(secret)!r}, 0o777),
]
print(results)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([errno.EACCES, errno.EACCES, errno.EPERM, 0, errno.EPERM])
    assert os.stat(mnt / "open" / "nobody").st_uid == 65534


def test_setgid_folder_hands_down_its_group(mnt: Path) -> None:
    folder = mnt / "shared"
    folder.mkdir()
    os.chown(folder, 0, 4242)
    os.chmod(folder, 0o2775)
    (folder / "f").write_bytes(b"")
    (folder / "sub").mkdir()
    assert os.stat(folder / "f").st_gid == 4242
    assert os.stat(folder / "sub").st_gid == 4242
    assert os.stat(folder / "sub").st_mode & stat.S_ISGID
