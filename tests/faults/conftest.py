"""Every fault test gets a factory of clusters that are always stopped, whatever the test did."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import fast_cluster
from tests.harness import Cluster


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        cluster = fast_cluster(tmp_path / f"cluster{len(made)}", **options)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for service in cluster.services():
                service.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            failed = getattr(request.node, "rep_call", None)
            if failed is not None and failed.failed:
                print(cluster.logs())
            cluster.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
