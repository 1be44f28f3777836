"""Fixtures of the outside suites: a mounted cluster per module, as tests/fuse has."""

from __future__ import annotations

import pytest

from tests.fuse.conftest import mnt, mounted_cluster, needs_fuse

__all__ = ["mnt", "mounted_cluster"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/conformance/" in str(item.fspath):
            item.add_marker(needs_fuse)
