"""One error type for the whole system, and its one translation to HTTP and back.

Every layer raises `DfsError(errno.X, "message")`. Servers turn it into a JSON body
`{"error": "ENOENT", "message": "..."}` with the HTTP status from `HTTP_STATUS`; the client
library turns such a response back into the same `DfsError`. The FUSE client raises the errno;
the CLI prints the message. Errno names (not numbers) travel on the wire.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

#: HTTP status for each errno that crosses the wire; anything else is 500.
HTTP_STATUS: dict[int, int] = {
    errno.EINVAL: 400,
    errno.ENAMETOOLONG: 400,
    errno.ELOOP: 400,
    errno.ENOKEY: 401,  # no access key: docs/PROTOCOL.md "Access keys"
    errno.EKEYREJECTED: 401,  # an unknown or forged key; a missing, malformed or forged token or signature
    errno.EKEYEXPIRED: 401,  # an expired key or token (a client asks the master for a fresh token)
    errno.EKEYREVOKED: 401,
    errno.EACCES: 403,
    errno.EPERM: 403,
    errno.EROFS: 403,
    errno.ENOENT: 404,
    errno.ENODATA: 404,
    errno.EEXIST: 409,
    errno.ENOTEMPTY: 409,
    errno.ENOTDIR: 409,
    errno.EISDIR: 409,
    errno.EXDEV: 409,
    errno.EBUSY: 409,
    errno.ESTALE: 409,
    errno.EFBIG: 413,
    errno.E2BIG: 413,
    errno.ERANGE: 416,
    errno.EOPNOTSUPP: 501,
    errno.EIO: 502,
    errno.EBADMSG: 502,
    errno.EAGAIN: 503,
    errno.ETIMEDOUT: 504,
    errno.ENOSPC: 507,
}

#: errno to assume for an HTTP status when the body carries no errno name (e.g. a proxy's error).
STATUS_ERRNO: dict[int, int] = {
    400: errno.EINVAL,
    401: errno.EKEYREJECTED,
    403: errno.EACCES,
    404: errno.ENOENT,
    409: errno.EEXIST,
    411: errno.EINVAL,
    413: errno.EFBIG,
    416: errno.ERANGE,
    503: errno.EAGAIN,
    504: errno.ETIMEDOUT,
    507: errno.ENOSPC,
}


class DfsError(Exception):
    """An error with an errno, meant for users: the message names the path or chunk concerned."""

    def __init__(self, err: int, message: str | None = None) -> None:
        self.errno = err
        self.message = message or os.strerror(err)
        super().__init__(self.message)

    @property
    def code(self) -> str:
        return errno.errorcode.get(self.errno, "EIO")

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.errno, 500)

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}

    @classmethod
    def from_json(cls, status: int, body: Any) -> DfsError:
        """Rebuild the error a server sent; tolerate bodies that are not ours."""
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            err = getattr(errno, body["error"], None)
            if isinstance(err, int):
                return cls(err, str(body.get("message") or os.strerror(err)))
        err = STATUS_ERRNO.get(status, errno.EIO)
        text = body.get("message") if isinstance(body, dict) else None
        return cls(err, str(text or f"HTTP {status}"))

    def __repr__(self) -> str:
        return f"DfsError({self.code}, {self.message!r})"


_QUERY = re.compile(r"""(https?://[^\s'"?]*)\?[^\s'"]*""")


def describe(exc: BaseException) -> str:
    """`exc` in one line for a log or a message. URLs lose their query string: it may carry a token."""
    text = f"{exc.code} {exc.message}" if isinstance(exc, DfsError) else (str(exc) or type(exc).__name__)
    return _QUERY.sub(r"\1?...", text)


def fail(err: int, message: str | None = None) -> DfsError:
    """Shorthand for `raise fail(errno.ENOENT, "...")`."""
    return DfsError(err, message)
