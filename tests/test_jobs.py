"""The background-job base: rounds, wake-ups, a failing round, and the throttle's rate."""

from __future__ import annotations

import asyncio
import time

from dfs.jobs import Job, Throttle, failsafe


class Counter(Job):
    name = "counter"

    def __init__(self) -> None:
        super().__init__(interval=60.0)
        self.calls = 0

    async def run_once(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("one bad round")


async def test_job_rounds_wake_and_survive_a_failure() -> None:
    job = Counter()
    task = asyncio.create_task(job.run_forever())
    try:
        await asyncio.sleep(0.05)
        assert job.calls == 1  # then waits for the interval
        job.wake()
        await asyncio.sleep(0.05)
        assert job.calls == 2 and job.failures == 1
        job.wake()
        await asyncio.sleep(0.05)
        assert job.calls == 3  # still running after the failed round
    finally:
        task.cancel()


class SlowScan(Job):
    """Rounds of 50 ms that may take a fifth of the time: each is followed by 200 ms of rest."""

    name = "slow scan"
    max_share = 0.2

    def __init__(self) -> None:
        super().__init__(interval=0.0)
        self.starts: list[float] = []

    async def run_once(self) -> None:
        self.starts.append(time.monotonic())
        await asyncio.sleep(0.05)


async def test_a_job_with_max_share_rests_in_proportion_to_its_rounds_even_when_woken() -> None:
    assert SlowScan().rest_after(0.05) == 0.05 * 4 and Counter().rest_after(10.0) == 0.0
    job = SlowScan()
    task = asyncio.create_task(job.run_forever())
    try:
        for _ in range(40):  # wakes all along: they must not cut the rests short
            job.wake()
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    gaps = [b - a for a, b in zip(job.starts, job.starts[1:], strict=False)]
    assert 2 <= len(job.starts) <= 4, job.starts  # 0.8 s at one round per 0.25 s
    assert all(gap >= 0.24 for gap in gaps), gaps


class ThrottledScan(SlowScan):
    """Rounds of 100 ms of which 10 ms are work (the rest waits, on a throttle say)."""

    async def run_once(self) -> None:
        self.starts.append(time.monotonic())
        self.cost = 0.01
        await asyncio.sleep(0.1)


async def test_a_job_rests_in_proportion_to_the_cost_it_reports_not_its_waits() -> None:
    job = ThrottledScan()
    task = asyncio.create_task(job.run_forever())
    try:
        for _ in range(30):
            job.wake()
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    gaps = [b - a for a, b in zip(job.starts, job.starts[1:], strict=False)]
    assert len(job.starts) >= 3 and all(gap < 0.3 for gap in gaps), gaps  # 0.14 s, not 0.5 s


def test_failsafe_swallows_one_item() -> None:
    done = []
    for item in range(3):
        with failsafe("test", f"item {item}"):
            if item == 1:
                raise ValueError("bad item")
            done.append(item)
    assert done == [0, 2]


async def test_throttle_rate() -> None:
    throttle = Throttle(10 * 1024 * 1024, burst=1024 * 1024)  # 10 MiB/s
    start = time.monotonic()
    for _ in range(6):
        await throttle.consume(1024 * 1024)
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed <= 0.8  # 6 MiB, the first one from the burst
    unlimited = Throttle(0)
    start = time.monotonic()
    await unlimited.consume(10**12)
    assert time.monotonic() - start < 0.01
