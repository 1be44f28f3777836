"""What metrics cost on the hot path: the request middleware and the database timing decorator.

Calls a trivial aiohttp handler (a routed request, as the master's `/api/getattr` is) directly and
through `metrics_middleware`, and a trivial coroutine bare and decorated with master/metrics.py's
`timed`, and prints the difference per call. For scale: a metadata request costs ~1 ms end to end.

    .venv/bin/python benchmarks/metrics_overhead.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dfs.master.metrics import timed
from dfs.metrics import metrics_middleware


async def per_call(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Seconds per call, best of three runs."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            await fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


async def main(calls: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/api/getattr", handler)
    request = make_mocked_request("POST", "/api/getattr", app=app)
    request._match_info = await app.router.resolve(request)
    request._match_info.add_app(app)

    bare = await per_call(lambda: handler(request), calls)
    wrapped = await per_call(lambda: metrics_middleware(request, handler), calls)
    print(f"request middleware: {(wrapped - bare) * 1e6:.2f} µs per request "
          f"(handler alone {bare * 1e6:.2f} µs, with metrics {wrapped * 1e6:.2f} µs)")

    async def txn(fn: Any) -> None:
        return None

    timed_txn = timed("read")(txn)
    bare = await per_call(lambda: txn(None), calls)
    wrapped = await per_call(lambda: timed_txn(None), calls)
    print(f"database timing: {(wrapped - bare) * 1e6:.2f} µs per transaction")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().calls))
