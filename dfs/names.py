"""Validation of file names and paths, shared by the master, the gateway and the clients."""

from __future__ import annotations

import errno

from dfs.errors import DfsError

NAME_MAX = 255  # bytes, UTF-8 encoded
PATH_MAX = 4096  # what one symlink target may hold, as on Linux
#: The longest path the cluster resolves. Longer than PATH_MAX on purpose: a mount sees paths from
#: its mount point, so a name the kernel accepted (at most PATH_MAX from the process's working
#: folder) can be longer from the root of the cluster.
CLUSTER_PATH_MAX = 16 * PATH_MAX


def encoded(text: str, what: str = "a name") -> bytes:
    """`text` as the bytes stored and shown to the kernel; EINVAL for a string no byte string decodes to.

    Bytes that are not UTF-8 travel as surrogate escapes (FUSE decodes names with `surrogateescape`),
    so U+DC80..U+DCFF stand for the bytes 0x80..0xFF; any other lone surrogate is refused.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise DfsError(errno.EINVAL, f"{what} must be UTF-8 text: {text!r}") from None


def _canonical(text: str, what: str) -> bytes:
    """The bytes of `text`, which must be the one spelling of them: an escaped byte sequence that is
    valid UTF-8 ("\udcc3\udca9" for "é") would be a second name for the same entry."""
    raw = encoded(text, what)
    if raw.decode("utf-8", "surrogateescape") != text:
        raise DfsError(errno.EINVAL, f"{what} escapes bytes that are valid UTF-8: {text!r}")
    return raw


def validate_name(name: object) -> str:
    """Return `name` if it may be a directory entry; raise EINVAL / ENAMETOOLONG otherwise."""
    if not isinstance(name, str) or not name:
        raise DfsError(errno.EINVAL, "a name must be a non-empty string")
    if name in (".", ".."):
        raise DfsError(errno.EINVAL, f"'{name}' cannot be used as a name")
    if "/" in name or "\0" in name:
        raise DfsError(errno.EINVAL, f"a name may not contain '/' or NUL: {name!r}")
    size = len(_canonical(name, "a name"))
    if size > NAME_MAX:
        raise DfsError(errno.ENAMETOOLONG, f"name is {size} bytes long, the limit is {NAME_MAX}")
    return name


def split_path(path: object) -> list[str]:
    """Components of an absolute path: "/a//b/" -> ["a", "b"], "/" -> [].

    "." and ".." are refused rather than resolved, so no path can climb out of its root.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise DfsError(errno.EINVAL, f"a path must be absolute: {path!r}")
    if len(encoded(path, "a path")) > CLUSTER_PATH_MAX:
        raise DfsError(errno.ENAMETOOLONG, f"path is longer than {CLUSTER_PATH_MAX} bytes")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", ".."):
            raise DfsError(errno.EINVAL, f"'.' and '..' are not allowed in paths: {path!r}")
        validate_name(part)
    return parts


def normalize_path(path: object) -> str:
    """Canonical form of an absolute path: "/a//b/" -> "/a/b"."""
    return "/" + "/".join(split_path(path))


def parent_and_name(path: object) -> tuple[str, str]:
    """("/a/b", "c") for "/a/b/c"; EINVAL for "/" which has no name."""
    parts = split_path(path)
    if not parts:
        raise DfsError(errno.EINVAL, "the root directory has no parent")
    return "/" + "/".join(parts[:-1]), parts[-1]
