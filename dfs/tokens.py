"""The cluster secret, the keys derived from it, chunk tokens and signed chunkserver requests.

Keys (HMAC-SHA256 as a PRF; each label separates one use from the others):

    cluster secret S      <master data>/cluster.secret (0600), made by the master on first start
    join token     T      = HMAC(S, "dfs/join-token/v1"), hex: what a chunkserver needs (`--join-token`,
                            or `--secret-file` with S itself); `dfs admin join-token` prints it
    request key    J      = HMAC(T, "dfs/join-requests/v1"): signs cs/register, cs/heartbeat, cs/goodbye
    chunk key      C      = HMAC(T, "dfs/chunk-tokens/v1"): signs chunk tokens

A chunkserver holds T, not S: it can join and verify (and, keys being symmetric, mint) chunk tokens,
but derives nothing else the secret may be used for.

**Chunk tokens** (as HDFS block access tokens, SeaweedFS's JWTs): `op.chunk_id.version.expiry.sig`, `sig`
the unpadded base64url HMAC(C, "op.chunk_id.version.expiry"), `expiry` in Unix seconds. The master
issues them with locations and leases, chunkservers check them locally (`X-DFS-Token` header): a missing,
malformed, forged or expired token is 401, a good one for another op, chunk or version 403.

**Signed requests** (chunkserver -> master): `Authorization: DFS-HMAC ts.nonce.sig`, `sig` the
HMAC(J, method, path, ts, nonce, sha256(body)). The master accepts a timestamp within MAX_REQUEST_SKEW of
its clock and each nonce once, so a request seen on the wire cannot be replayed or altered.

Nothing here logs or echoes a token, a key or the secret.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from dfs.errors import DfsError

SECRET_FILE = "cluster.secret"
TOKEN_HEADER = "X-DFS-Token"
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "DFS-HMAC"

#: What a chunk token may grant; `list` (GET /chunks) is issued for chunk 0, version 0.
OPS = frozenset({"read", "write", "truncate", "recover", "replicate", "delete", "list"})
#: Seconds a token is still accepted after its expiry (clocks of master and chunkservers differ a little).
CLOCK_SKEW = 30.0
#: Seconds a signed request's timestamp may be off the master's clock.
MAX_REQUEST_SKEW = 300.0
MIN_SECRET_LENGTH = 32
MAX_TOKEN_LENGTH = 200
#: Token texts whose signature `ChunkTokens.verify` checked and remembers (a reader sends the same token
#: on every read of a chunk until it expires: its HMAC is computed once, its expiry checked every time).
VERIFIED_TOKENS = 1024

#: The errnos of a refused token (HTTP 401): the client refreshes its tokens once on these.
TOKEN_REFUSED = (errno.EKEYREJECTED, errno.EKEYEXPIRED)


class SecretError(Exception):
    """The secret or join token cannot be used (missing, unsafe permissions, too short)."""


def _prf(key: bytes, label: str) -> bytes:
    return hmac.new(key, label.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# -- the secret on disk ---------------------------------------------------------------------------------

def read_secret_file(path: Path) -> bytes:
    """The secret in `path`; refuses a file others may read, or one too short to be a key."""
    try:
        mode = os.stat(path).st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"the secret file {path} may be read by others (mode {stat.S_IMODE(mode):04o}); "
                          f"chmod 600 it")
    if len(text) < MIN_SECRET_LENGTH:
        raise SecretError(f"the secret in {path} is shorter than {MIN_SECRET_LENGTH} characters")
    return text.encode()


def load_or_create_secret(data_dir: Path) -> bytes:
    """The master's secret in `data_dir`, made on first start: 32 random bytes in hex, mode 0600.

    Written to a temp file, synced, then hard-linked into place: the link fails if another start made
    the file first, and nobody ever sees a half-written secret."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".cluster.secret.", dir=data_dir)  # mode 0600
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return read_secret_file(path)


def join_token(secret: bytes) -> str:
    """The chunkservers' credential derived from the cluster secret (64 hex digits)."""
    return _prf(secret, "dfs/join-token/v1").hex()


# -- chunk tokens ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    """A verified chunk token."""

    op: str
    chunk_id: int
    version: int
    expiry: int

    def require(self, op: str, chunk_id: int, version: int | None = None) -> None:
        """403 (EACCES) unless this token grants `op` on `chunk_id` (at `version`, when given)."""
        if self.op != op:
            raise DfsError(errno.EACCES, f"the token grants '{self.op}', not '{op}'")
        if self.chunk_id != chunk_id:
            raise DfsError(errno.EACCES, f"the token is for another chunk, not chunk {chunk_id}")
        if version is not None and self.version != version:
            raise DfsError(errno.EACCES, f"chunk {chunk_id}: the token is for v{self.version}, not v{version}")


