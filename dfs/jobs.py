"""A base for background jobs (scrubber, re-replication, lease recovery), as Swift's `Daemon`.

A job implements `run_once()`, one round of its work; `run_forever()` repeats it every `interval`
seconds (sooner when `wake()` is called), logs a failed round instead of ending, and is cancelled
with the task that runs it. A job whose rounds grow with the data (a scan of every chunk) sets
`max_share`: after a round that cost D seconds the next waits at least D * (1/max_share - 1), wakes
included, so the job never takes more than that share of the process however large the cluster (a
round that also waits, on a throttle say, sets `cost` to what its work took).
`failsafe()` guards one item of a round, so that one bad chunk never stops a scan. `Throttle` bounds
a rate (bytes per second) across the awaits of a job.
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
    #: The largest share of the process's time the rounds may take (None: no bound).
    max_share: float | None = None

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: Seconds of work of the round under way, if it knows better than its duration.
        self.cost: float | None = None
        self.rounds = 0
        self.failures = 0
        self._wake = asyncio.Event()

    async def run_once(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def wake(self) -> None:
        """Start the next round now instead of at the end of the interval."""
        self._wake.set()

    def rest_after(self, seconds: float) -> float:
        """The pause a round of `seconds` imposes before the next, whatever wakes the job."""
        return seconds * (1 / self.max_share - 1) if self.max_share else 0.0

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            self.cost = None
            started = time.monotonic()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed round must not end the job
                self.failures += 1
                log.exception("%s: round failed", self.name)
            self.rounds += 1
            rest = self.rest_after(time.monotonic() - started if self.cost is None else self.cost)
            if rest:
                await asyncio.sleep(rest)  # a wake meanwhile starts the round right after
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.interval - rest)):
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
