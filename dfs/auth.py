"""Access keys as clients hold them, and the HTTP headers that carry a key and an identity.

A key reads `dfs_<id>_<secret>`: the id (16 hex digits) finds the key's record on the master, which
keeps only a SHA-256 digest of the secret. Clients send it as `Authorization: Bearer <key>` (the
gateway also takes HTTP basic auth with the key as the password, for `curl -u name:KEY`). A trusted
mount or gateway (a key of scope proxy or admin) names the end user it acts for in `X-DFS-Uid`,
`X-DFS-Gid` and `X-DFS-Groups` (docs/PROTOCOL.md "Access keys").

Clients find their key in this order: `--key`, `--key-file`, `$DFS_KEY`, `$DFS_KEY_FILE`.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from dfs.errors import DfsError

KEY_ENV = "DFS_KEY"
KEY_FILE_ENV = "DFS_KEY_FILE"
UID_HEADER = "X-DFS-Uid"
GID_HEADER = "X-DFS-Gid"
GROUPS_HEADER = "X-DFS-Groups"
KEY_PREFIX = "dfs_"
ID_MAX = 2**32 - 2  # uid/gid: 2**32 - 1 is (uid_t)-1, "no change" to chown
MAX_GROUPS = 256

_KEY_ID = re.compile(r"[0-9a-f]{16}")


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key id, secret, the whole key as the client holds it)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, secret, f"{KEY_PREFIX}{key_id}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    parts = key[len(KEY_PREFIX):].split("_", 1)
    if len(parts) != 2 or not _KEY_ID.fullmatch(parts[0]) or not 16 <= len(parts[1]) <= 256:
        return None
    return parts[0], parts[1]


def read_key_file(path: str | os.PathLike[str]) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise DfsError(errno.ENOKEY, f"cannot read the key file {path}: {exc.strerror}") from None
    if not text:
        raise DfsError(errno.ENOKEY, f"the key file {path} is empty")
    return text


def find_key(key: str | None = None, key_file: str | os.PathLike[str] | None = None) -> str | None:
    """The key a client should send: explicit, from a file, or from the environment; None for none."""
    if key:
        return key.strip()
    if key_file:
        return read_key_file(key_file)
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip()
    if os.environ.get(KEY_FILE_ENV):
        return read_key_file(os.environ[KEY_FILE_ENV])
    return None


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def identity_headers(uid: int, gid: int, groups: Iterable[int] = ()) -> dict[str, str]:
    """Headers by which a proxy key names the end user it acts for."""
    return {UID_HEADER: str(uid), GID_HEADER: str(gid), GROUPS_HEADER: ",".join(str(g) for g in groups)}


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer KEY` or `Basic base64(name:KEY)`; None without the header."""
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            text = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise DfsError(errno.EKEYREJECTED, "malformed basic credentials") from None
        user, _, password = text.partition(":")
        return password or user
    raise DfsError(errno.EKEYREJECTED, "the Authorization header must be 'Bearer <key>' or basic auth")


def _id(text: str, header: str) -> int:
    if not text.isdigit() or int(text) > ID_MAX:
        raise DfsError(errno.EINVAL, f"{header} must be a number from 0 to {ID_MAX}")
    return int(text)


def identity_from_headers(headers: Mapping[str, str]) -> tuple[int, int, tuple[int, ...]] | None:
    """The (uid, gid, groups) a caller claims to act for, or None when it claims nobody."""
    uid, gid = headers.get(UID_HEADER), headers.get(GID_HEADER)
    if uid is None and gid is None and GROUPS_HEADER not in headers:
        return None
    if uid is None or gid is None:
        raise DfsError(errno.EINVAL, f"{UID_HEADER} and {GID_HEADER} go together")
    groups_text = headers.get(GROUPS_HEADER, "").strip()
    items = [g.strip() for g in groups_text.split(",")] if groups_text else []
    if len(items) > MAX_GROUPS:
        raise DfsError(errno.EINVAL, f"{GROUPS_HEADER} lists more than {MAX_GROUPS} groups")
    return _id(uid.strip(), UID_HEADER), _id(gid.strip(), GID_HEADER), tuple(_id(g, GROUPS_HEADER) for g in items)
