"""pjdfstest: POSIX semantics of the namespace and permissions (chmod, chown, link, mkdir, open,
rename, rmdir, symlink, truncate, unlink, utimensat ...), run as root in a folder of the mount."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conformance.suites import suite
from tests.fuse.conftest import needs_fuse

PJDFSTEST = suite("pjdfstest")
EXPECTED = Path(__file__).with_name("pjdfstest-expected-failures.txt")
pytestmark = [needs_fuse, pytest.mark.skipif(not PJDFSTEST.ready(), reason=f"pjdfstest is not prepared in "
                                             f"{PJDFSTEST.folder} (python -m tests.conformance.suites prepare "
                                             "pjdfstest SOURCE)")]


def expected_failures() -> set[str]:
    lines = (line.split()[0] for line in EXPECTED.read_text().splitlines() if line.strip() and line[0] != "#")
    return set(lines)


@pytest.mark.timeout(1500)
def test_pjdfstest_passes(mnt: Path) -> None:
    done = subprocess.run(["prove", "-r", str(PJDFSTEST.folder / "tests")], cwd=mnt, capture_output=True,
                          text=True, timeout=1400, check=False)
    output = done.stdout + done.stderr
    # the summary also lists files that passed with TODO tests passing: those are no failures
    failed = {Path(name).relative_to(PJDFSTEST.folder).as_posix()
              for name, wstat, count in re.findall(r"^(\S+\.t)\s+\(Wstat: (\d+) Tests: \d+ Failed: (\d+)\)",
                                                   output, re.M) if wstat != "0" or count != "0"}
    counts = re.search(r"Files=(\d+), Tests=(\d+)", output)
    assert counts is not None, output[-3000:]
    new = failed - expected_failures()
    assert not new, f"new failures: {sorted(new)}\n{output[-3000:]}"
    assert done.returncode == 0 or failed, output[-3000:]
    print(counts.group(0), "failed:", sorted(failed) or "none")
