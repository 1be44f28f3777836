"""The one place where the mount turns errors into errno values for the kernel."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from mfusepy import FuseOSError

from dfs.errors import DfsError

log = logging.getLogger("dfs.fuse")

F = TypeVar("F", bound=Callable[..., Any])

#: errors a file system call may return as they are; anything else the cluster says becomes EIO
_PASS_THROUGH = {
    errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EACCES,
    errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EINVAL, errno.ELOOP, errno.EXDEV, errno.EFBIG, errno.ENODATA,
    errno.ERANGE, errno.E2BIG, errno.EOPNOTSUPP, errno.EBUSY, errno.EAGAIN, errno.ENOMEM, errno.EIO,
}


def fuse_op(method: F) -> F:
    """Run a FUSE operation; DfsError becomes its errno, a bug becomes EIO with a log line."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except FuseOSError:
            raise
        except DfsError as err:
            if err.errno not in _PASS_THROUGH:
                log.error("%s %s: %s", method.__name__, _where(args), err.message)
                raise FuseOSError(errno.EIO) from None
            if err.errno == errno.EIO:
                log.error("%s %s: %s", method.__name__, _where(args), err.message)
            raise FuseOSError(err.errno) from None
        except OSError:
            raise
        except Exception:
            log.exception("%s %s failed", method.__name__, _where(args))
            raise FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _where(args: tuple[Any, ...]) -> str:
    return repr(args[1]) if len(args) > 1 and isinstance(args[1], str) else ""
