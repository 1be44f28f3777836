"""The CLI's one user-error path: coreutils-style messages and exit codes, never a traceback."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from dfs.errors import DfsError

# errors whose server message says more than strerror (which chunk, which server)
_DETAILED = {errno.EIO, errno.EBADMSG, errno.ENOSPC, errno.EINVAL, errno.ETIMEDOUT, errno.EAGAIN, errno.EFBIG,
             errno.ENOKEY, errno.EKEYREJECTED, errno.EKEYEXPIRED, errno.EKEYREVOKED}


class CliError(Exception):
    """A failure to report on one line, e.g. "cannot remove '/x': No such file or directory"."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe(err: DfsError | OSError) -> str:
    if isinstance(err, DfsError):
        text = os.strerror(err.errno)
        if err.errno in _DETAILED and err.message != text:
            text = f"{text} ({err.message})"
        return text
    return err.strerror or str(err)


def failure(action: str, path: str, err: DfsError | OSError) -> CliError:
    return CliError(f"cannot {action} '{path}': {describe(err)}")


def report(message: str) -> None:
    print(f"dfs: {message}", file=sys.stderr)


def run_cli(action: Callable[[], int | None]) -> NoReturn:
    """Run a command body; CliError and DfsError become one line on stderr and an exit code."""
    try:
        code = action() or 0
    except CliError as exc:
        report(str(exc))
        code = exc.exit_code
    except DfsError as exc:
        report(describe(exc))
        code = 1
    except KeyboardInterrupt:
        report("interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code)
