"""The `dfs` file commands as a user runs them: output, messages and exit codes like coreutils."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Cluster

MiB = 1024 * 1024


def dfs(cluster: Cluster, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFS_MASTER": cluster.master_url}
    return subprocess.run([sys.executable, "-m", "dfs", *args], input=stdin, capture_output=True, env=env,
                          timeout=60, check=False)


def test_put_get_cat_roundtrip(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2 * MiB + 17))
    assert dfs(cluster, "mkdir", "-p", "/cli/in").returncode == 0
    done = dfs(cluster, "put", "--goal", "2", str(src), "/cli/in/")  # into a folder: keeps the name
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out.bin"
    assert dfs(cluster, "get", "/cli/in/src.bin", str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()
    cat = dfs(cluster, "cat", "/cli/in/src.bin")
    assert cat.returncode == 0 and cat.stdout == src.read_bytes()
    stat = dfs(cluster, "stat", "/cli/in/src.bin")
    assert f"Size: {2 * MiB + 17}" in stat.stdout.decode() and "Goal: 2" in stat.stdout.decode()


def test_put_from_stdin_and_get_to_stdout(cluster: Cluster) -> None:
    assert dfs(cluster, "put", "-", "/stdin.txt", stdin=b"hello\n").returncode == 0
    got = dfs(cluster, "get", "/stdin.txt", "-")
    assert got.stdout == b"hello\n"


def test_ls_long_and_recursive(cluster: Cluster) -> None:
    assert dfs(cluster, "mkdir", "-p", "/lsdir/sub").returncode == 0
    assert dfs(cluster, "put", "-", "/lsdir/sub/f", stdin=b"12345").returncode == 0
    plain = dfs(cluster, "ls", "/lsdir")
    assert plain.stdout.decode().split() == ["sub"]
    long = dfs(cluster, "ls", "-l", "-R", "/lsdir").stdout.decode()
    assert "/lsdir/sub:" in long
    line = next(x for x in long.splitlines() if x.endswith(" f"))
    assert line.startswith("-rw") and " 5 " in line


def test_mv_and_rm(cluster: Cluster) -> None:
    dfs(cluster, "mkdir", "/mvdir")
    dfs(cluster, "put", "-", "/mvfile", stdin=b"x")
    assert dfs(cluster, "mv", "/mvfile", "/mvdir").returncode == 0  # into the folder
    assert dfs(cluster, "cat", "/mvdir/mvfile").stdout == b"x"
    refused = dfs(cluster, "rm", "/mvdir")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "dfs: cannot remove '/mvdir': Is a directory"
    assert dfs(cluster, "rm", "-r", "/mvdir").returncode == 0
    assert dfs(cluster, "ls", "/mvdir").returncode != 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rm", "/x-missing"), "dfs: cannot remove '/x-missing': No such file or directory"),
        (("mkdir", "/no/such/parent"), "dfs: cannot create directory '/no/such/parent': No such file or directory"),
        (("cat", "/x-missing"), "dfs: /x-missing: No such file or directory"),
        (("ls", "/x-missing"), "dfs: cannot access '/x-missing': No such file or directory"),
        (("stat", "/x-missing"), "dfs: cannot stat '/x-missing': No such file or directory"),
    ],
)
def test_errors_like_coreutils(cluster: Cluster, args: tuple[str, ...], message: str) -> None:
    done = dfs(cluster, *args)
    assert done.returncode in (1, 2)
    assert done.stderr.decode().strip() == message
    assert b"Traceback" not in done.stderr


def test_rm_force_ignores_missing(cluster: Cluster) -> None:
    assert dfs(cluster, "rm", "-f", "/never-there").returncode == 0


def test_unreachable_master_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DFS_MASTER": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "dfs", "ls", "/"], capture_output=True, env=env, timeout=60,
                          check=False)
    assert done.returncode == 1
    assert done.stderr.decode().startswith("dfs: Input/output error (master at http://127.0.0.1:9 unreachable")
    assert b"Traceback" not in done.stderr


def test_service_flags_documented() -> None:
    for command, flags in [("master", ["--data", "--listen", "--db", "--chunk-size", "--goal"]),
                           ("chunkserver", ["--master", "--data", "--listen", "--capacity"]),
                           ("gateway", ["--master", "--listen"])]:
        text = subprocess.run([sys.executable, "-m", "dfs", command, "--help"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
        for flag in flags:
            assert flag in text, (command, flag)
        assert "env var: DFS_" in text
