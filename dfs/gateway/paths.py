"""The file-system path a request names, taken from the raw request target and checked.

aiohttp normalises URLs before routing (a `..` segment may be folded away, `%2e` decoded), so the
gateway never trusts `match_info`: it reads the request target as the client sent it, decodes each
segment exactly once and checks every name with `dfs.names.validate_name`, which refuses `.`, `..`,
NUL and over-long names; an encoded '/' (%2F) and empty segments ('//') are refused too. A path can
therefore never climb out of the namespace, whatever the encoding tricks.
"""

from __future__ import annotations

import errno
from urllib.parse import unquote, urlsplit

from aiohttp import web

from dfs.errors import DfsError
from dfs.names import split_path, validate_name

PREFIX = "/fs"


def fs_path_of(target: str) -> str:
    """"/a/b" for the request target "/fs/a/b?x=1"; EINVAL for anything not under /fs or unsafe.

    Each segment is percent-decoded on its own, so "%2F" cannot smuggle a separator into a name, and an
    empty segment ("//") is refused rather than folded away; one trailing "/" names a folder (POST).
    """
    if not target.startswith("/"):  # absolute-form request target: http://host/fs/...
        target = urlsplit(target).path
    raw = target.split("?", 1)[0].split("#", 1)[0]
    if raw != PREFIX and not raw.startswith(PREFIX + "/"):
        raise DfsError(errno.EINVAL, f"not a file-system path: {raw!r}")
    segments = raw[len(PREFIX) + 1:].split("/")
    if segments[-1] == "":
        segments.pop()  # "/fs/" and "/fs/dir/"
    names = []
    for segment in segments:
        if not segment:
            raise DfsError(errno.EINVAL, f"empty name ('//') in {raw!r}")
        try:
            name = unquote(segment, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise DfsError(errno.EINVAL, "the path is not valid UTF-8 once percent-decoded") from None
        if "/" in name:
            raise DfsError(errno.EINVAL, f"a name may not contain an encoded '/' (%2F): {segment!r}")
        names.append(validate_name(name))
    return "/" + "/".join(split_path("/" + "/".join(names)))  # and the length of the whole path


def fs_path(request: web.Request) -> str:
    """The checked, normalised file-system path of `request` ("/" for the root)."""
    return fs_path_of(request.raw_path)


def other_path(value: str) -> str:
    """A second path given in the query (rename's `to`): a file-system path such as "/a/b"
    (not a URL: "/fs/a" names the entry "a" in the folder "/fs")."""
    return "/" + "/".join(split_path(value))
