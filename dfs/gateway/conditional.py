"""Validators and byte ranges of file responses: ETag, Last-Modified, If-None-Match,
If-Modified-Since, If-Range and a single `Range: bytes=...` (RFC 9110).

Pure functions of header values and attributes, so they are easy to check on their own.
"""

from __future__ import annotations

import email.utils
import re

from dfs.protocol import Attr

_DIGITS = re.compile(r"[0-9]{1,19}")


class RangeNotSatisfiable(Exception):
    """The Range header names no byte of the file (answered 416 with `Content-Range: bytes */size`)."""


def etag(attr: Attr) -> str:
    """A strong validator: any write changes mtime or size; a replacement changes the inode."""
    return f'"{attr.inode}-{attr.mtime_ns}-{attr.size}"'


def last_modified(attr: Attr) -> str:
    return email.utils.formatdate(attr.mtime_ns // 1_000_000_000, usegmt=True)


def _http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP date (a date without a zone is GMT), or None."""
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return int(email.utils.mktime_tz((*parsed[:9], parsed[9] or 0)))
    except (OverflowError, ValueError):
        return None


def _tags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def not_modified(attr: Attr, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """Whether a GET/HEAD may be answered 304: If-None-Match decides when present (weak comparison),
    otherwise If-Modified-Since (the file is not newer than the date)."""
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        return etag(attr) in _tags(if_none_match)
    if if_modified_since is not None:
        since = _http_date(if_modified_since)
        return since is not None and attr.mtime_ns // 1_000_000_000 <= since
    return False


def range_applies(attr: Attr, if_range: str | None) -> bool:
    """If-Range: serve the range only when the validator still matches (a strong ETag or the exact date)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag(attr)
    return _http_date(value) == attr.mtime_ns // 1_000_000_000


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range within a file of `size` bytes.

    None means "send the whole file": no header, another unit, several ranges or a malformed one
    (RFC 9110 lets a server ignore those). Raises RangeNotSatisfiable when no byte is selected.
    """
    if not header:
        return None
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (s.strip() for s in spec.partition("-"))
    if not dash:
        return None
    if not first:  # suffix: the last n bytes
        if not _DIGITS.fullmatch(last):
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size
    if not _DIGITS.fullmatch(first) or (last and not _DIGITS.fullmatch(last)):
        return None
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(size, int(last) + 1) if last else size
