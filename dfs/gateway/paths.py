"""The file-system path a request names, taken from the raw request target and checked.

aiohttp normalises URLs before routing (a `..` segment may be folded away, `%2e` decoded), so the
gateway never trusts `match_info`: it reads the request target as the client sent it, decodes it
exactly once and hands it to `dfs.names.split_path`, which refuses `.`, `..`, NUL and over-long
names. A path can therefore never climb out of the namespace, whatever the encoding tricks.
"""

from __future__ import annotations

import errno
from urllib.parse import unquote, urlsplit

from aiohttp import web

from dfs.errors import DfsError
from dfs.names import split_path

PREFIX = "/fs"


def fs_path_of(target: str) -> str:
    """"/a/b" for the request target "/fs/a/b?x=1"; EINVAL for anything not under /fs or unsafe."""
    if not target.startswith("/"):  # absolute-form request target: http://host/fs/...
        target = urlsplit(target).path
    raw = target.split("?", 1)[0].split("#", 1)[0]
    if raw != PREFIX and not raw.startswith(PREFIX + "/"):
        raise DfsError(errno.EINVAL, f"not a file-system path: {raw!r}")
    try:
        decoded = unquote(raw[len(PREFIX):] or "/", encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise DfsError(errno.EINVAL, "the path is not valid UTF-8 once percent-decoded") from None
    return "/" + "/".join(split_path(decoded or "/"))


def fs_path(request: web.Request) -> str:
    """The checked, normalised file-system path of `request` ("/" for the root)."""
    return fs_path_of(request.raw_path)


def other_path(value: str) -> str:
    """A second path given in the query (rename's `to`): a file-system path such as "/a/b"
    (not a URL: "/fs/a" names the entry "a" in the folder "/fs")."""
    return "/" + "/".join(split_path(value))
