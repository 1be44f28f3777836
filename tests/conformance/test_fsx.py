"""fsx (xfstests' ltp/fsx): random reads, writes, truncates, mapped I/O and fallocate on one file,
each checked against a copy in memory. Files span several 1 MiB chunks and 8 MiB write buffers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conformance.suites import suite
from tests.fuse.conftest import needs_fuse

XFSTESTS = suite("xfstests")
pytestmark = [needs_fuse, pytest.mark.skipif(not XFSTESTS.ready(), reason=f"xfstests is not prepared in "
                                             f"{XFSTESTS.folder} (python -m tests.conformance.suites prepare "
                                             "xfstests SOURCE)")]

#: operations of the run with mapped reads and writes (the one that found the size going back);
#: the run without them does half as many. ~3-5 ms an operation here: 100,000 take ~6 minutes.
OPERATIONS = int(os.environ.get("DFS_FSX_OPS", "100000"))
FILE_LENGTH = 4 * 1024 * 1024  # four 1 MiB chunks
# fsx tries fallocate's modes, copy_file_range, clone and dedupe at its start and leaves out what
# the mount refuses (EOPNOTSUPP), so no flag switches them off here


def fsx(path: Path, *extra: str, operations: int, seed: int) -> subprocess.CompletedProcess[str]:
    argv = [str(XFSTESTS.folder / "ltp" / "fsx"), "-q", "-l", str(FILE_LENGTH), "-N", str(operations),
            "-S", str(seed), "-P", str(path.parent), *extra, str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)


def tail(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr)[-4000:]


@pytest.mark.timeout(1900)
def test_fsx_without_mapped_io(mnt: Path) -> None:
    done = fsx(mnt / "plain", "-R", "-W", operations=OPERATIONS // 2, seed=1)
    assert done.returncode == 0, tail(done)


@pytest.mark.timeout(1900)
def test_fsx_with_mapped_io(mnt: Path) -> None:
    done = fsx(mnt / "mapped", operations=OPERATIONS, seed=2)
    assert done.returncode == 0, tail(done)
