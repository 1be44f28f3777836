"""TLS contexts: one place that makes them for every server (`--tls-cert/--tls-key`) and client (`--tls-ca`).

Clients verify servers against the CA given with `--tls-ca` (or `DFS_TLS_CA`), else the system's trust
store; a command's `--tls-ca` is kept as the process's default (`set_default_ca`), so every session the
process opens (client library, chunkserver to master and to other chunkservers, master to chunkservers)
verifies with it.
"""

from __future__ import annotations

import os
import ssl
from functools import lru_cache
from pathlib import Path

CA_ENV = "DFS_TLS_CA"

_default_ca: str | None = None


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used."""


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A server context with the certificate chain in `cert` and its private key in `key`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from None
    return context


def set_default_ca(ca: str | Path | None) -> None:
    """The CA file this process verifies servers with when a caller names none."""
    global _default_ca
    _default_ca = str(ca) if ca else None


def default_ca() -> str | None:
    return _default_ca or os.environ.get(CA_ENV) or None


def client_context(ca: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context: trusts `ca` (else the default CA, else the system's store)."""
    return _client_context(str(ca) if ca else default_ca())


@lru_cache(maxsize=8)
def _client_context(ca: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS CA file {ca}: {exc}") from None


def scheme(tls: bool) -> str:
    return "https" if tls else "http"
