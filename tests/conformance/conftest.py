"""Fixtures of the outside suites: a mounted cluster per module, as tests/fuse has."""

from __future__ import annotations

from tests.fuse.conftest import mnt, mounted_cluster

__all__ = ["mnt", "mounted_cluster"]
