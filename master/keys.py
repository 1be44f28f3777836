"""Access keys: create, list, revoke, and verify one per request without touching the database.

Every key's record is held in memory (loaded at start, kept current by `create` and `revoke`, which
only this process makes), so a request pays one SHA-256 and a constant-time compare, not a query.
The secret itself is never stored: the client holds it, the table keeps its digest.

Bootstrap: the master keeps an admin key in `<data_dir>/admin.key` (0600) so that `dfs admin` works
on its host. At every start a file that holds no key in force is replaced: its key is adopted if it
is new to the database (an operator may seed one), otherwise a fresh key is made. Whoever can write
the master's data folder could read its database anyway.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from dfs.auth import ID_MAX, MAX_GROUPS, new_key, split_key
from dfs.errors import DfsError
from dfs.master.db import Database
from dfs.master.permissions import Caller
from dfs.master.schema import access_keys

log = logging.getLogger("master.keys")

#: Scopes, weakest first: each may do what the ones before it may.
SCOPES = ("ro", "rw", "proxy", "admin")
RANK = {name: rank for rank, name in enumerate(SCOPES)}
ADMIN_KEY_NAME = "admin"
ADMIN_KEY_FILE = "admin.key"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    key_id: str
    secret_sha256: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    scope: str
    created: float
    expires: float | None
    revoked: float | None

    @property
    def caller(self) -> Caller:
        return Caller(self.uid, self.gid, frozenset(self.groups))

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """What `list` shows: never the secret nor its digest."""
        return {"name": self.name, "key_id": self.key_id, "uid": self.uid, "gid": self.gid,
                "groups": list(self.groups), "scope": self.scope, "created": self.created,
                "expires": self.expires, "revoked": self.revoked, "state": self.state(now or time.time())}

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        groups = tuple(int(g) for g in row.groups.split(",") if g) if row.groups else ()
        return cls(row.name, row.key_id, row.secret_sha256, int(row.uid), int(row.gid), groups, row.scope,
                   float(row.created), row.expires, row.revoked)


def _values(record: KeyRecord) -> dict[str, Any]:
    return {"name": record.name, "key_id": record.key_id, "secret_sha256": record.secret_sha256,
            "uid": record.uid, "gid": record.gid, "groups": ",".join(str(g) for g in record.groups),
            "scope": record.scope, "created": record.created, "expires": record.expires, "revoked": record.revoked}


def check_new_key(name: str, uid: int, gid: int, groups: list[int], scope: str) -> None:
    if not _NAME.fullmatch(name):
        raise DfsError(errno.EINVAL, "a key name is 1 to 64 letters, digits, '.', '_', '@' or '-'")
    if scope not in RANK:
        raise DfsError(errno.EINVAL, f"scope must be one of {', '.join(SCOPES)}")
    if not all(0 <= i <= ID_MAX for i in (uid, gid, *groups)):
        raise DfsError(errno.EINVAL, f"uids and gids go from 0 to {ID_MAX}")
    if len(groups) > MAX_GROUPS:
        raise DfsError(errno.EINVAL, f"at most {MAX_GROUPS} groups")


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._by_id: dict[str, KeyRecord] = {}

    async def load(self) -> None:
        rows = await self.db.run_read(lambda conn: conn.execute(select(access_keys)).all())
        self._by_id = {row.key_id: KeyRecord.from_row(row) for row in rows}

    # -- requests -----------------------------------------------------------------------------------

    def verify(self, key: str) -> KeyRecord:
        """The record of a key in force; 401 errors that never repeat the key."""
        parts = split_key(key)
        record = self._by_id.get(parts[0]) if parts else None
        # Compare even for an unknown id, so that timing does not tell known ids apart.
        expected = record.secret_sha256 if record else "0" * 64
        if not hmac.compare_digest(digest(parts[1] if parts else key), expected) or record is None:
            raise DfsError(errno.EKEYREJECTED, "unknown access key")
        state = record.state(time.time())
        if state == "revoked":
            raise DfsError(errno.EKEYREVOKED, f"access key {record.name!r} has been revoked")
        if state == "expired":
            raise DfsError(errno.EKEYEXPIRED, f"access key {record.name!r} has expired")
        return record

    def in_force(self, record: KeyRecord) -> bool:
        """True while `record` is still the store's record of its key, neither revoked nor expired
        (callers that keep a verified record re-check it with this, at no SHA-256)."""
        return self._by_id.get(record.key_id) is record and record.state(time.time()) == "active"

    def list(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: r.name)

    # -- changes ------------------------------------------------------------------------------------

    async def create(self, name: str, uid: int, gid: int, groups: list[int], scope: str,
                     expires: float | None) -> tuple[KeyRecord, str]:
        """A new key (the whole key is returned once, here). A revoked or expired key's name may be
        used again; one in force may not (EEXIST)."""
        check_new_key(name, uid, gid, groups, scope)
        key_id, secret, key = new_key()
        record = KeyRecord(name, key_id, digest(secret), uid, gid, tuple(sorted(set(groups))), scope, time.time(),
                           expires, None)
        await self._put(record, replace_active=False)
        log.info("access key %r created (uid %d, gid %d, scope %s)", name, uid, gid, scope)
        return record, key

    async def _put(self, record: KeyRecord, replace_active: bool) -> None:
        now = time.time()

        def txn(conn: Connection) -> KeyRecord | None:
            old = conn.execute(select(access_keys).where(access_keys.c.name == record.name)).first()
            previous = KeyRecord.from_row(old) if old else None
            if previous is not None:
                if previous.state(now) == "active" and not replace_active:
                    raise DfsError(errno.EEXIST, f"an access key named {record.name!r} exists; revoke it first")
                conn.execute(delete(access_keys).where(access_keys.c.name == record.name))
            conn.execute(insert(access_keys).values(**_values(record)))
            return previous

        previous = await self.db.run_write(txn)
        if previous is not None:
            self._by_id.pop(previous.key_id, None)
        self._by_id[record.key_id] = record

    async def revoke(self, name: str) -> KeyRecord:
        now = time.time()

        def txn(conn: Connection) -> KeyRecord:
            row = conn.execute(select(access_keys).where(access_keys.c.name == name)).first()
            if row is None:
                raise DfsError(errno.ENOENT, f"no access key named {name!r}")
            if row.revoked is None:
                conn.execute(update(access_keys).where(access_keys.c.name == name).values(revoked=now))
            return KeyRecord.from_row(conn.execute(select(access_keys).where(access_keys.c.name == name)).one())

        record = await self.db.run_write(txn)
        self._by_id[record.key_id] = record
        log.info("access key %r revoked", name)
        return record

    # -- bootstrap ----------------------------------------------------------------------------------

    async def ensure_admin_file(self, data_dir: Path) -> None:
        """Make `<data_dir>/admin.key` hold an admin key in force (see the module's note)."""
        path = data_dir / ADMIN_KEY_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        parts = split_key(text)
        if parts:
            try:
                if self.verify(text).scope == "admin":
                    return
            except DfsError:
                pass
        if parts and parts[0] not in self._by_id:
            key_id, secret, key = parts[0], parts[1], text  # a seeded key: adopt it
        else:
            key_id, secret, key = new_key()
        record = KeyRecord(ADMIN_KEY_NAME, key_id, digest(secret), 0, 0, (), "admin", time.time(), None, None)
        await self._put(record, replace_active=True)
        if key != text:
            temp = path.with_name(path.name + ".tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        os.chmod(path, 0o600)
        log.info("admin access key %r written to %s", ADMIN_KEY_NAME, path)
