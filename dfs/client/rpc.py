"""JSON calls to the master, with bounded retries while it is unreachable."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any, Protocol

import aiohttp

from dfs import tls
from dfs.client.metrics import observe_call
from dfs.errors import DfsError

log = logging.getLogger("dfs.client")


class CallBarrier(Protocol):
    """Changes that must reach the master before a call does (dfs/client/dirops.py)."""

    def must_flush(self, op: str, fields: dict[str, Any]) -> bool: ...

    def flush(self) -> None: ...


async def error_from_response(resp: aiohttp.ClientResponse) -> DfsError:
    """The DfsError a server answered with (its JSON body), or one made from the status alone."""
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    return DfsError.from_json(resp.status, body)


async def json_reply(resp: aiohttp.ClientResponse) -> Any:
    """The JSON body of a response; the DfsError it carries when the status is an error."""
    if resp.status >= 400:
        raise await error_from_response(resp)
    try:
        return await resp.json(content_type=None)
    except ValueError:
        raise DfsError(errno.EIO, f"{resp.url.host}:{resp.url.port} answered without JSON") from None


def tls_reason(exc: aiohttp.ClientSSLError) -> str:
    """The certificate problem of a failed TLS connection, without aiohttp's repetition."""
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
    detail = getattr(inner, "verify_message", None)
    if detail:
        return f"certificate verify failed: {detail}"
    return str(getattr(inner, "reason", None) or inner or exc)


class Backoff:
    """Delays between tries of a call to the master: 50 ms doubling up to 1 s, for `retry_for` seconds."""

    def __init__(self, retry_for: float) -> None:
        self.deadline = time.monotonic() + retry_for
        self.delay = 0.05

    def next(self) -> float | None:
        """The delay before the next try; None once the time is up."""
        if time.monotonic() + self.delay > self.deadline:
            return None
        delay, self.delay = self.delay, min(self.delay * 2, 1.0)
        return delay


def unreachable(url: str, exc: BaseException) -> DfsError:
    return DfsError(errno.EIO, f"master at {url} unreachable: {exc or type(exc).__name__}")


def tls_failure(url: str, reason: str) -> DfsError:
    return DfsError(errno.EIO, f"TLS with the master at {url} failed: {reason} "
                               f"(is --tls-ca / {tls.CA_ENV} the cluster's CA?)")


class MasterClient:
    """`await master.call("lookup", parent=1, name="a")` -> the reply's JSON object.

    A master that cannot be reached is retried with backoff for `retry_for` seconds, then the call
    fails with EIO naming the master, so a restarting master costs a pause, not an error. So is an
    EAGAIN (503) answer: the master is up but not ready for the call (e.g. chunkservers reporting back
    after its restart).
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, retry_for: float = 30.0,
                 headers: dict[str, str] | None = None) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.retry_for = retry_for
        self.headers = headers or {}  # the access key, and the end user a proxy acts for (dfs/auth.py)
        #: What must happen before a call (a mount's pending changes in delegated folders: dfs/client/dirops.py)
        self.before_call: CallBarrier | None = None

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        barrier = self.before_call
        if barrier is not None and barrier.must_flush(op, fields):
            await asyncio.to_thread(barrier.flush)
        started = time.perf_counter()
        ok = False
        try:
            reply = await self._request("POST", f"/api/{op}", fields, op)
            ok = True
            return reply
        finally:
            observe_call(op, ok, time.perf_counter() - started)

    async def health(self) -> dict[str, Any]:
        """The master's public /health (needs no key: it names the chunk size), retried like calls."""
        return await self._request("GET", "/health", None, "health")

    async def _request(self, method: str, path: str, fields: dict[str, Any] | None, op: str) -> dict[str, Any]:
        backoff = Backoff(self.retry_for)
        while True:
            try:
                async with self.session.request(method, f"{self.url}{path}", json=fields,
                                                headers=self.headers) as resp:
                    if resp.status >= 400:
                        err = await error_from_response(resp)
                        delay = backoff.next() if err.errno == errno.EAGAIN else None
                        if delay is None:
                            raise err
                        log.debug("master %s not ready for %s (%s); retrying", self.url, op, err.message)
                        await asyncio.sleep(delay)
                        continue
                    return await resp.json(content_type=None)
            except aiohttp.ClientSSLError as exc:  # retrying cannot help: say so at once
                raise tls_failure(self.url, tls_reason(exc)) from None
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                delay = backoff.next()
                if delay is None:
                    raise unreachable(self.url, exc) from None
                log.debug("master %s unreachable for %s (%s); retrying", self.url, op, exc)
                await asyncio.sleep(delay)
