"""The outside suites the mount is judged by, each pinned to one commit, and where their built copies live.

Their code is never part of this repository. `prepare` clones a suite's pinned commit from a source
(a URL or a local clone) into DFS_SUITES (default /var/cache/dfs-suites) and builds it there:

    python -m tests.conformance.suites prepare xfstests https://github.com/kdave/xfstests
    python -m tests.conformance.suites prepare pjdfstest https://github.com/pjd/pjdfstest
    python -m tests.conformance.suites where xfstests

The tests in this folder skip, saying so, when a suite has not been prepared on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Suite:
    name: str
    repository: str  # where upstream keeps it
    commit: str
    build: tuple[str, ...]  # shell commands, run in the clone
    debian_packages: tuple[str, ...] = ()  # what the build and the run need
    built: str = ""  # a file that exists once the build is done, relative to the clone

    @property
    def folder(self) -> Path:
        return Path(os.environ.get("DFS_SUITES", "/var/cache/dfs-suites")) / f"{self.name}-{self.commit[:8]}"

    def ready(self) -> bool:
        return (self.folder / self.built).exists()


SUITES = {suite.name: suite for suite in (
    Suite("xfstests", "https://github.com/kdave/xfstests", "63a29724a85f1999e49bf0a9bf0d22643b6116e5",
          ("make -j2",),
          ("xfslibs-dev", "uuid-dev", "libtool-bin", "e2fsprogs", "automake", "gcc", "libuuid1", "quota", "attr",
           "make", "libacl1-dev", "libaio-dev", "xfsprogs", "libgdbm-dev", "gawk", "fio", "dbench", "uuid-runtime",
           "python3", "sqlite3", "libcap-dev", "liburing-dev"),
          built="ltp/fsx"),
    Suite("pjdfstest", "https://github.com/pjd/pjdfstest", "85a8aea9e685999ef0540392fd80535f873d7ff7",
          ("autoreconf -ifs", "./configure", "make pjdfstest"),
          ("autoconf", "automake", "gcc", "make", "libtool", "perl"),
          built="pjdfstest"),
)}


def suite(name: str) -> Suite:
    return SUITES[name]


def prepare(name: str, source: str) -> Path:
    """Clone `source` at the pinned commit into the suite's folder and build it there."""
    s = SUITES[name]
    if s.ready():
        return s.folder
    if s.debian_packages and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", *s.debian_packages], check=True)
    s.folder.parent.mkdir(parents=True, exist_ok=True)
    if not (s.folder / ".git").exists():
        subprocess.run(["git", "clone", "-q", source, str(s.folder)], check=True)
    subprocess.run(["git", "-C", str(s.folder), "checkout", "-q", s.commit], check=True)
    for command in s.build:
        subprocess.run(command, shell=True, cwd=s.folder, check=True)
    return s.folder


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "prepare" and argv[1] in SUITES:
        print(prepare(argv[1], argv[2]))
        return 0
    if len(argv) == 2 and argv[0] == "where" and argv[1] in SUITES:
        s = SUITES[argv[1]]
        print(s.folder, "(built)" if s.ready() else "(not prepared)")
        return 0 if s.ready() else 1
    print(f"usage: python -m tests.conformance.suites prepare|where {'|'.join(SUITES)} [SOURCE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
