"""Prometheus metrics every service shares: request counts and latencies, and the `GET /metrics` route.

One registry per process (prometheus_client's default). Each service defines its own metrics beside
the code that moves them (master/metrics.py, chunkserver/metrics.py, dfs/gateway/metrics.py,
fuse/metrics.py, dfs/client/metrics.py); figures that already live in the service's objects are read
at scrape time by a collector instead of being copied into gauges.

Labels are small fixed sets: the operation is the route's pattern (`/api/create`, `/chunks/{id}`),
never a raw path, a chunk id or a file name. `metrics_middleware` goes first in the middleware list,
so it sees the final status of every request, errors and refusals of later middlewares included.
It costs 2-4.5 µs per request (label children are looked up once and kept; the histogram's
observe is most of it): benchmarks/metrics_overhead.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from dfs.web import Handler

disable_created_metrics()  # no `_created` twin of every counter: half the text, nothing lost for Prometheus

#: From a cached metadata answer (~0.2 ms) to a large transfer or a slow disk (10 s).
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("dfs_http_requests_total", "HTTP requests served, by operation (route pattern), method and "
                   "status class", ["operation", "method", "status"])
REQUEST_SECONDS = Histogram("dfs_http_request_duration_seconds", "Time from a request's arrival until its handler "
                            "returned (a streamed body included)", ["operation", "method"], buckets=LATENCY_BUCKETS)

_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
_ABORTED = 0  # "status" of a request whose client went away or whose task was cancelled

#: A finer operation name a handler gave its request (`name_operation`); the middleware resets it.
_named: ContextVar[str | None] = ContextVar("dfs_metrics_operation", default=None)
#: (operation name or route, method, status) -> (counter, histogram) children, looked up once each.
_series: dict[tuple[Any, str, int], tuple[Any, Any]] = {}


def _status_class(status: int) -> str:
    return "aborted" if status == _ABORTED else f"{status // 100}xx"


def operation_of(request: web.Request) -> str:
    """The request's route pattern; "unmatched" for a path no route serves."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def name_operation(name: str) -> None:
    """Count the current request under `name` (one of a fixed set!) instead of its route pattern."""
    _named.set(name)


def _series_for(request: web.Request, status: int) -> tuple[Any, Any]:
    method = request.method
    if method not in _METHODS:
        method = "OTHER"
    named = _named.get()
    route: Any = request.match_info.route
    key = (named or route, method, status)
    found = _series.get(key)
    if found is None:
        operation = named or operation_of(request)
        if route.resource is None:  # a route object made for this one 404/405: not a key to keep
            key = (operation, method, status)
            found = _series.get(key)
        if found is None:
            found = _series[key] = (REQUESTS.labels(operation, method, _status_class(status)),
                                    REQUEST_SECONDS.labels(operation, method))
    return found


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    token = _named.set(None)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except BaseException as exc:  # CancelledError, a client gone (ConnectionResetError): no answer was sent
        if not isinstance(exc, Exception) or isinstance(exc, ConnectionResetError):
            status = _ABORTED
        raise
    finally:
        count, seconds = _series_for(request, status)
        _named.reset(token)
        count.inc()
        seconds.observe(time.perf_counter() - started)


Refresh = Callable[[web.Application], Awaitable[None]]


def add_metrics(app: web.Application, refresh: Refresh | None = None) -> None:
    """`GET /metrics`: the Prometheus text format (0.0.4, or what the scraper's Accept header asks for,
    as prometheus_client's own server answers); `refresh(app)` runs first (e.g. to renew a cache that
    collectors read synchronously)."""

    async def metrics(request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh(request.app)
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(REGISTRY), headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)
