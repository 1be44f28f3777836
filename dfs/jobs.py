"""A base for background jobs (scrubber, re-replication, lease recovery), as Swift's `Daemon`.

A job implements `run_once()`, one round of its work; `run_forever()` repeats it every `interval`
seconds (sooner when `wake()` is called), logs a failed round instead of ending, and is cancelled
with the task that runs it. `failsafe()` guards one item of a round, so that one bad chunk never
stops a scan. `Throttle` bounds a rate (bytes per second) across the awaits of a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("dfs.jobs")


class Job:
    """Subclass and implement `run_once`; run `run_forever()` as a task (e.g. `dfs.web.background`)."""

    name = "job"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.rounds = 0
        self.failures = 0
        self._wake = asyncio.Event()

    async def run_once(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def wake(self) -> None:
        """Start the next round now instead of at the end of the interval."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed round must not end the job
                self.failures += 1
                log.exception("%s: round failed", self.name)
            self.rounds += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()


@contextlib.contextmanager
def failsafe(job: str, item: str) -> Iterator[None]:
    """Log (one line, with traceback) and swallow an error about one item of a round."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s: %s failed; going on with the next", job, item)


class Throttle:
    """A token bucket: `await throttle.consume(n)` keeps the long-run rate at most `rate` bytes/s.

    `rate` 0 or None means unlimited. `burst` bytes may go at once after a quiet spell (default:
    a tenth of a second's worth, at least 1 MiB).
    """

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = float(rate) if rate else 0.0
        self.burst = burst if burst is not None else max(self.rate / 10, 1024 * 1024)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    @property
    def limited(self) -> bool:
        return self.rate > 0

    async def consume(self, nbytes: int) -> None:
        if self.rate <= 0 or nbytes <= 0:
            return
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
