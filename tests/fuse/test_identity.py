"""The mount acts for each calling process: a 0600 file of uid 1000 stays unreadable to uid 1001."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dfs.launcher import Mount
from tests.harness import Cluster, http_json

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")


def as_user(uid: int, code: str, groups: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """Run Python `code` as an unprivileged process: uid and gid `uid`, supplementary `groups`."""
    group_args = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid), *group_args, sys.executable, "-c",
                           code], capture_output=True, text=True, timeout=60, check=False)


def outcome(action: str) -> str:
    """Code printing 'ok' or the errno name of `action` (a Python expression)."""
    return (f"import errno\ntry:\n    {action}\n    print('ok')\n"
            f"except OSError as e:\n    print(errno.errorcode[e.errno])")


def test_private_file_stays_private(mounted_cluster: tuple[Cluster, Mount], mnt: Path) -> None:
    cluster, mount = mounted_cluster
    os.chmod(mnt, 0o777)
    secret = mnt / "secret"
    made = as_user(1000, f"p = open({str(secret)!r}, 'w'); p.write('for 1000 only'); p.close()\n"
                         f"import os; os.chmod({str(secret)!r}, 0o600)")
    assert made.returncode == 0, made.stderr
    assert os.stat(secret).st_uid == 1000 and os.stat(secret).st_mode & 0o777 == 0o600
    status, reply = http_json("POST", cluster.master_url + "/api/resolve", {"path": f"/{mnt.name}/secret"})
    assert status == 200 and reply["attr"]["uid"] == 1000  # the master recorded the caller, not the mount

    read = f"open({str(secret)!r}).read()"
    assert as_user(1001, outcome(read)).stdout.strip() == "EACCES"
    assert as_user(1001, outcome(f"open({str(secret)!r}, 'a')")).stdout.strip() == "EACCES"
    assert as_user(1000, f"print(open({str(secret)!r}).read())").stdout.strip() == "for 1000 only"
    assert (secret.read_text()) == "for 1000 only"  # root still reads it

    shared = mnt / "shared"
    shared.write_text("staff")
    os.chown(shared, 0, 5000)
    os.chmod(shared, 0o640)
    assert as_user(1001, outcome(f"open({str(shared)!r}).read()"), groups=(5000,)).stdout.strip() == "ok"
    assert as_user(1001, outcome(f"open({str(shared)!r}).read()")).stdout.strip() == "EACCES"
    assert "calls carry each caller's uid" in mount.log()