class ChunkTokens:
    """Mints and verifies chunk tokens with the chunk key."""

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per token: the key is set up once
        self._verified: dict[str, Token] = {}  # text -> token, signature checked with this key

    def __repr__(self) -> str:
        return "ChunkTokens(<key hidden>)"

    def _sign(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(payload.encode())
        return _b64(mac.digest())

    def mint(self, op: str, chunk_id: int, version: int, lifetime: float, now: float | None = None) -> str:
        if op not in OPS:
            raise ValueError(f"unknown token op {op!r}")
        expiry = int((time.time() if now is None else now) + lifetime) + 1
        payload = f"{op}.{chunk_id}.{version}.{expiry}"
        return f"{payload}.{self._sign(payload)}"

    def header(self, op: str, chunk_id: int, version: int, lifetime: float) -> dict[str, str]:
        return {TOKEN_HEADER: self.mint(op, chunk_id, version, lifetime)}

    def verify(self, text: str | None, now: float | None = None) -> Token:
        """The token `text` stands for; 401 (EKEYREJECTED, EKEYEXPIRED) when it is missing, malformed,
        forged or expired. Messages never repeat the token."""
        if not text:
            raise DfsError(errno.EKEYREJECTED, f"a chunk token ({TOKEN_HEADER} header) is required")
        token = self._verified.get(text)
        if token is None:
            token = self._check_signature(text)
            if len(self._verified) >= VERIFIED_TOKENS:
                self._verified.clear()
            self._verified[text] = token
        if token.expiry + CLOCK_SKEW < (time.time() if now is None else now):
            raise DfsError(errno.EKEYEXPIRED, "the chunk token has expired")
        return token

    def _check_signature(self, text: str) -> Token:
        parts = text.split(".")
        if len(text) > MAX_TOKEN_LENGTH or len(parts) != 5 or parts[0] not in OPS \
                or not all(p.isdigit() and len(p) <= 19 for p in parts[1:4]):
            raise DfsError(errno.EKEYREJECTED, "malformed chunk token")
        payload = ".".join(parts[:4])
        if not hmac.compare_digest(self._sign(payload).encode(), parts[4].encode()):
            raise DfsError(errno.EKEYREJECTED, "invalid chunk token signature")
        return Token(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


# -- keys of a node -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterKeys:
    """What a master or chunkserver derives from the join token: the request key and the chunk tokens."""

    request_key: bytes = field(repr=False)
    tokens: ChunkTokens = field(repr=False)

    @classmethod
    def from_join_token(cls, token: str) -> ClusterKeys:
        token = token.strip()
        if len(token) < MIN_SECRET_LENGTH:
            raise SecretError(f"the join token is shorter than {MIN_SECRET_LENGTH} characters")
        raw = token.encode()
        return cls(_prf(raw, "dfs/join-requests/v1"), ChunkTokens(_prf(raw, "dfs/chunk-tokens/v1")))

    @classmethod
    def from_secret(cls, secret: bytes) -> ClusterKeys:
        return cls.from_join_token(join_token(secret))

    # -- signed requests (chunkserver -> master) ------------------------------------------------

    def _request_mac(self, method: str, path: str, stamp: str, nonce: str, body: bytes) -> str:
        text = "\n".join([method.upper(), path, stamp, nonce, hashlib.sha256(body).hexdigest()])
        return _b64(hmac.new(self.request_key, text.encode(), hashlib.sha256).digest())

    def sign_request(self, method: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The Authorization header of a request to the master with this body."""
        stamp = str(int(time.time() if now is None else now))
        nonce = secrets.token_urlsafe(12)
        return {AUTH_HEADER: f"{AUTH_SCHEME} {stamp}.{nonce}.{self._request_mac(method, path, stamp, nonce, body)}"}


class RequestVerifier:
    """The master's check of signed chunkserver requests, with the nonces seen lately (no replays)."""

    def __init__(self, keys: ClusterKeys) -> None:
        self.keys = keys
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()  # (forget at, nonce), oldest first

    def verify(self, header: str | None, method: str, path: str, body: bytes, now: float | None = None) -> None:
        """401 (EKEYREJECTED) unless the request carries a fresh, valid signature of its own."""
        now = time.time() if now is None else now
        scheme, _, value = (header or "").partition(" ")
        if scheme != AUTH_SCHEME or not value:
            raise DfsError(errno.EKEYREJECTED, f"chunkserver requests must be signed ({AUTH_SCHEME}) with the "
                           "cluster's join token")
        parts = value.strip().split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12 or not 8 <= len(parts[1]) <= 64:
            raise DfsError(errno.EKEYREJECTED, "malformed request signature")
        stamp, nonce, mac = parts
        if not hmac.compare_digest(self.keys._request_mac(method, path, stamp, nonce, body).encode(), mac.encode()):
            raise DfsError(errno.EKEYREJECTED, "invalid request signature: wrong join token or secret")
        if abs(now - int(stamp)) > MAX_REQUEST_SKEW:
            raise DfsError(errno.EKEYREJECTED, f"request signed at a time more than {MAX_REQUEST_SKEW:.0f}s from "
                           "the master's clock")
        while self._order and self._order[0][0] < now:
            self._seen.discard(self._order.popleft()[1])
        if nonce in self._seen:
            raise DfsError(errno.EKEYREJECTED, "request replayed")
        self._seen.add(nonce)
        self._order.append((now + 2 * MAX_REQUEST_SKEW, nonce))
